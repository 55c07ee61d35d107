"""Tests taking a `variant` argument run once per YAML in conf/attention/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from attention_variants import SHAPE, VARIANTS, attention_factory


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = any("variant" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "variant" in metafunc.fixturenames and not explicit:
        metafunc.parametrize("variant", VARIANTS)


@pytest.fixture
def make_attention() -> Callable[..., Any]:
    """make_attention(variant, **overrides) -> an attention module of the test shape, eval."""

    def make(variant: str, **overrides: Any):
        return attention_factory(variant, **overrides)(**SHAPE).eval()

    return make
