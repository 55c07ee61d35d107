"""Faults and bad input: kills, signals, NaN, hostile or broken checkpoints, bad configs.
Nothing may lose work silently, and a user error is a message, not a traceback."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    GENERATED_TEXT,
    TINY,
    cli_environment,
    events,
    run_entry_point_cases,
    use_data_dir,
)
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from attn_lightning.errors import CheckpointError
from attn_lightning.runs.checkpoint import load_checkpoint, read_checkpoint, save_atomic
from attn_lightning.runs.resume import ResumePoint, resume_point

RUN = [
    *TINY,
    "model.dropout=0.1",  # so resuming must restore the RNG too
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=40",
    "checkpoint_every_n_steps=10",
    "test=false",
    "~callbacks.text_sample",
    "~callbacks.progress_bar",
]


def cli(args: list[str], cwd: Path, data_dir: Path, module: str = "attn_lightning"):
    return [sys.executable, "-m", module, *args], cli_environment(data_dir)


def run(args, cwd, data_dir, module="attn_lightning") -> subprocess.CompletedProcess:
    command, env = cli(args, cwd, data_dir, module)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_together(runs: list[list[str]], cwd, data_dir) -> list[subprocess.CompletedProcess]:
    """Independent runs side by side: their interpreter start-ups overlap."""
    procs = []
    for args in runs:
        command, env = cli(args, cwd, data_dir)
        procs.append(
            (
                command,
                subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                ),
            )
        )
    results = []
    for command, proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        results.append(subprocess.CompletedProcess(command, proc.returncode, stdout, stderr))
    return results


def saved_step(path: Path) -> int:
    try:
        return int(torch.load(path, weights_only=True)["global_step"])
    except Exception:  # not written yet, or being replaced
        return -1


def start_and_wait(args, cwd, data_dir, ckpt: Path, min_step: int) -> subprocess.Popen:
    """Start a training run and return once it has checkpointed step >= min_step."""
    command, env = cli(args, cwd, data_dir)
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while saved_step(ckpt) < min_step:
        assert proc.poll() is None, f"run ended early:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.1)
    return proc


def train_losses(run_dir: Path) -> list[tuple[int, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]


def tensorboard_steps(path: Path, tag: str) -> list[int]:
    """The steps at which `tag` was logged: in one event file, or a run's first one (its only
    one while it runs). Read raw, without TensorBoard's purging."""
    if path.is_dir():
        path = min((path / "tensorboard").glob("events.out.tfevents.*"), default=None)
        if path is None:
            return []
    loaded = EventFileLoader(str(path)).Load()
    return [e.step for e in loaded if any(v.tag == tag for v in e.summary.value)]


@dataclass(frozen=True)
class KilledRun:
    """Run dirs of one 120-step run: `killed` was SIGKILLed after its checkpoint at `step`
    and then continued in place with ckpt_path=last; `resumed` continued from that checkpoint
    file in a new dir; `full` ran uninterrupted."""

    root: Path
    step: int
    checkpoint: Path
    killed: Path
    resumed: Path
    full: Path
    in_place_output: str


@pytest.fixture(scope="module")
def killed_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> KilledRun:
    root = tmp_path_factory.mktemp("killed_run")
    # TensorBoard written to disk within 0.2 s (not 120 s), as a long run's is long before
    # its next checkpoint: the killed attempt leaves events past its checkpoint to purge
    args = [*RUN, "trainer.max_steps=120", "+logger.tensorboard.flush_secs=0.2"]
    ckpt = root / "outputs/killed/checkpoints/last.ckpt"
    proc = start_and_wait([*args, "hydra.run.dir=outputs/killed"], root, data_dir, ckpt, 30)
    deadline = time.time() + 120
    while max(tensorboard_steps(root / "outputs/killed", "train/loss"), default=-1) < (
        saved_step(ckpt) + 2
    ):
        assert proc.poll() is None and time.time() < deadline, "no events past the checkpoint"
        time.sleep(0.1)
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.wait()
    step = saved_step(ckpt)
    assert 30 <= step < 120
    kept = root / "killed_at_step.ckpt"  # the file, before the in-place resume rewrites it
    shutil.copy2(ckpt, kept)
    resumed, in_place, full = run_together(
        [
            [*args, "hydra.run.dir=outputs/resumed", f"ckpt_path={kept}"],
            [*args, "hydra.run.dir=outputs/killed", "ckpt_path=last"],
            [*args, "hydra.run.dir=outputs/full"],
        ],
        root,
        data_dir,
    )
    for finished in (resumed, in_place, full):
        assert finished.returncode == 0, finished.stderr[-3000:]
    out = root / "outputs"
    return KilledRun(
        root,
        step,
        kept,
        out / "killed",
        out / "resumed",
        out / "full",
        in_place.stdout + in_place.stderr,
    )


