"""The command line as a user runs it: training, TensorBoard contents, sampling, sweeps, DDP."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "trainer=cpu",
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=32",
    "model.block_size=32",
    "data.batch_size=4",
    "data.val_windows=16",
    "data.eval_batch_size=16",
    "trainer.max_steps=12",
    "trainer.val_check_interval=6",
    "trainer.log_every_n_steps=3",
    "callbacks.text_sample.max_new_tokens=16",
]


def run_module(module: str, args: list[str], cwd: Path, data_dir: Path):
    """`python -m module args` as a user runs it, with the project's data dir."""
    env = dict(os.environ, ATTN_LIGHTNING_DATA_DIR=str(data_dir))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("LOCAL_RANK", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_cli(module: str, args: list[str], cwd: Path, data_dir: Path) -> subprocess.CompletedProcess:
    """run_module, which must succeed."""
    proc = run_module(module, args, cwd, data_dir)
    assert proc.returncode == 0, (
        f"{module} {args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    )
    return proc


def run_dirs(root: Path) -> list[Path]:
    """Dirs that hold a finished run (a TensorBoard dir), anywhere under root."""
    return sorted(p.parent for p in root.rglob("tensorboard") if p.is_dir())


def events(run_dir: Path) -> EventAccumulator:
    """All TensorBoard events of a run, checking they come from one process (rank 0)."""
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    writers = {f.name.split(".")[4] for f in files}  # events.out.tfevents.<time>.<host>.<pid>.n
    assert len(writers) == 1, f"expected events from one process (rank 0), found {files}"
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def single_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("single")
    run_cli("attn_lightning", TINY, cwd, data_dir)
    (run_dir,) = run_dirs(cwd / "outputs")
    return run_dir


def test_run_lands_in_dated_dir_with_config_and_checkpoints(single_run: Path):
    date, time = single_run.parts[-2:]
    assert single_run.parent.parent.name == "outputs"
    assert len(date.split("-")) == 3 and len(time.split("-")) == 3
    assert (single_run / ".hydra" / "config.yaml").is_file()
    checkpoints = {p.name for p in (single_run / "checkpoints").iterdir()}
    assert "last.ckpt" in checkpoints and any(n.startswith("step") for n in checkpoints)


def test_tensorboard_holds_every_metric_and_a_text_sample(single_run: Path):
    acc = events(single_run)
    scalars = set(acc.Tags()["scalars"])
    for tag in (
        "train/loss",
        "val/loss",
        "val/ppl",
        "train/tokens_per_sec",
        "train/tokens_seen",
        "memory/rss_peak_mib",
        "test/loss",
        "test/ppl",
    ):
        assert tag in scalars, f"{tag} missing from {sorted(scalars)}"
    assert any(tag.startswith("train/lr") for tag in scalars)
    val_loss = [e.value for e in acc.Scalars("val/loss")]
    val_ppl = [e.value for e in acc.Scalars("val/ppl")]
    assert len(val_loss) == 2  # validation at steps 6 and 12
    for loss, ppl in zip(val_loss, val_ppl, strict=True):
        assert ppl == pytest.approx(math.exp(loss), rel=1e-4)
    assert all(e.value > 0 for e in acc.Scalars("train/tokens_per_sec"))
    assert acc.Scalars("train/tokens_seen")[-1].value == 12 * 4 * 32
    samples = acc.Tensors("samples/text/text_summary")
    assert len(samples) == 2
    text = samples[-1].tensor_proto.string_val[0].decode()
    assert len(text.strip()) > 0


def test_checkpoint_alone_rebuilds_model_and_samples_text(single_run: Path, data_dir: Path):
    ckpt = single_run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    hparams = state["hyper_parameters"]
    assert hparams["model"]["n_layer"] == 1 and len(hparams["tokenizer"]["chars"]) == 65
    args = [f"ckpt_path={ckpt}", "prompt=ROMEO:", "max_new_tokens=40", "seed=3"]
    first = run_cli("attn_lightning.sample", args, single_run, data_dir).stdout
    assert first.startswith("ROMEO:")
    assert len(first.rstrip("\n")) >= len("ROMEO:") + 30
    from omegaconf import OmegaConf

    from attn_lightning.sample import sample

    cfg = OmegaConf.create(
        {
            "ckpt_path": str(ckpt),
            "prompt": "ROMEO:",
            "max_new_tokens": 40,
            "temperature": 0.8,
            "top_k": 200,
            "seed": 3,
            "device": "cpu",
        }
    )
    assert sample(cfg) == first.removesuffix("\n")  # same seed, same text


def test_multirun_gives_one_dir_per_job(data_dir: Path, tmp_path: Path):
    run_cli(
        "attn_lightning",
        ["-m", *TINY[1:], "trainer=cpu", "model.n_layer=1,2", "test=false"],
        tmp_path,
        data_dir,
    )
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert sorted(p.name for p in run_dirs(tmp_path / "outputs")) == ["0", "1"]
    for job, n_layer in (("0", 1), ("1", 2)):
        hparams = torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert hparams["hyper_parameters"]["model"]["n_layer"] == n_layer


def test_ddp_cpu_run_writes_one_dir_and_logs_from_rank_zero(data_dir: Path, tmp_path: Path):
    run_cli("attn_lightning", [*TINY[1:], "trainer=ddp_cpu", "test=false"], tmp_path, data_dir)
    (run_dir,) = run_dirs(tmp_path / "outputs")
    assert not (tmp_path / "outputs" / "multirun").exists()
    acc = events(run_dir)  # asserts a single writing process
    # Two ranks, each with its own batches: tokens counted for both.
    assert acc.Scalars("train/tokens_seen")[-1].value == 2 * 12 * 4 * 32


def test_ddp_cpu_multirun_children_do_not_start_sweeps(data_dir: Path, tmp_path: Path):
    run_cli(
        "attn_lightning",
        ["-m", *TINY[1:], "trainer=ddp_cpu", "model.n_layer=1,2", "test=false"],
        tmp_path,
        data_dir,
    )
    outputs = tmp_path / "outputs"
    sweeps = list((outputs / "multirun").glob("*/*"))
    assert len(sweeps) == 1, f"expected one sweep dir, found {sweeps}"
    assert [p for p in outputs.iterdir() if p.name != "multirun"] == []  # no stray run dirs
    assert sorted(p.relative_to(sweeps[0]).as_posix() for p in run_dirs(outputs)) == ["0", "1"]
    for job, n_layer in (("0", 1), ("1", 2)):
        events(sweeps[0] / job)  # events from one process per job: rank 0 only
        state = torch.load(sweeps[0] / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert state["hyper_parameters"]["model"]["n_layer"] == n_layer
