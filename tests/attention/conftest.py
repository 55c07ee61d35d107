"""Tests taking a `variant` argument run once per YAML in conf/attention/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from helpers import ATTENTION_SHAPE, small_attention

from attn_lightning.attention.registry import variant_names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    explicit = any("variant" in m.args[0] for m in metafunc.definition.iter_markers("parametrize"))
    if "variant" in metafunc.fixturenames and not explicit:
        metafunc.parametrize("variant", variant_names())


@pytest.fixture
def make_attention() -> Callable[..., Any]:
    """make_attention(variant, **overrides) -> an attention module of the test shape, eval."""

    def make(variant: str, **overrides: Any):
        return small_attention(variant, **overrides)(**ATTENTION_SHAPE).eval()

    return make
