"""What several test modules share, in one place: the CLI run as a user runs it, tiny
Lightning pieces, and test-sized attention variants. Test modules import from here, never
from each other."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
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


# The delta-rule family's test sizes (batch, heads, key and value dims) and decay kinds: none
# (DeltaNet), one per head and token (Gated DeltaNet), one per key channel too (KDA).
DELTA_RULE_SIZES = (2, 3, 5, 4)
DECAYS = ("none", "scalar", "channel")


def delta_rule_inputs(
    T: int, decay: str, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """Unit q, k (B, H, T, DK), v (B, H, T, DV), β in (0, 1) (B, H, T) and log α: None
    ("none"), in (-1, 0) per token (B, H, T) ("scalar") or in (-2, 0) per key channel
    (B, H, T, DK) ("channel"); float64. q, k, v and β are the same whatever the decay."""
    B, H, DK, DV = DELTA_RULE_SIZES
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, H, T, DK, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, H, T, DK, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, T, DV, generator=g, dtype=torch.float64)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    log_alpha = {
        "none": lambda: None,
        "scalar": lambda: -torch.rand(B, H, T, generator=g, dtype=torch.float64),
        "channel": lambda: -2 * torch.rand(B, H, T, DK, generator=g, dtype=torch.float64),
    }[decay]()
    return q, k, v, beta, log_alpha


def delta_rule_recurrence(
    q: Tensor, k: Tensor, v: Tensor, beta: Tensor, log_alpha: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The delta rule step by step, S_t = (I - β_t k_t k_t^T) diag(α_t) S_{t-1} + β_t k_t v_t^T,
    o_t = S_t^T q_t, S (DK x DV) as in Kimi Linear, with α_t = 1 (DeltaNet, Schlag et al.
    2021), one α_t per token (Gated DeltaNet, Yang, Kautz & Hatamizadeh 2025; both papers
    write S transposed: S_t = α_t S_{t-1} (I - β_t k_t k_t^T) + β_t v_t k_t^T, o_t = S_t q_t)
    or one per key channel (KDA). q, k (B, H, T, DK), v (B, H, T, DV) -> the outputs
    (B, H, T, DV) and the final S (B, H, DK, DV)."""
    B, H, T, DK = q.shape
    S = q.new_zeros(B, H, DK, v.size(-1))
    eye = torch.eye(DK, dtype=q.dtype)
    outputs = []
    for t in range(T):
        k_t, v_t, b_t = k[:, :, t, :, None], v[:, :, t, :, None], beta[:, :, t, None, None]
        if log_alpha is not None:  # diag(α_t) S: α_t (B, H, 1 or DK, 1) scales S's rows
            S = log_alpha[:, :, t].exp().reshape(B, H, -1, 1) * S
        S = (eye - b_t * k_t @ k_t.mT) @ S + b_t * k_t @ v_t.mT
        outputs.append(S.mT @ q[:, :, t, :, None])
    return torch.cat(outputs, dim=-1).mT, S


class _TorchAs(types.ModuleType):
    """torch, with `torch.float` and `torch.float32` standing for another dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__("torch")
        self.float = self.float32 = dtype

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)


@contextlib.contextmanager
def fla_naive_in(op: str, dtype: torch.dtype) -> Iterator[types.ModuleType]:
    """fla's plain-PyTorch reference fla/ops/<op>/naive.py (loaded by path; the test skips
    without fla), computing in `dtype`: the references cast to float32 (`torch.float`,
    `torch.float32`, `.float()`) whatever their inputs, so inside the block those stand for
    `dtype`."""
    if importlib.util.find_spec("fla") is None:
        pytest.skip("needs flash-linear-attention (the bench extra)")
    from attn_lightning.bench._kernel_references import fla_naive

    naive = fla_naive(op)
    naive.torch = _TorchAs(dtype)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "float", lambda x, *args, **kwargs: x.to(dtype))
        yield naive


def assert_same_function(
    ours: Callable[..., Tensor], reference: Callable[..., Tensor], *inputs: Tensor
) -> None:
    """ours(*inputs) equals reference(*inputs), and so do the gradients of every input for
    one random output gradient (each side on its own leaf copies)."""
    leaves = [[t.detach().clone().requires_grad_() for t in inputs] for _ in range(2)]
    out, expected = ours(*leaves[0]), reference(*leaves[1])
    torch.testing.assert_close(out, expected)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    out.backward(grad)
    expected.backward(grad)
    for i, (a, b) in enumerate(zip(*leaves, strict=True)):
        torch.testing.assert_close(a.grad, b.grad, msg=lambda m, i=i: f"input {i}: {m}")