def test_resuming_a_killed_run_from_its_file_gives_the_uninterrupted_losses(killed_run):
    after = train_losses(killed_run.resumed)
    assert [s for s, _ in after] == list(range(killed_run.step, 120))  # none lost or repeated
    reference = dict(train_losses(killed_run.full))
    assert {s: reference[s] for s, _ in after} == dict(after)  # bit-identical on CPU


def test_ckpt_path_last_continues_in_place_exactly_as_the_file_does(killed_run):
    """In place, the killed attempt's rows before the checkpoint are kept and what it logged
    after it is replaced: the whole run's curve, once, the same losses as ckpt_path=<file>."""
    last = killed_run.killed / "checkpoints" / "last.ckpt"
    assert f"ckpt_path=last: resuming from {last}" in killed_run.in_place_output
    in_place = train_losses(killed_run.killed)
    assert in_place[killed_run.step :] == train_losses(killed_run.resumed)
    assert in_place == train_losses(killed_run.full)


def test_in_place_resume_purges_tensorboard_past_the_checkpoint(killed_run):
    first_attempt = min((killed_run.killed / "tensorboard").glob("events.out.tfevents.*"))
    killed_steps = tensorboard_steps(first_attempt, "train/loss")
    assert max(killed_steps) > killed_run.step, "the killed attempt logged nothing to replace"
    scalars = events(killed_run.killed, attempts=2).Scalars("train/loss")
    csv_losses = train_losses(killed_run.killed)
    assert [e.step for e in scalars] == [s for s, _ in csv_losses]  # each step once
    assert [e.value for e in scalars] == [float(np.float32(v)) for _, v in csv_losses]


