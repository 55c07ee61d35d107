"""The inspection tools as a user runs them: a short training run logs attention images and
statistics to TensorBoard and writes report.md; `python -m attn_lightning.analyze` then studies
its checkpoint and writes the files it lists."""

from __future__ import annotations

import math
import re
from io import BytesIO
from pathlib import Path

import matplotlib.image
import pytest
from helpers import TINY, run_cli, run_dirs
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN = [
    *[a for a in TINY if not a.startswith("model.n_layer")],
    "model.n_layer=2",
    "++trainer.limit_test_batches=2",
    "callbacks.run_report.sample_tokens=40",
    "callbacks.run_report.max_tokens=16",
    "callbacks.attention_maps.every_n_validations=1",
]


def assert_png(data: bytes) -> None:
    assert data[:8] == PNG_SIGNATURE
    image = Image.open(BytesIO(data))
    image.verify()
    assert min(Image.open(BytesIO(data)).size) > 100


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("analysis_run")
    run_cli("attn_lightning", RUN, cwd, data_dir)
    (run_dir,) = run_dirs(cwd / "outputs")
    return run_dir


def test_tensorboard_holds_attention_images_and_statistics(run_dir: Path) -> None:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    images = set(acc.Tags()["images"])
    assert images == {"attn/0/maps", "attn/1/maps"}
    for tag in images:
        events = acc.Images(tag)
        assert [e.step for e in events] == [6, 12]  # every validation, not the sanity check
        assert_png(events[-1].encoded_image_string)
    scalars = set(acc.Tags()["scalars"])
    for layer in (0, 1):
        for stat in ("entropy", "distance", "local_ratio", "softmax_gap"):
            assert f"attn/{layer}/{stat}" in scalars
        for head in (0, 1):
            assert f"attn/{layer}/head{head}/entropy" in scalars
    T = 32
    entropy = acc.Scalars("attn/1/entropy")[-1].value
    assert 0 < entropy < math.log(T)
    assert 0 < acc.Scalars("attn/0/distance")[-1].value < T - 1
    assert 0 < acc.Scalars("attn/0/local_ratio")[-1].value <= 1
    assert acc.Scalars("attn/0/softmax_gap")[-1].value < 1e-5  # vanilla is exact softmax
    heads = [acc.Scalars(f"attn/1/head{h}/entropy")[-1].value for h in (0, 1)]
    assert entropy == pytest.approx(sum(heads) / 2, rel=1e-5)
    csv_header = (run_dir / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "attn/0/entropy" in csv_header  # same names in every logger


def test_report_links_valid_pngs_and_holds_the_run(run_dir: Path) -> None:
    report = (run_dir / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert set(linked) == {
        "loss_curves.png",
        "attention_patterns.png",
        "attention_entropy.png",
        "attention_distance.png",
    }
    for name in linked:
        data = (run_dir / name).read_bytes()
        assert_png(data)
        assert matplotlib.image.imread(run_dir / name).ndim == 3
    for metric in ("`val/loss`", "`test/loss`", "`model.n_layer` | `2`", "`optim.lr`"):
        assert metric in report
    sample = report.split("## Text sample")[1].split("```text\n")[1].split("```")[0]
    assert len(sample.strip()) >= 20
    assert not list(run_dir.glob(".*.part"))  # atomic writes leave no temp files


def test_analyze_writes_the_files_it_lists(run_dir: Path, data_dir: Path) -> None:
    out = run_dir / "inspect"
    args = [
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        'text="To be, or not to be"',  # Hydra quoting (no shell here)
        f"output_dir={out}",
        "ablation.max_batches=1",
        "ablation.top_k=2",
        "masks.seq_len=16",
        "masks.n_embd=32",
    ]
    stdout = run_cli("attn_lightning.analyze", args, run_dir, data_dir).stdout
    listed = [Path(line.split()[0]) for line in stdout.split("Written:")[1].splitlines() if line]
    expected = {
        "attention_layer0.png",
        "attention_layer1.png",
        "head_entropy.png",
        "head_distance.png",
        "ablation.png",
        "attention_masks.png",
        "analysis.md",
    }
    assert {p.name for p in listed} == expected
    for path in listed:
        assert path.parent == out and path.is_file()
        if path.suffix == ".png":
            assert_png(path.read_bytes())
    summary = (out / "analysis.md").read_text()
    assert "Most important heads" in summary and "Least important heads" in summary
    assert ".hydra/config.yaml" in summary  # validation data from the run's own config
    assert "layer 1, head 0" in summary and "To be, or not to be" in stdout
