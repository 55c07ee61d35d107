"""Byte-level BPE on TinyShakespeare: exact round trip, cache, checkpoint-safe state, and bits
per character that agree between tokenizers' definitions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import GENERATED_TEXT, quiet_trainer, tiny_lit_gpt
from hydra.utils import instantiate

from attn_lightning.data.bpe_tokenizer import BPETokenizer
from attn_lightning.data.shakespeare import ShakespeareDataModule
from attn_lightning.training.lit_module import LitGPT

SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
VOCAB = 512


def make_dm(data_dir: Path, **kwargs) -> ShakespeareDataModule:
    args = dict(
        data_dir=str(data_dir),
        path=str(data_dir / GENERATED_TEXT),  # the generated corpus (tests/conftest.py)
        url="http://127.0.0.1:9/tinyshakespeare.txt",  # never contacted: a local file is given
        sha256=SHA256,
        block_size=32,
        batch_size=4,
        val_windows=24,
        eval_batch_size=8,
        tokenizer="bpe",
        bpe_vocab_size=VOCAB,
    )
    args.update(kwargs)
    return ShakespeareDataModule(**args)


@pytest.fixture(scope="module")
def bpe_dm(data_dir: Path) -> ShakespeareDataModule:
    dm = make_dm(data_dir)
    dm.prepare_data()
    return dm


def test_bpe_round_trips_the_whole_text_and_compresses_it(bpe_dm, data_dir: Path):
    text = (data_dir / GENERATED_TEXT).read_text(encoding="utf-8")
    tokenizer = bpe_dm.tokenizer
    assert tokenizer.vocab_size == VOCAB
    train, val = bpe_dm.splits  # each split encoded on its own: together, the whole text
    n_train = int(0.9 * len(text))
    assert tokenizer.decode(train) == text[:n_train]  # the split is in characters
    assert tokenizer.decode(val) == text[n_train:]
    assert len(train) + len(val) < 0.6 * len(text)  # merges learned, not bytes


def test_bpe_is_cached_atomically_and_reused(bpe_dm, data_dir: Path, monkeypatch):
    cache = data_dir / "cache"
    assert len(list(cache.glob(f"*.bpe{VOCAB}.json"))) == 1
    assert len(list(cache.glob(f"*.bpe{VOCAB}.pt"))) == 1
    assert not list(cache.glob("*.part"))
    read_text = Path.read_text

    def no_corpus(path: Path, *args, **kwargs) -> str:
        if path.name == "tinyshakespeare.txt":
            pytest.fail("the text was read and encoded again")
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_corpus)
    again = make_dm(data_dir)
    for a, b in zip(again.splits, bpe_dm.splits, strict=True):
        assert torch.equal(a, b)


def test_bpe_state_is_plain_data_that_rebuilds_the_tokenizer(bpe_dm, tmp_path: Path):
    state = bpe_dm.tokenizer.state_dict()
    torch.save({"hyper_parameters": {"tokenizer": state}}, tmp_path / "ckpt.pt")
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["hyper_parameters"]
    rebuilt = instantiate(loaded["tokenizer"])
    assert isinstance(rebuilt, BPETokenizer)
    text = "ROMEO:\nBut, soft! what light through yonder window breaks? ${x}"
    assert torch.equal(rebuilt.encode(text), bpe_dm.tokenizer.encode(text))
    assert rebuilt.decode(rebuilt.encode(text)) == text


def tiny_module(dm: ShakespeareDataModule) -> LitGPT:
    torch.manual_seed(0)
    return tiny_lit_gpt(dm.tokenizer.state_dict())


def validate(module: LitGPT, dm: ShakespeareDataModule, tmp_path: Path) -> dict[str, float]:
    trainer = quiet_trainer(default_root_dir=tmp_path)
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    return metrics


def test_char_model_bits_per_character_equal_its_loss_in_bits(data_dir: Path, tmp_path):
    dm = make_dm(data_dir, tokenizer="char")
    metrics = validate(tiny_module(dm), dm, tmp_path)
    assert metrics["val/bpc"] == pytest.approx(metrics["val/loss"] / math.log(2), rel=1e-5)


def test_bpe_bits_per_character_count_the_characters_of_the_targets(bpe_dm, tmp_path):
    module = tiny_module(bpe_dm)
    metrics = validate(module, bpe_dm, tmp_path)
    nats, chars, tokens = 0.0, 0, 0
    with torch.no_grad():
        for x, y in bpe_dm.val_dataloader():
            logits = module.model(x).logits
            nats += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            chars += sum(len(bpe_dm.tokenizer.decode(row)) for row in y)
            tokens += y.numel()
    assert chars > 1.5 * tokens  # BPE tokens span several characters
    assert metrics["val/loss"] == pytest.approx(nats / tokens, rel=1e-4)
    assert metrics["val/bpc"] == pytest.approx(nats / (math.log(2) * chars), rel=1e-4)
