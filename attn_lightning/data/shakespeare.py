"""TinyShakespeare: download (or a local file), tokenize once (characters or byte-level BPE),
serve windows."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from attn_lightning.atomic import atomic_write
from attn_lightning.data.bpe_tokenizer import BPETokenizer
from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.data.download import DatasetUnavailableError, fetch_verified, sha256_of
from attn_lightning.data.interface import LanguageModelData
from attn_lightning.data.step_batches import eval_loader, step_loader, step_position
from attn_lightning.data.windows import FixedWindows, RandomWindowBatches
from attn_lightning.errors import ConfigError

log = logging.getLogger(__name__)

FILE_NAME = "tinyshakespeare.txt"
TOKENIZERS = ("char", "bpe")


class ShakespeareDataModule(LanguageModelData):
    """TinyShakespeare, split 90/10 contiguously (in characters) as nanoGPT does.

    `tokenizer` is "char" (one token per character) or "bpe": a byte-level BPE of
    `bpe_vocab_size` tokens trained on the training split only, cached in `data_dir/cache`; each
    split is then encoded on its own, so both tokenizers see exactly the same text per split.

    The text comes from `path` when given, else from `data_dir/tinyshakespeare.txt`, downloaded
    from `url` and checked against `sha256` when missing. Validation uses `val_windows` fixed
    windows of the held-out split; test uses all its non-overlapping windows.
    """

    def __init__(
        self,
        data_dir: str,
        url: str,
        sha256: str,
        block_size: int,
        batch_size: int,
        path: str | None = None,
        val_fraction: float = 0.1,
        val_windows: int | None = 512,
        eval_batch_size: int = 64,
        seed: int = 1337,
        tokenizer: str = "char",
        bpe_vocab_size: int = 1024,
    ) -> None:
        super().__init__()
        sizes = {"block_size": block_size, "batch_size": batch_size}
        for key, value in (sizes | {"eval_batch_size": eval_batch_size}).items():
            if value <= 0:
                raise ConfigError(f"data.{key} must be positive, got {value}")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        if tokenizer not in TOKENIZERS:
            raise ConfigError(
                f"data.tokenizer={tokenizer!r} is unknown; choose one of {TOKENIZERS}"
            )
        self.data_dir = Path(data_dir).expanduser()
        self.url = url
        self.sha256 = sha256
        self.path = Path(path).expanduser() if path else None
        self.block_size = block_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.val_windows = val_windows
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.tokenizer_name = tokenizer
        self.bpe_vocab_size = bpe_vocab_size

    def text_file(self) -> Path:
        """The corpus on disk: the user's file, or the verified download in data_dir."""
        if self.path is not None:
            if not self.path.is_file():
                raise DatasetUnavailableError(
                    f"data.path={self.path} is not a file: point data.path at a copy of "
                    f"{FILE_NAME}, or drop it to download into {self.data_dir}"
                )
            return self.path
        return fetch_verified(self.url, self.data_dir / FILE_NAME, self.sha256)

    def prepare_data(self) -> None:
        # download and encode once, on rank 0, before the ranks read it
        _ = self._encoded if self.tokenizer_name == "char" else self._bpe_encoded

    @cached_property
    def _encoded(self) -> tuple[CharTokenizer, Tensor]:
        text_file = self.text_file()
        cache = self.data_dir / "cache" / f"{text_file.stem}-{sha256_of(text_file)[:16]}.char.pt"
        if cache.is_file():
            state = torch.load(cache, weights_only=True)
            return CharTokenizer(state["chars"]), state["tokens"].long()
        text = read_corpus(text_file)
        tokenizer = CharTokenizer.from_text(text)
        tokens = tokenizer.encode(text)
        _save_atomic({"chars": tokenizer.chars, "tokens": tokens.to(torch.int16)}, cache)
        return tokenizer, tokens

    @cached_property
    def _bpe_encoded(self) -> tuple[BPETokenizer, Tensor, Tensor]:
        text_file = self.text_file()
        stem = f"{text_file.stem}-{sha256_of(text_file)[:16]}.val{self.val_fraction}"
        stem += f".bpe{self.bpe_vocab_size}"
        cache = self.data_dir / "cache"
        text = None
        if not (cache / f"{stem}.json").is_file() or not (cache / f"{stem}.pt").is_file():
            text = read_corpus(text_file)
        n_train = None if text is None else int(len(text) * (1.0 - self.val_fraction))
        train_text = None if text is None else text[:n_train]
        tokenizer = BPETokenizer.load_or_train(
            train_text, self.bpe_vocab_size, cache / f"{stem}.json"
        )
        if text is None:
            state = torch.load(cache / f"{stem}.pt", weights_only=True)
            return tokenizer, state["train"].long(), state["val"].long()
        train, val = tokenizer.encode(train_text), tokenizer.encode(text[n_train:])
        _save_atomic(
            {"train": train.to(torch.int32), "val": val.to(torch.int32)}, cache / f"{stem}.pt"
        )
        return tokenizer, train, val

    @property
    def tokenizer(self) -> CharTokenizer | BPETokenizer:
        return self._encoded[0] if self.tokenizer_name == "char" else self._bpe_encoded[0]

    @property
    def splits(self) -> tuple[Tensor, Tensor]:
        """(train, val) token streams."""
        if self.tokenizer_name == "bpe":
            return self._bpe_encoded[1:]
        tokens = self._encoded[1]
        n_train = int(len(tokens) * (1.0 - self.val_fraction))
        return tokens[:n_train], tokens[n_train:]

    def train_dataloader(self) -> DataLoader:
        batches = RandomWindowBatches(
            self.splits[0],
            self.block_size,
            self.batch_size,
            seed=self.seed,
            **step_position(self.trainer),
        )
        return step_loader(batches)

    def _eval_loader(self, count: int | None) -> DataLoader:
        windows = FixedWindows(self.splits[1], self.block_size, count)
        return eval_loader(windows, self.eval_batch_size, self.trainer)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_windows)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(None)


def read_corpus(path: Path) -> str:
    """The text of a corpus file, refused in one line when it cannot be one: empty, or not
    UTF-8 text (a binary file, a wrong encoding)."""
    data = path.read_bytes()
    if not data.strip():
        raise ConfigError(f"data.path={path} is empty: point data.path at a text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"data.path={path} is not UTF-8 text (byte {error.start}: {error.reason}); give a "
            "UTF-8 text file"
        ) from None
    if "\x00" in text:
        raise ConfigError(f"data.path={path} holds NUL bytes: a binary file, not text")
    return text


def _save_atomic(obj: object, dest: Path) -> None:
    """torch.save to a temp file, then rename: a kill never leaves a half-written cache.
    A read-only data directory only costs the cache, so it is logged, not raised."""
    try:
        with atomic_write(dest) as f:
            torch.save(obj, f)
    except OSError as exc:
        log.warning("cannot cache encoded data in %s (%s); encoding on every start", dest, exc)