def composed(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from attn_lightning.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def resumed_from(run_dir: Path, *overrides: str) -> ResumePoint:
    from attn_lightning.training.builders import build_callbacks

    cfg = composed([*RUN, f"paths.output_dir={run_dir}", *overrides])
    return resume_point(cfg, build_callbacks(cfg))


def test_ckpt_path_best_is_the_checkpoint_of_the_lowest_val_loss(killed_run):
    with open(killed_run.full / "csv" / "metrics.csv") as f:
        val = [(float(r["val/loss"]), int(r["step"])) for r in csv.DictReader(f) if r["val/loss"]]
    assert len(val) >= 3  # steps 40, 80, 120: a best to pick
    best = resumed_from(killed_run.full, "ckpt_path=best")
    assert Path(best.path).parent == killed_run.full / "checkpoints"
    assert Path(best.path).name != "last.ckpt"
    assert best.step - 1 == min(val)[1]  # Lightning logs step N's metrics at step N - 1


def test_resume_auto_is_ckpt_path_last(killed_run, tmp_path):
    last = resumed_from(killed_run.killed, "ckpt_path=last")
    assert last.path == str(killed_run.killed / "checkpoints" / "last.ckpt") and last.step == 120
    assert resumed_from(killed_run.killed, "resume=auto") == last
    assert resumed_from(tmp_path, "ckpt_path=last") == ResumePoint()  # nothing yet: fresh start


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_one_line(killed_run, tmp_path):
    """sample/eval/analyze load through load_checkpoint: an edited file is a CheckpointError."""
    checkpoint = torch.load(killed_run.checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["model"]["n_embd"] = 64
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(CheckpointError, match=r"do not fit.*\[65, 32\], model \[65, 64\]"):
        load_checkpoint(edited)


@pytest.fixture(scope="module")
def resume_error_outcomes(killed_run, data_dir) -> list[dict]:
    """Resumes refused before training, through the CLI's main() in one interpreter."""
    record = killed_run.killed / ".hydra" / "config.yaml", killed_run.killed / "summary.json"
    record_before = [path.read_bytes() for path in record]
    other_text = killed_run.root / "other_vocabulary.txt"  # the corpus less one character
    other_text.write_text((data_dir / GENERATED_TEXT).read_text().replace("x", ""))
    cases = [
        [*RUN, "hydra.run.dir=outputs/killed", "ckpt_path=last", "model.n_embd=64"],
        [*RUN, "hydra.run.dir=outputs/x", f"ckpt_path={killed_run.checkpoint}", "attention=linear"],
        [
            *RUN,
            "hydra.run.dir=outputs/x",
            f"ckpt_path={killed_run.checkpoint}",
            f"data.path={other_text}",
        ],
        [*RUN, "hydra.run.dir=outputs/x", "resume=auto", f"ckpt_path={killed_run.checkpoint}"],
        [*RUN, "hydra.run.dir=outputs/x", "ckpt_path=hpc"],
        [*RUN, "hydra.run.dir=outputs/x", "ckpt_path=best"],
    ]
    outcomes = run_entry_point_cases("attn_lightning.train", cases, killed_run.root, data_dir)
    # case 0 resumes in place: Hydra rewrote .hydra/ and summary.json before the refusal
    outcomes[0]["record_kept"] = [path.read_bytes() for path in record] == record_before
    return outcomes


def checkpoint_files(run_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").iterdir()}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (0, "last.ckpt holds another model than this config (model.n_embd: checkpoint 32, "),
        (1, "attention._target_: checkpoint attn_lightning.attention.vanilla.VanillaAttention"),
        (2, "tokenizer.chars: checkpoint <65 characters>, config <64 characters>"),
        (3, "resume=auto means ckpt_path=last, but ckpt_path="),
        (4, "ckpt_path=hpc: no hpc_ckpt_<n>.ckpt in"),
        (5, "ckpt_path=best: no last checkpoint in"),
    ],
    ids=["n_embd in place", "attention", "vocabulary", "resume conflict", "no hpc", "no best"],
)
def test_a_resume_that_cannot_continue_is_one_line_and_writes_nothing(
    killed_run, resume_error_outcomes, case, message
):
    before = checkpoint_files(killed_run.killed)
    outcome = resume_error_outcomes[case]
    assert outcome["code"] == 2
    lines = outcome["stderr"].strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], outcome["stderr"][-2000:]
    assert "Traceback" not in outcome["stderr"] + outcome["stdout"]
    assert checkpoint_files(killed_run.killed) == before
    assert not (killed_run.root / "outputs/x/checkpoints").exists()
    assert not (killed_run.root / "outputs/x/tensorboard").exists()
    assert outcome.get("record_kept", True), "the refused attempt's config replaced the run's"


def test_sigterm_saves_the_current_step_and_exits_cleanly(data_dir, tmp_path):
    ckpt = tmp_path / "outputs/run/checkpoints/last.ckpt"
    run_dir = tmp_path / "outputs/run"
    args = [*RUN, "trainer.max_steps=100000", "hydra.run.dir=outputs/run"]
    args += ["+logger.tensorboard.flush_secs=0.2"]  # its steps show how far the run got
    proc = start_and_wait(args, tmp_path, data_dir, ckpt, 10)
    periodic = saved_step(ckpt)
    deadline = time.time() + 120
    while (reached := max(tensorboard_steps(run_dir, "train/loss"), default=-1)) <= periodic:
        assert proc.poll() is None and time.time() < deadline, "no step past the checkpoint"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    step = saved_step(ckpt)
    assert f"Interrupted at step {step}" in output
    assert f"Interrupted at step {step}" in (tmp_path / "outputs/run/train.log").read_text()
    assert step >= reached > periodic  # the current step, not the periodic checkpoint's
    read_checkpoint(ckpt)  # loadable, safely


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], "(1 non-finite so far)"),
        (["on_nonfinite_loss=skip", "max_nonfinite_skips=2"], "(3 non-finite so far)"),
    ],
    ids=["stop", "skip-then-stop"],
)
def test_nonfinite_loss_stops_with_step_and_checkpoint(data_dir, tmp_path, options, expected):
    args = [*RUN, "trainer.max_steps=300", "optim.lr=1e4", "schedule.warmup_steps=0", *options]
    proc = run(args, tmp_path, data_dir)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "training loss is nan at step" in proc.stderr or "training loss is inf" in proc.stderr
    assert expected in proc.stderr


