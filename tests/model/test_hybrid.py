"""Hybrid stacks: layers named in `layer_attention` use their own variant, the rest use
`attention`; the command line builds one, its checkpoint rebuilds it, its record, report and
comparison row show the layout, and a bad layer index is refused with the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, run_cli, run_dirs, run_module, small_attention

from attn_lightning.attention.linear import LinearAttention
from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.comparison.columns import attention_name, is_vanilla
from attn_lightning.comparison.runs import Run
from attn_lightning.errors import ConfigError
from attn_lightning.model.gpt import GPT
from attn_lightning.runs.checkpoint import load_checkpoint
from attn_lightning.runs.record import RunRecord, layout_label

SHAPE = {"n_head": 4, "n_embd": 32, "block_size": 32}


def test_named_layers_use_their_own_variant() -> None:
    model = GPT(
        65, 4, **SHAPE, attention=small_attention("linear"), layer_attention={1: VanillaAttention}
    )
    classes = [type(block.attn) for block in model.blocks]
    assert classes == [LinearAttention, VanillaAttention, LinearAttention, LinearAttention]
    string_keys = GPT(
        65, 2, **SHAPE, attention=VanillaAttention, layer_attention={"0": LinearAttention}
    )
    assert [type(b.attn) for b in string_keys.blocks] == [LinearAttention, VanillaAttention]


def test_no_layer_attention_builds_the_plain_stack_exactly() -> None:
    idx = torch.randint(65, (2, 32))
    logits = []
    for extra in ({}, {"layer_attention": {}}, {"layer_attention": None}):
        torch.manual_seed(0)
        logits.append(GPT(65, 2, **SHAPE, attention=VanillaAttention, **extra).eval()(idx).logits)
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


@pytest.mark.parametrize("key", [4, "4", "-1", "x", "1.0"])
def test_a_layer_outside_the_model_is_refused_naming_the_key(key) -> None:
    with pytest.raises(ConfigError) as error:
        GPT(65, 4, **SHAPE, attention=VanillaAttention, layer_attention={key: LinearAttention})
    message = str(error.value)
    assert message.startswith(f"layer_attention.{key}: ") and "0..3" in message
    assert "\n" not in message


def test_layout_label() -> None:
    assert layout_label("gla", ["gla"] * 4) == "gla"
    assert layout_label("gla", ["gla", "vanilla", "gla", "gla"]) == "gla+vanilla@1"
    layout = ["vanilla", "linear", "based", "linear"]
    assert layout_label("vanilla", layout) == "vanilla+linear@1,3+based@2"
    assert layout_label("gla", []) == "gla"


def test_comparison_shows_the_layout_and_a_hybrid_is_no_vanilla_reference(tmp_path: Path) -> None:
    hybrid = RunRecord(attention_option="vanilla", attention_layout=["vanilla", "linear"])
    plain = RunRecord(attention_option="vanilla", attention_layout=["vanilla", "vanilla"])
    old = RunRecord(attention_option="gqa")  # a record from before layouts
    runs = [
        Run(n, tmp_path / n, record, []) for n, record in (("a", hybrid), ("b", plain), ("c", old))
    ]
    assert [attention_name(r) for r in runs] == ["vanilla+linear@1", "vanilla", "gqa"]
    assert [is_vanilla(r) for r in runs] == [False, True, False]


@pytest.fixture(scope="module")
def hybrid_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The issue's example at test size: a linear model whose layer 1 is softmax attention."""
    cwd = tmp_path_factory.mktemp("hybrid")
    args = [
        "attention=linear",
        "+attention@layer_attention.1=vanilla",
        "layer_attention.1.rope=true",
    ]
    run_cli(
        "attn_lightning", [*TINY, "model.n_layer=3", "trainer.max_steps=6", *args], cwd, data_dir
    )
    (run_dir,) = run_dirs(cwd / "outputs")
    return run_dir


@pytest.mark.slow  # a training run end to end (~30 s); run with -m slow
def test_the_command_line_builds_the_hybrid_and_its_checkpoint_rebuilds_it(hybrid_run: Path):
    module = load_checkpoint(hybrid_run / "checkpoints" / "last.ckpt")
    classes = [type(block.attn) for block in module.model.blocks]
    assert classes == [LinearAttention, VanillaAttention, LinearAttention]
    assert module.model.blocks[1].attn.rope is not None  # the layer's own override
    assert module.model.blocks[0].attn.rope is None
    state = torch.load(hybrid_run / "checkpoints" / "last.ckpt", weights_only=True)
    for name, tensor in module.state_dict().items():  # the same weights, not a fresh init
        torch.testing.assert_close(tensor, state["state_dict"][name].to(tensor.dtype))


def test_record_report_and_comparison_show_the_layout(hybrid_run: Path):
    record = json.loads((hybrid_run / "summary.json").read_text())
    assert record["attention_option"] == "linear"
    assert record["attention_layout"] == ["linear", "vanilla", "linear"]
    report = (hybrid_run / "report.md").read_text()
    assert "Run report: linear+vanilla@1" in report


def test_a_bad_layer_index_on_the_command_line_is_one_line(data_dir: Path, tmp_path: Path):
    args = [*TINY, "model.n_layer=2", "+attention@layer_attention.2=vanilla"]
    proc = run_module("attn_lightning", args, tmp_path, data_dir)
    assert proc.returncode != 0
    assert "layer_attention.2: no such layer in a model of model.n_layer=2" in proc.stderr
    assert "Traceback" not in proc.stderr
