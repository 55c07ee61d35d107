"""`compile=true` runs training steps through torch.compile: the same losses as eager, and
checkpoints whose weights keep their names (no `_orig_mod.`), loadable by an eager model."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import quiet_trainer, tiny_text_datamodule
from hydra import compose, initialize_config_dir

from attn_lightning.config import CONFIG_DIR
from attn_lightning.runs.checkpoint import load_checkpoint
from attn_lightning.training.builders import build_module
from attn_lightning.training.lit_module import LitGPT

TINY_MODEL = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "data.block_size=16"]


def module_of(tmp_path: Path, compiled: bool, tokenizer: dict) -> LitGPT:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.output_dir={tmp_path}", f"compile={compiled}", *TINY_MODEL],
        )
    torch.manual_seed(0)
    return build_module(cfg, tokenizer)


def test_compile_leaves_the_weights_names_and_the_eager_gpt_in_place(tmp_path: Path):
    tokenizer = tiny_text_datamodule(tmp_path).tokenizer.state_dict()
    compiled, eager = (module_of(tmp_path, c, tokenizer) for c in (True, False))
    assert compiled.compiled_forward is not None and eager.compiled_forward is None
    assert type(compiled.model) is type(eager.model)  # not an OptimizedModule wrapper
    assert list(compiled.state_dict()) == list(eager.state_dict())
    assert not any("_orig_mod" in key for key in compiled.state_dict())


class Losses(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(float(outputs["loss"]))


@pytest.mark.slow  # compiling the tiny GPT's forward and backward
def test_compiled_training_gives_eager_losses_and_a_loadable_checkpoint(tmp_path: Path):
    dm = tiny_text_datamodule(tmp_path)
    losses = {}
    for compiled in (False, True):
        module = module_of(tmp_path, compiled, dm.tokenizer.state_dict())
        losses[compiled] = Losses()
        trainer = quiet_trainer(
            max_steps=4,
            limit_val_batches=0,
            enable_checkpointing=False,
            callbacks=[losses[compiled]],
        )
        trainer.fit(module, datamodule=dm)
    assert losses[True].seen == pytest.approx(losses[False].seen, rel=1e-4)
    assert losses[True].seen[-1] < losses[True].seen[0]  # it trained
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_checkpoint(path)  # an eager model: the names must match exactly
    for (name, saved), (_, trained) in zip(
        loaded.state_dict().items(), module.state_dict().items(), strict=True
    ):
        assert torch.equal(saved, trained), name
