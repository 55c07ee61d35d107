"""Sweeps as a user runs them: parallel and SLURM launchers, Optuna search, the HParams tab.

The launcher and sweeper tests need the `sweep` extra (`pip install -e ".[dev,sweep]"`) and
skip without it."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import TINY, events, run_cli, run_dirs
from tensorboard.plugins.hparams import api_pb2, metadata


def final_csv_values(run_dir: Path) -> dict[str, float]:
    """Each metric's last logged value in the run's csv/metrics.csv."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for row in rows for k, v in row.items() if v not in ("", None)}


@pytest.mark.slow  # a two-job sweep for the HParams tab
def test_hparams_tab_pairs_hyperparameters_with_final_metrics(data_dir: Path, tmp_path: Path):
    run_cli("attn_lightning", [*TINY, "attention=performer", "optim.lr=0.002"], tmp_path, data_dir)
    (run_dir,) = run_dirs(tmp_path / "outputs")
    acc = events(run_dir)

    def plugin_data(tag: str) -> bytes:
        return acc.SummaryMetadata(tag).plugin_data.content

    start = metadata.parse_session_start_info_plugin_data(
        plugin_data(metadata.SESSION_START_INFO_TAG)
    )
    hparams = dict(start.hparams.items())
    assert hparams["attention"].string_value == "performer"
    assert hparams["optim.lr"].number_value == pytest.approx(0.002)
    assert hparams["model.n_embd"].number_value == 32
    assert hparams["attention.redraw_interval"].number_value == 1000
    assert hparams["data"].string_value == "shakespeare"
    assert hparams["max_steps"].number_value == 12
    assert "model._target_" not in hparams and "attention._partial_" not in hparams

    experiment = metadata.parse_experiment_plugin_data(plugin_data(metadata.EXPERIMENT_TAG))
    tags = [m.name.tag for m in experiment.metric_infos]
    assert {"train/loss", "val/loss", "val/ppl", "test/loss"} <= set(tags)
    assert {h.name for h in experiment.hparam_infos} == set(hparams)
    end = metadata.parse_session_end_info_plugin_data(plugin_data(metadata.SESSION_END_INFO_TAG))
    assert end.status == api_pb2.STATUS_SUCCESS

    # The tab shows each listed tag's last scalar: the run's final values, as in the CSV, and
    # no extra points were added to the curves.
    final = final_csv_values(run_dir)
    scalars = set(acc.Tags()["scalars"])
    for tag in tags:
        assert tag in scalars, f"{tag} listed in the HParams experiment but never logged"
        assert acc.Scalars(tag)[-1].value == pytest.approx(final[tag], rel=1e-6), tag
    assert len(acc.Scalars("val/loss")) == 2 and len(acc.Scalars("test/loss")) == 1


def test_parallel_launcher_refuses_ddp_jobs_with_a_message(cli_env, tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = ["-m", "hydra/launcher=parallel", *TINY, "trainer=ddp_cpu"]
    command = [sys.executable, "-m", "attn_lightning", *args]
    proc = subprocess.run(command, cwd=tmp_path, env=cli_env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "DDP jobs cannot run under hydra/launcher=parallel" in proc.stdout + proc.stderr
    assert not list((tmp_path / "outputs").rglob("*.ckpt"))  # refused before any training


def test_parallel_launcher_runs_jobs_in_parallel_processes(data_dir: Path, tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = ["-m", "hydra/launcher=parallel", "attention=vanilla,linear", *TINY, "test=false"]
    run_cli("attn_lightning", args, tmp_path, data_dir)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    jobs = run_dirs(tmp_path / "outputs")
    assert [p.relative_to(sweep).as_posix() for p in jobs] == ["0", "1"]
    pids, spans = set(), []
    for job, attention in zip(jobs, ("vanilla", "linear"), strict=True):
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert f".attention.{attention}." in config["attention"]["_target_"]
        (event_file,) = (job / "tensorboard").glob("events.out.tfevents.*")
        pids.add(event_file.name.split(".")[5])  # events.out.tfevents.<time>.<host>.<pid>.n
        started = (job / ".hydra" / "config.yaml").stat().st_mtime  # written as the job starts
        spans.append((started, events(job).Scalars("val/loss")[-1].wall_time))
    assert len(pids) == 2, "both jobs ran in one process"
    (start0, end0), (start1, end1) = spans
    assert start0 < end1 and start1 < end0, f"jobs ran one after the other: {spans}"


def test_slurm_launcher_takes_nodes_and_tasks_from_the_trainer(data_dir: Path, tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = ["trainer=ddp", "trainer.num_nodes=3", "hydra/launcher=slurm"]
    out = run_cli(
        "attn_lightning",
        [*args, "--cfg", "all", "--package", "hydra.launcher", "--resolve"],
        tmp_path,
        data_dir,
    ).stdout
    launcher = yaml.safe_load(out)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["nodes"] == 3
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 2  # trainer=ddp: 2 GPUs
    assert launcher["timeout_min"] > 0 and launcher["max_num_timeout"] > 0
    assert launcher["submitit_folder"].startswith("outputs/multirun/")


def test_optuna_search_runs_trials_and_reports_the_best(data_dir: Path, tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = [
        "hparams_search=optuna_performer",
        "hydra.sweeper.n_trials=2",
        *TINY,
    ]  # test on: main must still return val/loss
    run_cli("attn_lightning", ["-m", *args], tmp_path, data_dir)
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = results["best_params"]
    assert set(best) == {"optim.lr", "model.dropout", "attention.nb_features"}
    assert 1e-4 <= best["optim.lr"] <= 3e-3 and best["attention.nb_features"] in (16, 32, 64, 128)
    jobs = run_dirs(tmp_path / "outputs")
    assert [p.relative_to(sweep).as_posix() for p in jobs] == ["0", "1"]
    losses = {}
    for job in jobs:
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert config["attention"]["_target_"].endswith("PerformerAttention")
        losses[job.name] = final_csv_values(job)["val/loss"]
        trial = (config["optim"]["lr"], config["attention"]["nb_features"])
        if math.isclose(losses[job.name], results["best_value"], rel_tol=1e-6):
            assert trial == (best["optim.lr"], best["attention.nb_features"])
    assert results["best_value"] == pytest.approx(min(losses.values()), rel=1e-6)
