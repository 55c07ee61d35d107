"""The command line as a user runs it: training, TensorBoard contents, sampling, sweeps, DDP."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from helpers import TINY, events, run_cli, run_dirs
from tensorboard.plugins.custom_scalar import layout_pb2


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


def test_custom_scalars_open_on_health_with_attention_collapsed_below(single_run: Path):
    acc = events(single_run)
    (written,) = acc.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(written.tensor_proto.string_val[0])
    scalars = set(acc.Tags()["scalars"])

    def plotted(chart: layout_pb2.Chart) -> set[str]:
        return {t for t in scalars if any(re.search(r, t) for r in chart.multiline.tag)}

    health, *attention = layout.category
    assert health.title == "health" and not health.closed
    assert attention and all(category.closed for category in attention)
    charts = {chart.title: plotted(chart) for chart in health.chart}
    assert charts["loss (train, val)"] == {"train/loss", "val/loss"}
    assert all(charts.values()), f"health charts that match no metric: {charts}"
    below = set().union(*(plotted(chart) for c in attention for chart in c.chart))
    assert below == {t for t in scalars if t.startswith("attn/")}


def test_train_log_holds_lightnings_own_messages(single_run: Path):
    log = (single_run / "train.log").read_text()
    assert "`Trainer.fit` stopped: `max_steps=12` reached." in log
    assert "GPU available: " in log


def test_checkpoint_alone_rebuilds_model_and_samples_text(single_run: Path, data_dir: Path):
    ckpt = single_run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    hparams = state["hyper_parameters"]
    assert hparams["model"]["n_layer"] == 1 and len(hparams["tokenizer"]["chars"]) == 65
    args = [f"ckpt_path={ckpt}", "prompt=ROMEO:", "max_new_tokens=40", "seed=3"]
    first = run_cli("attn_lightning.sample", args, single_run, data_dir).stdout
    assert first.startswith("ROMEO:")
    assert len(first.rstrip("\n")) >= len("ROMEO:") + 30
    from hydra import compose, initialize_config_dir

    from attn_lightning.config import CONFIG_DIR
    from attn_lightning.sample import sample

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=[*args, "device=cpu"])
    assert sample(cfg) == first.removesuffix("\n")  # same seed, same text


@pytest.mark.slow  # test_compare's sweep fixture runs a multirun by default
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


@pytest.mark.slow  # two DDP jobs of two processes each; the single DDP run stays default
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
