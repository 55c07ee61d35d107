"""What several test modules share, in one place: the CLI run as a user runs it, tiny
Lightning pieces, and test-sized attention variants. Test modules import from here, never
from each other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor

from attn_lightning.attention.registry import AttentionFactory, attention_factory, variant_options
from attn_lightning.data.shakespeare import ShakespeareDataModule
from attn_lightning.data.token_tasks.datamodule import TokenTaskDataModule
from attn_lightning.training.lit_module import LitGPT

REPO_ROOT = Path(__file__).resolve().parents[1]

# A run of the CLI small enough for a test: 12 steps of a 1-layer model, two validations.
TINY = [
    "trainer=cpu",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "data.block_size=32",
    "data.batch_size=4",
    "data.val_windows=16",
    "data.eval_batch_size=16",
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "trainer.log_every_n_steps=3",
    "callbacks.text_sample.max_new_tokens=16",
]


GENERATED_TEXT = "generated_play.txt"  # the corpus a test data dir holds (tests/conftest.py)


def data_environment(data_dir: Path) -> dict[str, str]:
    """The variables that point the project at a test data dir: caches go there, and its
    generated corpus (when it holds one) is the text trained on, as `data.path` would say."""
    env = {"ATTN_LIGHTNING_DATA_DIR": str(data_dir)}
    if (data_dir / GENERATED_TEXT).is_file():
        env["ATTN_LIGHTNING_TEXT"] = str(data_dir / GENERATED_TEXT)
    return env


def use_data_dir(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    """data_environment for an in-process run."""
    for name, value in data_environment(data_dir).items():
        monkeypatch.setenv(name, value)


def cli_environment(data_dir: Path | None = None) -> dict[str, str]:
    """The environment of a subprocess run of the project: this checkout importable, the given
    data dir (else whatever the caller's environment says), outside any DDP job."""
    env = dict(os.environ)
    if data_dir is not None:
        env.pop("ATTN_LIGHTNING_TEXT", None)
        env.update(data_environment(data_dir))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for name in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        env.pop(name, None)
    return env


def run_module(
    module: str, args: list[str], cwd: Path, data_dir: Path | None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`python -m module args` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_environment(data_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(module: str, args: list[str], cwd: Path, data_dir: Path | None):
    """run_module, which must succeed."""
    proc = run_module(module, args, cwd, data_dir)
    assert proc.returncode == 0, (
        f"{module} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


# Runs entry points' `main()` once per (module, argument list) in a single interpreter, as the
# CLI would (sys.argv; SystemExit gives the exit code), and writes the outcomes as JSON.
_CASES_DRIVER = """
import contextlib, importlib, io, json, sys, traceback
cases, out_file = json.loads(sys.argv[1]), sys.argv[2]
results = []
for module, args in cases:
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        sys.argv = [module, *args]
        try:
            importlib.import_module(module).main()
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append({"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()})
with open(out_file, "w") as f:
    json.dump(results, f)
"""


def run_entry_points(
    cases: list[tuple[str, list[str]]], cwd: Path, data_dir: Path | None
) -> list[dict[str, Any]]:
    """Each (module, argument list) through `module.main()`, all in one fresh interpreter:
    what `python -m module args` prints and exits with, without paying the imports once
    per case. For inputs refused before any training (bad configs); a run that trains
    belongs in its own process (run_module)."""
    out_file = cwd / "entry_point_cases.json"
    proc = subprocess.run(
        [sys.executable, "-c", _CASES_DRIVER, json.dumps(cases), str(out_file)],
        cwd=cwd,
        env=cli_environment(data_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and out_file.is_file(), proc.stderr[-3000:]
    return json.loads(out_file.read_text())


def run_entry_point_cases(
    module: str, cases: list[list[str]], cwd: Path, data_dir: Path | None
) -> list[dict[str, Any]]:
    """run_entry_points, every case through the one `module`."""
    return run_entry_points([(module, args) for args in cases], cwd, data_dir)


def run_dirs(root: Path) -> list[Path]:
    """Dirs that hold a finished run (a TensorBoard dir), anywhere under root."""
    return sorted(p.parent for p in root.rglob("tensorboard") if p.is_dir())


def events(run_dir: Path, attempts: int = 1) -> EventAccumulator:
    """All TensorBoard events of a run, checking they come from one process (rank 0) per
    attempt (a run resumed in place has one per attempt)."""
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    writers = {f.name.split(".")[-2] for f in files}  # events.out.tfevents.<time>.<host>.<pid>.n
    assert len(writers) == attempts, f"expected events from {attempts} process(es), found {files}"
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


VANILLA = {"_target_": "attn_lightning.attention.vanilla.VanillaAttention", "_partial_": True}


def tiny_lit_gpt(
    tokenizer: dict[str, Any],
    n_layer: int = 1,
    n_head: int = 2,
    n_embd: int = 16,
    block_size: int = 32,
    **settings: Any,
) -> LitGPT:
    """A LitGPT with vanilla attention, AdamW without warm-up unless `settings` say otherwise
    (schedule keys go to the schedule, the rest to the optimizer)."""
    model = {
        "_target_": "attn_lightning.model.gpt.GPT",
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "block_size": block_size,
    }
    optim = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    optim |= {"betas": [0.9, 0.99], "weight_decay": 0.0}
    schedule = {"min_lr": 1e-4, "warmup_steps": 0, "decay_steps": 1}
    for key, value in settings.items():
        (schedule if key in schedule else optim)[key] = value
    return LitGPT(model, dict(VANILLA), optim, tokenizer, schedule=schedule)


TINY_TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(300))


def tiny_text_datamodule(directory: Path, block_size: int = 16) -> ShakespeareDataModule:
    """The text datamodule over a small generated corpus written to `directory` (no download),
    its data prepared: step-indexed batches of 4 windows, 8 validation windows."""
    path = directory / "corpus.txt"
    path.write_text(TINY_TEXT)
    dm = ShakespeareDataModule(
        data_dir=str(directory),
        url="http://127.0.0.1:9/never-contacted",
        sha256="",
        path=str(path),
        block_size=block_size,
        batch_size=4,
        val_windows=8,
        eval_batch_size=8,
    )
    dm.prepare_data()
    return dm


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU Trainer without logger, progress bar or model summary."""
    options = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**options, **kwargs})


# Attention modules of the test shape. Hyperparameters are shrunk so that chunk, segment and
# block boundaries (every 8 positions) fall inside the 32-token test sequences.
ATTENTION_SHAPE = {"n_embd": 32, "n_head": 4, "block_size": 32}
SMALL_OPTIONS = {
    "chunk_size": 8,
    "num_segments": 4,
    "num_landmarks": 4,
    "block": 8,
    "window": 8,
}


def small_attention(
    variant: str, sizes: Mapping[str, Any] = SMALL_OPTIONS, **overrides: Any
) -> AttentionFactory:
    """The variant's partial with test-sized hyperparameters (those of `sizes` it has) and
    `overrides`."""
    options = variant_options(variant)
    small = {key: value for key, value in sizes.items() if key in options}
    return attention_factory(variant, **{**small, **overrides})


def first_training_batch(dm: TokenTaskDataModule) -> tuple[Tensor, Tensor]:
    """The batch of training step 0 of a token-task datamodule, at rank 0, without a trainer."""
    return dm.training_batches(num_batches=1)[0]
