"""`debug=profiler` writes Lightning's profile of a short run into the run dir; `debug=anomaly`
turns on torch's anomaly detection; both are the debug=fast smoke test underneath."""

from __future__ import annotations

from pathlib import Path

from helpers import TINY, use_data_dir
from hydra import compose, initialize_config_dir

from attn_lightning.config import CONFIG_DIR
from attn_lightning.train import train
from attn_lightning.training.builders import build_trainer


def compose_train(overrides: list[str], tmp_path: Path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_debug_anomaly_turns_on_anomaly_detection_in_a_short_run(tmp_path: Path):
    anomaly = compose_train(["debug=anomaly"], tmp_path)
    assert build_trainer(anomaly)._detect_anomaly is True
    assert build_trainer(compose_train(["debug=fast"], tmp_path))._detect_anomaly is False
    assert anomaly.trainer.max_steps == 20 and anomaly.test is False  # debug=fast's short run


def test_debug_profiler_writes_the_profile_of_each_step_into_the_run_dir(
    data_dir: Path, tmp_path: Path, monkeypatch
):
    use_data_dir(monkeypatch, data_dir)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    overrides = [*TINY, "debug=profiler", "trainer.max_steps=4", "trainer.val_check_interval=2"]
    overrides += ["~callbacks.progress_bar", "~callbacks.text_sample", "~callbacks.run_report"]
    train(compose_train([*overrides, "~callbacks.attention_maps"], run_dir))
    report = (run_dir / "profiler" / "fit-profile.txt").read_text()
    # SimpleProfiler's table: one row per hook, with its number of calls
    rows = {line.split("|")[1].strip(): line for line in report.splitlines() if "|" in line}
    step = next(name for name in rows if name.endswith("training_step"))
    assert "run_training_batch" in rows and "optimizer_step" in report
    assert rows[step].split("|")[3].strip() == "4"  # calls: one per step
