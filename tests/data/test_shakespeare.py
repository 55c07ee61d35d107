"""The TinyShakespeare DataModule: vocabulary, split, cache, and step-indexed batches."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from corpus import SHAKESPEARE_CHARS
from helpers import GENERATED_TEXT
from omegaconf import OmegaConf

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.data.download import DatasetUnavailableError, sha256_of
from attn_lightning.data.shakespeare import ShakespeareDataModule
from attn_lightning.data.windows import RandomWindowBatches
from attn_lightning.errors import ConfigError

SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
UNREACHABLE = "http://127.0.0.1:9/tinyshakespeare.txt"  # never contacted: a local file is given


def make_dm(data_dir: Path, **kwargs) -> ShakespeareDataModule:
    args = dict(
        data_dir=str(data_dir),
        path=str(data_dir / GENERATED_TEXT),  # the generated corpus (tests/conftest.py)
        url=UNREACHABLE,
        sha256=SHA256,
        block_size=64,
        batch_size=12,
        val_windows=50,
        eval_batch_size=16,
    )
    args.update(kwargs)
    return ShakespeareDataModule(**args)


def attach_trainer(dm: ShakespeareDataModule, rank: int = 0, world: int = 1, step: int = 0):
    dm.trainer = SimpleNamespace(
        max_steps=100,
        accumulate_grad_batches=1,
        global_rank=rank,
        world_size=world,
        global_step=step,
    )
    return dm


def test_vocabulary_split_and_round_trip(data_dir: Path):
    dm = make_dm(data_dir)
    text = (data_dir / GENERATED_TEXT).read_text()
    assert dm.tokenizer.vocab_size == 65
    train, val = dm.splits
    assert len(train) + len(val) == len(text)
    assert len(train) == int(0.9 * len(text))
    assert dm.tokenizer.decode(val[:200]) == text[len(train) : len(train) + 200]


def test_the_real_corpus_has_the_pinned_digest_and_the_generated_stand_ins_characters(
    shakespeare_path: Path,
):
    """The config's sha256 pins the text (char-rnn's TinyShakespeare), and the stand-in
    corpus of the other tests has exactly its characters (so the same vocabulary size)."""
    pinned = OmegaConf.load(Path(CONFIG_DIR) / "data" / "shakespeare.yaml").sha256
    assert sha256_of(shakespeare_path) == pinned == SHA256
    chars = CharTokenizer.from_text(shakespeare_path.read_text(encoding="utf-8")).chars
    assert "".join(chars) == SHAKESPEARE_CHARS


def test_encoded_cache_is_written_and_reused(data_dir: Path, monkeypatch):
    make_dm(data_dir).prepare_data()
    caches = list((data_dir / "cache").glob("*.char.pt"))
    assert len(caches) == 1 and not list((data_dir / "cache").glob("*.part"))
    # A second start must not read and encode the text again.
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("text re-encoded"))
    assert make_dm(data_dir).tokenizer.vocab_size == 65


def test_training_batches_are_a_pure_function_of_seed_step_and_rank(data_dir: Path):
    train = make_dm(data_dir).splits[0]

    def batch(seed: int, step: int, rank: int) -> torch.Tensor:
        return RandomWindowBatches(train, 64, 12, num_batches=100, seed=seed, rank=rank)[step][0]

    assert torch.equal(batch(1, 5, 0), batch(1, 5, 0))
    assert not torch.equal(batch(1, 5, 0), batch(1, 6, 0))
    assert not torch.equal(batch(1, 5, 0), batch(1, 5, 1))
    assert not torch.equal(batch(1, 5, 0), batch(2, 5, 0))
    # A run resumed at step 40 continues the exact sequence of an uninterrupted one.
    resumed = RandomWindowBatches(train, 64, 12, num_batches=100, seed=1, first_batch=40)
    assert torch.equal(resumed[0][0], batch(1, 40, 0))
    assert torch.equal(resumed[59][0], batch(1, 99, 0))


def test_training_targets_are_inputs_shifted_by_one(data_dir: Path):
    dm = attach_trainer(make_dm(data_dir))
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (12, 64)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_validation_windows_are_fixed_and_ddp_ranks_share_them_out(data_dir: Path):
    def val_inputs(dm: ShakespeareDataModule) -> torch.Tensor:
        return torch.cat([x for x, _ in dm.val_dataloader()])

    first = val_inputs(attach_trainer(make_dm(data_dir)))
    assert first.shape == (50, 64)
    assert torch.equal(first, val_inputs(attach_trainer(make_dm(data_dir, seed=99), step=50)))
    rank0 = val_inputs(attach_trainer(make_dm(data_dir), rank=0, world=2))
    rank1 = val_inputs(attach_trainer(make_dm(data_dir), rank=1, world=2))
    assert len(rank0) + len(rank1) == 50
    assert torch.equal(torch.cat([rank0, rank1]).sort(0).values, first.sort(0).values)


def test_test_split_covers_every_disjoint_window(data_dir: Path):
    dm = attach_trainer(make_dm(data_dir))
    n = sum(len(x) for x, _ in dm.test_dataloader())
    assert n == (len(dm.splits[1]) - 65) // 64 + 1


def test_missing_local_file_says_how_to_fix(tmp_path: Path):
    dm = make_dm(tmp_path, path=str(tmp_path / "nope.txt"))
    with pytest.raises(DatasetUnavailableError, match=r"data\.path"):
        _ = dm.tokenizer


def test_unknown_characters_are_refused():
    with pytest.raises(ValueError, match="not in this tokenizer"):
        CharTokenizer("abc").encode("abd")
    assert CharTokenizer("abc").decode(CharTokenizer("abc").encode("cab")) == "cab"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"  \n\n", "is empty"),
        (bytes(range(128, 256)) * 20, "is not UTF-8 text"),
        (b"text\x00\x01\x02 more text", "holds NUL bytes"),
    ],
    ids=["empty", "blank", "binary", "nul"],
)
def test_a_file_that_is_not_a_corpus_is_refused_naming_it(tmp_path: Path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"^data\.path={path} {message}"):
        _ = make_dm(tmp_path, path=str(path)).tokenizer
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_corpus_too_short_for_the_block_is_refused_naming_the_key(tmp_path: Path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello world\n" * 10)
    dm = attach_trainer(make_dm(tmp_path, path=str(path)))
    with pytest.raises(ConfigError, match=r"too few for block_size 64: lower data\.block_size"):
        dm.val_dataloader()
