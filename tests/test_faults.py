"""Faults and bad input: kills, signals, NaN, hostile or broken checkpoints, bad configs.
Nothing may lose work silently, and a user error is a message, not a traceback."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, cli_environment, run_entry_point_cases, use_data_dir

from attn_lightning.checkpoint import read_checkpoint, save_atomic
from attn_lightning.errors import CheckpointError

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


def test_sigkill_then_resume_gives_the_uninterrupted_losses(data_dir, tmp_path):
    args = [*RUN, "trainer.max_steps=120"]
    ckpt = tmp_path / "outputs/killed/checkpoints/last.ckpt"
    proc = start_and_wait([*args, "hydra.run.dir=outputs/killed"], tmp_path, data_dir, ckpt, 30)
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.wait()
    step = saved_step(ckpt)
    assert 30 <= step < 120
    resumed = run([*args, "hydra.run.dir=outputs/resumed", f"ckpt_path={ckpt}"], tmp_path, data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full = run([*args, "hydra.run.dir=outputs/full"], tmp_path, data_dir)
    assert full.returncode == 0, full.stderr[-3000:]
    after = train_losses(tmp_path / "outputs/resumed")
    assert [s for s, _ in after] == list(range(step, 120))  # no step lost, none repeated
    reference = dict(train_losses(tmp_path / "outputs/full"))
    assert {s: reference[s] for s, _ in after} == dict(after)  # bit-identical on CPU
    # continuing in place (resume=auto) keeps the killed attempt's history before the
    # checkpoint and replaces what it logged after it: the whole run's curve, once
    in_place = run([*args, "hydra.run.dir=outputs/killed", "resume=auto"], tmp_path, data_dir)
    assert in_place.returncode == 0, in_place.stderr[-3000:]
    assert f"resuming from {ckpt}" in in_place.stderr + in_place.stdout
    assert train_losses(tmp_path / "outputs/killed") == train_losses(tmp_path / "outputs/full")


def test_sigterm_saves_the_current_step_and_exits_cleanly(data_dir, tmp_path):
    ckpt = tmp_path / "outputs/run/checkpoints/last.ckpt"
    args = [*RUN, "trainer.max_steps=100000", "hydra.run.dir=outputs/run"]
    proc = start_and_wait(args, tmp_path, data_dir, ckpt, 10)
    time.sleep(1.0)  # let it run past the periodic checkpoint
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    step = saved_step(ckpt)
    assert f"Interrupted at step {step}" in output
    assert (step > 10 and step % 10 != 0) or step > 20  # the current step, not a periodic one
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
from attn_lightning.checkpoint import save_atomic
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


BAD_CONFIGS = [
    (["model.n_embd=33"], "not divisible by model.n_head"),
    (["attention=gqa", "attention.n_kv_head=3"], "must be positive and divide model.n_head"),
    (["data.block_size=0"], "data.block_size must be positive"),
    (["data.block_size=120000"], "too few for block_size 120000: lower data.block_size"),
    (["model.block_size=16"], "model.block_size=16 is shorter than the data's sequences"),
    (["model.n_layer=0"], "model.n_layer must be positive"),
    (["optim.lr=-1"], "optim.lr must be positive"),
    (["schedule.min_lr=0.5"], "schedule.min_lr=0.5 exceeds optim.lr"),
    (["optim.lr=four"], "optim.lr must be positive, got 'four'"),
    # the optimizer's arguments, checked against its class (SGD has no betas)
    (["optim=sgd", "+optim.betas=[0.9,0.99]"], "optim.betas is not an argument of torch.optim.SGD"),
    (
        ["optim._target_=torch.optim.Adamm"],
        "optim._target_='torch.optim.Adamm' is not an importable",
    ),
    (["optim=sgd", "optim.momentum=-1"], "torch.optim.SGD refuses its arguments"),
    (["data.batch_size=0"], "data.batch_size must be positive"),
    (["trainer.max_steps=0"], "trainer.max_steps must be positive"),
    (["attention=nope"], "Available options in 'attention'"),
    # the typed schema (attn_lightning/schema.py): wrong types and unknown option values
    (["model.n_layer=four"], "Value 'four' of type 'str' could not be converted to Integer"),
    (["model.pos_embedding=lerned"], "Invalid value 'lerned', expected one of [learned, none]"),
    (["on_nonfinite_loss=halt"], "Invalid value 'halt', expected one of [stop, skip]"),
    (["resume=yes"], "Invalid value 'yes', expected one of [auto]"),
    (["data.tokenizer=bytes"], "Invalid value 'bytes', expected one of [char, bpe]"),
    (["data.val_fraction=a_lot"], "could not be converted to Float"),
    (["data=nope"], "Available options in 'data'"),
    (["experiment=compare_atention"], "Could not find 'experiment/compare_atention'"),
    (["hparams_search=optuan"], "Could not find 'hparams_search/optuan'"),
    (["attention=performer", "attention.nb_features=0"], "nb_features must be >= 1"),
    (["attention=sliding_window", "attention.window=0"], "window must be >= 1"),
    (["attention=nystrom", "attention.num_landmarks=7"], "num_landmarks"),
    (["trainer=ddp"], "trainer=ddp_cpu"),
]


@pytest.fixture(scope="module")
def bad_config_outcomes(data_dir, tmp_path_factory) -> dict[str, dict]:
    """Every BAD_CONFIGS case through the CLI's main(), in one interpreter (helpers)."""
    cases = [[*TINY[1:], "debug=fast", *overrides] for overrides, _ in BAD_CONFIGS]
    cwd = tmp_path_factory.mktemp("bad_configs")
    outcomes = run_entry_point_cases("attn_lightning.train", cases, cwd, data_dir)
    return {" ".join(o): outcome for (o, _), outcome in zip(BAD_CONFIGS, outcomes, strict=True)}


@pytest.mark.parametrize(
    ("overrides", "message"), BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS]
)
def test_bad_config_exits_with_its_message_and_no_traceback(
    bad_config_outcomes, overrides, message
):
    if overrides == ["trainer=ddp"] and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs trainer=ddp asks for")
    outcome = bad_config_outcomes[" ".join(overrides)]
    assert outcome["code"] != 0
    assert message in outcome["stderr"], outcome["stderr"][-2000:]
    assert "Traceback" not in outcome["stderr"] + outcome["stdout"]


def test_a_user_error_of_the_cli_exits_2_in_its_own_process(data_dir, tmp_path):
    """The in-process cases above stand for the CLI: one of them, run as a user runs it."""
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
