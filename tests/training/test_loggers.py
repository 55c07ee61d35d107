"""The optional loggers (`logger=mlflow`, `logger=wandb`) and the text, images and parameters
the callbacks write to each logger the way it takes them (attn_lightning/training/loggers.py)."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import TINY, run_cli
from hydra import compose, initialize_config_dir
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import ConfigError
from attn_lightning.training import loggers


def logger_config(option: str, tmp_path: Path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", f"logger={option}"])
    return cfg.logger


def test_a_logger_without_its_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(
        loggers.importlib.util,
        "find_spec",
        lambda name, *args: None if name in ("mlflow", "wandb") else found(name, *args),
    )
    loggers.check_logger_packages(logger_config("default", tmp_path))  # needs neither
    for option, cls in (("mlflow", "MLFlowLogger"), ("wandb", "WandbLogger")):
        with pytest.raises(ConfigError) as refused:
            loggers.check_logger_packages(logger_config(option, tmp_path))
        message = str(refused.value)
        assert message.startswith(f"logger.{option} ({cls}) needs the `{option}` package")
        assert message.endswith('pip install -e ".[loggers]"') and "\n" not in message


def test_text_and_images_reach_tensorboard_and_skip_csv(tmp_path):
    board = TensorBoardLogger(tmp_path, name="tb", version="")
    table = CSVLogger(tmp_path, name="csv", version="")
    trainer = SimpleNamespace(loggers=[board, table])
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    loggers.log_text(trainer, "samples/text", "To be\nor not", 3, verbatim=True)
    loggers.log_text(trainer, "samples/table", "| a |\n| - |", 3)
    loggers.log_image(trainer, "attn/0/maps", image, 3)
    board.experiment.flush()
    events = EventAccumulator(board.log_dir, size_guidance={"tensors": 0, "images": 0})
    events.Reload()
    text = events.Tensors("samples/text/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == "    To be\n    or not"  # indented: TensorBoard's markdown keeps the breaks
    table_text = events.Tensors("samples/table/text_summary")[0].tensor_proto.string_val[0]
    assert table_text.decode() == "| a |\n| - |"
    (logged,) = events.Images("attn/0/maps")
    assert (logged.step, logged.width, logged.height) == (3, 5, 4)
    assert not (tmp_path / "csv").exists()  # CSV takes neither: nothing written, no error


def csv_steps(run_dir: Path, metric: str) -> list[int]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return [int(row["step"]) for row in csv.DictReader(f) if row[metric]]


@pytest.mark.slow  # MLflow's import and its SQLite store's creation
def test_mlflow_run_leaves_metrics_params_tags_and_media_in_its_local_store(data_dir, tmp_path):
    pytest.importorskip("mlflow", reason="logger=mlflow needs the loggers extra")
    from mlflow.tracking import MlflowClient

    args = [*TINY, "logger=mlflow", "+logger.mlflow.tags.purpose=test", "test=false"]
    run_cli("attn_lightning", [*args, "hydra.run.dir=outputs/run"], tmp_path, data_dir)
    run_dir = tmp_path / "outputs" / "run"
    assert not (run_dir / "tensorboard").exists()  # logger=mlflow replaces TensorBoard

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("attn-lightning").experiment_id])
    assert run.info.status == "FINISHED"
    for metric in ("train/loss", "val/loss", "train/tokens_per_sec", "attn/0/entropy"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [m.step for m in history] == csv_steps(run_dir, metric), metric
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) == 2  # steps 6 and 12
    params = run.data.params
    assert params["model/n_embd"] == "32" and params["model/n_layer"] == "1"
    assert params["attention"] == "vanilla" and params["data"] == "shakespeare"
    assert params["max_steps"] == "12"
    assert run.data.tags["run_dir"] == str(run_dir) and run.data.tags["purpose"] == "test"
    samples = client.list_artifacts(run.info.run_id, "samples/text")
    assert [Path(a.path).name for a in samples] == ["step000006.txt", "step000012.txt"]
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any("attn~0~maps" in path and path.endswith(".png") for path in images), images


@pytest.mark.slow  # W&B's service process
def test_wandb_offline_run_keeps_text_and_images_in_the_run_dir(data_dir, tmp_path):
    pytest.importorskip("wandb", reason="logger=wandb needs the loggers extra")
    args = [*TINY, "logger=wandb", "logger.wandb.tags=[test]", "test=false"]
    proc = run_cli("attn_lightning", [*args, "hydra.run.dir=outputs/run"], tmp_path, data_dir)
    assert "offline" in proc.stdout + proc.stderr
    (offline,) = (tmp_path / "outputs" / "run" / "wandb").glob("offline-run-*")
    media = offline / "files" / "media"
    assert len(list((media / "table" / "samples").glob("text_*.table.json"))) == 2
    assert list((media / "images" / "attn" / "0").glob("maps_*.png"))
    assert not (tmp_path / "outputs" / "run" / "tensorboard").exists()
