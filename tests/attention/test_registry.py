"""Variants by name: every conf/attention YAML builds at the sizes asked for, overrides reach
the module, a new YAML file is a new option, and mistakes name the valid choices."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from attn_lightning.attention import registry as variants
from attn_lightning.attention.base import CausalSelfAttention
from attn_lightning.attention.registry import build_attention, variant_names, variant_options
from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import ConfigError


def test_every_yaml_builds_at_the_sizes_asked_for() -> None:
    for name in variant_names():
        attn = build_attention(name, n_embd=48, n_head=4, block_size=16)
        assert isinstance(attn, CausalSelfAttention)
        assert (attn.n_embd, attn.n_head, attn.block_size) == (48, 4, 16)
        assert attn(torch.randn(2, 16, 48))[0].shape == (2, 16, 48)


def test_overrides_reach_the_module_and_defaults_come_from_the_yaml() -> None:
    default = variant_options("sliding_window")["window"]
    assert build_attention("sliding_window", 32, 4, 32).window == default
    assert build_attention("sliding_window", 32, 4, 32, window=default + 3).window == default + 3
    assert build_attention("gqa", 32, 4, 32).n_kv_head == variant_options("gqa")["n_kv_head"]
    assert build_attention("rotary", 32, 4, 32).rope is not None
    assert build_attention("rotary", 32, 4, 32, rope=False).rope is None


def test_a_new_yaml_file_is_a_new_variant(tmp_path: Path, monkeypatch) -> None:
    shutil.copytree(Path(CONFIG_DIR, "attention"), tmp_path / "attention")
    (tmp_path / "attention" / "wide_window.yaml").write_text(
        "_target_: attn_lightning.attention.sliding_window.SlidingWindowAttention\n"
        "_partial_: true\nwindow: 5\n"
    )
    monkeypatch.setattr(variants, "CONFIG_DIR", str(tmp_path))
    assert "wide_window" in variant_names()
    assert build_attention("wide_window", 32, 4, 32).window == 5


def test_an_unknown_name_lists_the_variants() -> None:
    with pytest.raises(ConfigError, match="unknown attention variant 'nope': choose from") as info:
        build_attention("nope", 32, 4, 32)
    assert all(name in str(info.value) for name in variant_names())


def test_an_unknown_option_names_it_and_lists_the_options() -> None:
    with pytest.raises(ConfigError) as info:
        build_attention("linformer", 32, 4, 32, k=4)
    message = str(info.value)
    assert "linformer has no option k" in message
    assert all(key in message for key in variant_options("linformer"))
    assert "\n" not in message