class CreatesFile:
    """Unpickling this runs code: it creates a file (the proof that code ran)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_checkpoint_carrying_code_is_refused_and_the_code_never_runs(data_dir, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": CreatesFile(marker)}, evil)
    with pytest.raises(CheckpointError, match="could run code"):
        read_checkpoint(evil)
    proc = run(
        [f"ckpt_path={evil}", "max_new_tokens=5"],
        tmp_path,
        data_dir,
        module="attn_lightning.sample",
    )
    assert proc.returncode == 2 and "refused to load" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists()


def test_config_target_outside_the_package_is_refused(tmp_path):
    path = tmp_path / "target.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model": {"_target_": "os.system"}}}, path)
    with pytest.raises(CheckpointError, match=r"os\.system"):
        read_checkpoint(path)


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomic({"state_dict": {"w": torch.randn(1000)}}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        read_checkpoint(path)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_atomic({"state_dict": {"step": torch.tensor(1)}}, path)

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the writer is interrupted mid-file

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"state_dict": {"step": torch.tensor(2)}}, path)
    monkeypatch.undo()
    assert read_checkpoint(path)["state_dict"]["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_killed_writer_leaves_no_partial_file_named_like_a_checkpoint(tmp_path):
    path = tmp_path / "last.ckpt"
    save_atomic({"state_dict": {"step": torch.tensor(1)}}, path)
    script = f"""
import os, signal, torch
from attn_lightning.runs.checkpoint import save_atomic
def torn_save(obj, f, *a, **k):
    f.write(b"half a checkpoint"); f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = torn_save
save_atomic({{"state_dict": {{}}}}, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], env=cli_environment(), timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert read_checkpoint(path)["state_dict"]["step"] == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert leftovers and not any(name.endswith(".ckpt") for name in leftovers)


def test_a_user_error_of_the_cli_exits_2_in_its_own_process(data_dir, tmp_path):
    """The in-process cases (test_bad_inputs.py) stand for the CLI: one of them, run as a user
    runs it."""
    proc = run([*TINY[1:], "debug=fast", "optim.lr=-1"], tmp_path, data_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: optim.lr must be positive")
    assert "Traceback" not in proc.stderr + proc.stdout


def test_deferred_nonfinite_check_stops_and_never_saves_bad_weights(
    data_dir, tmp_path, monkeypatch
):
    """The accelerator path (no per-step sync), forced on CPU: the run stops naming the first
    bad step, and no checkpoint holds weights updated after it."""
    from hydra import compose, initialize_config_dir

    from attn_lightning.config import CONFIG_DIR
    from attn_lightning.errors import find_user_error
    from attn_lightning.train import train
    from attn_lightning.training.nonfinite import NonFiniteLossGuard

    monkeypatch.setattr(NonFiniteLossGuard, "checks_every_step", lambda self, device: False)
    use_data_dir(monkeypatch, data_dir)
    overrides = [o for o in RUN if not o.startswith("~")] + [
        "trainer.max_steps=300",
        "optim.lr=1e4",
        "schedule.warmup_steps=0",
        "trainer.log_every_n_steps=50",
        "checkpoint_every_n_steps=1",
        f"paths.output_dir={tmp_path}",
        "~callbacks.progress_bar",
        "~callbacks.text_sample",
    ]
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with pytest.raises(BaseException) as raised:
        train(cfg)
    error = find_user_error(raised.value)
    assert error is not None and "became non-finite at step" in str(error)
    bad_step = int(str(error).split("non-finite at step ")[1].split(";")[0])
    last = tmp_path / "checkpoints" / "last.ckpt"
    if last.exists():  # checkpoints stop at the first bad step
        state = read_checkpoint(last)
        assert state["global_step"] <= bad_step
        assert all(
            torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
        )
