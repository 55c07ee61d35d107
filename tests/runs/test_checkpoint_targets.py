"""A checkpoint rebuilds its model from the dotted paths (`_target_`) it stores: the files
already written load only while every class stays at its path. The paths are spelt out here as
checkpoints hold them, so moving a class fails this test instead of users' checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SMALL_OPTIONS

from attn_lightning.attention.registry import variant_config, variant_names, variant_options
from attn_lightning.data.bpe_tokenizer import BPETokenizer
from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.data.mqar_tokenizer import IntTokenizer
from attn_lightning.runs.checkpoint import load_checkpoint
from attn_lightning.training.lit_module import LitGPT

MODEL = "attn_lightning.model.gpt.GPT"
ATTENTION = {  # conf/attention/<option>.yaml -> the class its checkpoints name
    "alibi": "attn_lightning.attention.alibi.ALiBiAttention",
    "based": "attn_lightning.attention.based.BasedAttention",
    "deltanet": "attn_lightning.attention.deltanet.DeltaNet",
    "fox": "attn_lightning.attention.fox.ForgettingAttention",
    "gated_deltanet": "attn_lightning.attention.gated_deltanet.GatedDeltaNet",
    "gated_deltaproduct": "attn_lightning.attention.gated_deltaproduct.GatedDeltaProduct",
    "gla": "attn_lightning.attention.gla.GatedLinearAttention",
    "gqa": "attn_lightning.attention.vanilla.VanillaAttention",
    "kda": "attn_lightning.attention.kda.KimiDeltaAttention",
    "linear": "attn_lightning.attention.linear.LinearAttention",
    "linformer": "attn_lightning.attention.linformer.LinformerAttention",
    "mamba2": "attn_lightning.attention.mamba2.Mamba2",
    "mqa": "attn_lightning.attention.vanilla.VanillaAttention",
    "nystrom": "attn_lightning.attention.nystrom.NystromAttention",
    "performer": "attn_lightning.attention.performer.PerformerAttention",
    "retention": "attn_lightning.attention.retention.Retention",
    "rotary": "attn_lightning.attention.vanilla.VanillaAttention",
    "rwkv7": "attn_lightning.attention.rwkv7.RWKV7Attention",
    "sliding_window": "attn_lightning.attention.sliding_window.SlidingWindowAttention",
    "sparse": "attn_lightning.attention.sparse.SparseAttention",
    "vanilla": "attn_lightning.attention.vanilla.VanillaAttention",
}
TOKENIZERS = {  # the tokenizer each data config stores -> its class's path
    "char": ("attn_lightning.data.char_tokenizer.CharTokenizer", CharTokenizer),
    "int": ("attn_lightning.data.mqar_tokenizer.IntTokenizer", IntTokenizer),
    "bpe": ("attn_lightning.data.bpe_tokenizer.BPETokenizer", BPETokenizer),
}


def tokenizer_state(kind: str) -> dict[str, Any]:
    if kind == "char":
        return CharTokenizer("\nabcdefg").state_dict()
    if kind == "int":
        return IntTokenizer(8).state_dict()
    return BPETokenizer.train(
        "the quick brown fox jumps over the lazy dog\n" * 20, 260
    ).state_dict()


def hparams(attention: dict[str, Any], tokenizer: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's `hyper_parameters`, every `_target_` as the file holds it."""
    model = {"_target_": MODEL, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 32}
    optim = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    schedule = {"min_lr": 1e-4, "warmup_steps": 0, "decay_steps": 10}
    return {
        "model": model,
        "attention": attention,
        "optim": optim,
        "tokenizer": tokenizer,
        "layer_attention": None,
        "schedule": schedule,
        "on_nonfinite_loss": "stop",
        "max_nonfinite_skips": 0,
    }


def saved_and_loaded(tmp_path: Path, stored: dict[str, Any]) -> tuple[LitGPT, LitGPT]:
    torch.manual_seed(0)
    module = LitGPT(**stored).eval()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": stored}, path)
    return module, load_checkpoint(path)


def test_every_variant_is_pinned_and_its_config_names_the_stored_class() -> None:
    assert sorted(ATTENTION) == variant_names()
    for name, target in ATTENTION.items():
        assert variant_config(name)["_target_"] == target, name


@pytest.mark.parametrize("name", sorted(ATTENTION))
def test_a_checkpoint_naming_each_attention_class_loads(tmp_path: Path, name: str) -> None:
    options = variant_options(name)
    small = {key: value for key, value in SMALL_OPTIONS.items() if key in options}
    attention = {"_target_": ATTENTION[name], "_partial_": True, **options, **small}
    module, loaded = saved_and_loaded(tmp_path, hparams(attention, tokenizer_state("char")))
    attn = type(loaded.model.blocks[0].attn)
    assert f"{attn.__module__}.{attn.__qualname__}" == ATTENTION[name]
    x = torch.randint(0, 8, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, module(x).logits)


@pytest.mark.parametrize("kind", sorted(TOKENIZERS))
def test_a_checkpoint_naming_each_tokenizer_class_loads(tmp_path: Path, kind: str) -> None:
    target, tokenizer_class = TOKENIZERS[kind]
    state = tokenizer_state(kind)
    assert state["_target_"] == target  # what a checkpoint written now stores
    attention = {"_target_": ATTENTION["vanilla"], "_partial_": True}
    _, loaded = saved_and_loaded(tmp_path, hparams(attention, state))
    assert type(loaded.tokenizer) is tokenizer_class
    assert loaded.tokenizer.state_dict() == state
