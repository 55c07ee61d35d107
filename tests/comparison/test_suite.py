"""The suite score on a small hand-made sweep written to disk: tasks, parts of a task split by a
sweep axis, the cell chosen on validation over (learning rate, weight decay), task and suite
scores with their t-intervals and Welch/Holm marks computed by hand, MAD's choice on test
beside ours, and the files `python -m attn_lightning.compare` writes.

The sweep (values per seed 1, 2, 3 at the cell chosen on validation; every other cell has a
worse val loss and test accuracy 0.1 unless said):
- recall (`mad_in_context_recall`), split by `data.vocab_size=16,32`, one setting per run:
  vanilla v16 0.9, 1.0, 0.8 and v32 0.7, 0.8, 0.9 -> per seed 0.8, 0.9, 0.85;
  gla v16 0.5, 0.6, 0.55 and v32 0.4, 0.5, 0.45 -> per seed 0.45, 0.55, 0.5.
  vanilla's v16 scores 1.0 on every seed at a cell that val loss does not choose (MAD's pick).
- copying (`mad_selective_copying`), one run per seed with settings a and b:
  vanilla a 1, 1, 1 and b 0.8, 0.9, 1.0 -> 0.9, 0.95, 1.0 (b scores 1.0 at a cell not chosen);
  gla a 0.9, 0.9, 0.9 and b 0.9, 1.0, 0.8 -> 0.9, 0.95, 0.85; linear a = b = 0.2, 0.3, 0.4.
  linear has no recall runs, so no suite score.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import pytest
import yaml

from attn_lightning import compare
from attn_lightning.comparison.columns import comparison_rows
from attn_lightning.comparison.runs import load_runs
from attn_lightning.comparison.suite import (
    SUITE,
    Suite,
    natural_order,
    setting_accuracies,
    task_of,
)
from attn_lightning.comparison.suite_report import (
    recall_points,
    render_suite_csv,
    suite_rows,
    write_suite,
)
from attn_lightning.runs.record import update_record

T_975_2 = 4.302653  # t_{0.975, 2} from a printed table: three seeds
PNG = b"\x89PNG\r\n\x1a\n"
RECALL, COPYING = "mad_in_context_recall", "mad_selective_copying"
CELLS = [("0.001", "0.0"), ("0.001", "0.1"), ("0.003", "0.0"), ("0.003", "0.1")]
STATE_BYTES = {"vanilla": 4096, "gla": 1024, "linear": 1024}
# (variant, task, part override, chosen cell, {setting: per-seed accuracies at the chosen cell},
#  {cell: {setting: accuracy on every seed}} for cells not chosen that score above 0.1)
TABLE = [
    ("vanilla", RECALL, "data.vocab_size=16", CELLS[0], {"v16": [0.9, 1.0, 0.8]},
     {CELLS[3]: {"v16": 1.0}}),
    ("vanilla", RECALL, "data.vocab_size=32", CELLS[3], {"v32": [0.7, 0.8, 0.9]}, {}),
    ("vanilla", COPYING, None, CELLS[1], {"a": [1.0, 1.0, 1.0], "b": [0.8, 0.9, 1.0]},
     {CELLS[2]: {"a": 0.5, "b": 1.0}}),
    ("gla", RECALL, "data.vocab_size=16", CELLS[2], {"v16": [0.5, 0.6, 0.55]}, {}),
    ("gla", RECALL, "data.vocab_size=32", CELLS[2], {"v32": [0.4, 0.5, 0.45]}, {}),
    ("gla", COPYING, None, CELLS[0], {"a": [0.9, 0.9, 0.9], "b": [0.9, 1.0, 0.8]}, {}),
    ("linear", COPYING, None, CELLS[0], {"a": [0.2, 0.3, 0.4], "b": [0.2, 0.3, 0.4]}, {}),
]  # fmt: skip


def write_run(run_dir: Path, overrides: list[str], task: str, variant: str, metrics: dict) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    update_record(
        run_dir,
        status="completed",
        overrides=overrides,
        attention_option=variant,
        data_option=task,
        device="cpu",
        process="testhost:1",
        params=1000,
        step=100,
        decoding_state_bytes=STATE_BYTES[variant],
        decoding_state_context=64,
        metrics=metrics,
    )


def make_sweep(
    root: Path, table=TABLE, test_override=None, skip=(), cells=CELLS, macro=None
) -> Path:
    """The module docstring's sweep as run dirs under root: one per variant, part, cell (of
    `cells`) and seed. `test_override(variant, part, cell, seed, setting, value)`: a test
    accuracy to write instead; `skip`: (variant, part, seed) left out of every cell; `macro`:
    log MAD's macro accuracy too, this much below each micro one."""
    job = 0
    for variant, task, part, chosen, settings, others in table:
        for cell in cells:
            for index, seed in enumerate((1, 2, 3)):
                if (variant, part, seed) in skip:
                    continue
                lr, wd = cell
                accuracies = {
                    name: values[index] if cell == chosen else others.get(cell, {}).get(name, 0.1)
                    for name, values in settings.items()
                }
                if test_override is not None:
                    accuracies = {
                        name: test_override(variant, part, cell, seed, name, value)
                        for name, value in accuracies.items()
                    }
                metrics = {f"test_{name}/answer_token_acc": v for name, v in accuracies.items()}
                metrics["test/answer_token_acc"] = sum(accuracies.values()) / len(accuracies)
                if macro is not None:
                    metrics |= {
                        f"test_{n}/answer_macro_acc": v - macro for n, v in accuracies.items()
                    }
                metrics["val/loss"] = 1.0 + 0.01 * seed if cell == chosen else 5.0
                overrides = [f"attention={variant}", f"data={task}", *([part] if part else [])]
                overrides += [f"optim.lr={lr}", f"optim.weight_decay={wd}", f"seed={seed}"]
                write_run(root / str(job), overrides, task, variant, metrics)
                job += 1
    return root


def suite_of(root: Path) -> tuple[Suite, list]:
    runs = load_runs([root])
    rows = comparison_rows(runs)
    return Suite.of(runs, rows), rows


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("suite"))


def half_width(values: list[float]) -> float:
    """t_{0.975, n-1} s / sqrt(n), by hand, for three values."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return T_975_2 * sd / math.sqrt(len(values))


def welch_p_df4(a: list[float], b: list[float]) -> float:
    """Two-sided Welch p for two samples of 3 with equal variances (df = 4), from the closed
    form of Student's t with 4 degrees of freedom:
    P(T > t) = 1/2 - t (6 + t^2) / (2 (4 + t^2)^1.5)."""
    mean_a, mean_b = sum(a) / 3, sum(b) / 3
    var = sum((v - mean_a) ** 2 for v in a) / 2
    t = abs(mean_a - mean_b) / math.sqrt(2 * var / 3)
    return 2 * (0.5 - t * (6 + t * t) / (2 * (4 + t * t) ** 1.5))


def test_tasks_parts_and_variants(sweep: Path):
    suite, _ = suite_of(sweep)
    assert suite.tasks == (RECALL, COPYING)
    assert set(suite.variants) == {"attention=vanilla", "attention=gla", "attention=linear"}
    parts = suite.parts["attention=vanilla"][RECALL]
    assert [p.label for p in parts] == ["data.vocab_size=16", "data.vocab_size=32"]
    assert [len(p.result.arm.cells) for p in parts] == [4, 4]  # lr x weight decay
    assert [p.result.chosen.label for p in parts] == ["lr=0.001 wd=0.0", "lr=0.003 wd=0.1"]
    assert set(suite.parts["attention=linear"]) == {COPYING}


def test_task_and_suite_scores_with_intervals_by_hand(sweep: Path):
    suite, _ = suite_of(sweep)
    vanilla, gla = suite.ours["attention=vanilla"], suite.ours["attention=gla"]
    assert vanilla[RECALL].per_seed == pytest.approx({"1": 0.8, "2": 0.9, "3": 0.85})
    assert vanilla[RECALL].summary.mean == pytest.approx(0.85)
    assert vanilla[RECALL].summary.half_width == pytest.approx(half_width([0.8, 0.9, 0.85]))
    assert vanilla[RECALL].summary.half_width == pytest.approx(0.124207, abs=1e-6)
    assert vanilla[COPYING].per_seed == pytest.approx({"1": 0.9, "2": 0.95, "3": 1.0})
    # suite per seed: (0.8 + 0.9) / 2, (0.9 + 0.95) / 2, (0.85 + 1.0) / 2
    assert vanilla[SUITE].per_seed == pytest.approx({"1": 0.85, "2": 0.925, "3": 0.925})
    assert vanilla[SUITE].summary.mean == pytest.approx(0.9)
    assert vanilla[SUITE].summary.half_width == pytest.approx(half_width([0.85, 0.925, 0.925]))
    assert gla[RECALL].summary.mean == pytest.approx(0.5)
    assert gla[SUITE].per_seed == pytest.approx({"1": 0.675, "2": 0.75, "3": 0.675})
    linear = suite.ours["attention=linear"]
    assert linear[COPYING].summary.mean == pytest.approx(0.3)
    assert RECALL not in linear and linear[SUITE].summary is None  # no recall: no suite score
    assert suite.variants == ("attention=vanilla", "attention=gla", "attention=linear")


def test_marks_are_welch_against_the_best_holm_adjusted(sweep: Path):
    suite, _ = suite_of(sweep)
    vanilla, gla, linear = (suite.ours[f"attention={v}"] for v in ("vanilla", "gla", "linear"))
    assert vanilla[RECALL].verdict.mark == vanilla[COPYING].verdict.mark == "best"
    # recall: gla 0.45, 0.55, 0.5 against 0.8, 0.9, 0.85: one test, Holm leaves p as it is
    p = welch_p_df4([0.45, 0.55, 0.5], [0.8, 0.9, 0.85])
    assert gla[RECALL].verdict.welch_p == pytest.approx(p, rel=1e-6)
    assert gla[RECALL].verdict.holm_p == pytest.approx(p, rel=1e-6)
    assert gla[RECALL].verdict.mark == "worse" and p < 0.05
    # copying: gla 0.9, 0.95, 0.85 vs 0.9, 0.95, 1.0: t = 1.2247, df 4, p = 0.2879; linear's p
    # is tiny, so Holm multiplies it by 2 and gla's (the larger) by 1
    p_gla = welch_p_df4([0.9, 0.95, 0.85], [0.9, 0.95, 1.0])
    assert p_gla == pytest.approx(0.2879, abs=1e-4)
    assert gla[COPYING].verdict.holm_p == pytest.approx(p_gla, rel=1e-6)
    assert gla[COPYING].verdict.mark == "≈ best"
    assert linear[COPYING].verdict.holm_p == pytest.approx(2 * linear[COPYING].verdict.welch_p)
    assert linear[COPYING].verdict.mark == "worse"
    # the suite: vanilla 0.85, 0.925, 0.925 vs gla 0.675, 0.75, 0.675 (equal spread, df 4)
    p_suite = welch_p_df4([0.675, 0.75, 0.675], [0.85, 0.925, 0.925])
    assert gla[SUITE].verdict.welch_p == pytest.approx(p_suite, rel=1e-6)
    assert vanilla[SUITE].verdict.mark == "best" and gla[SUITE].verdict.mark == "worse"
    assert linear[SUITE].verdict.mark == ""  # no suite score, nothing to test


def test_mad_number_is_each_settings_best_cell_on_test(sweep: Path):
    suite, _ = suite_of(sweep)
    mad = suite.mad["attention=vanilla"]
    # v16 at its best test cell: 1.0 on every seed; v32 at the chosen cell: 0.7, 0.8, 0.9
    assert mad[RECALL].per_seed == pytest.approx({"1": 0.85, "2": 0.9, "3": 0.95})
    # copying: a at the chosen cell (1.0 beats 0.5), b at the other (1.0 beats 0.9 on average)
    assert mad[COPYING].per_seed == pytest.approx({"1": 1.0, "2": 1.0, "3": 1.0})
    assert mad[SUITE].summary.mean == pytest.approx((0.9 + 1.0) / 2)
    assert suite.mad["attention=gla"][RECALL].summary.mean == pytest.approx(0.5)  # = ours


def test_mad_number_uses_mads_macro_accuracy_where_logged(tmp_path: Path):
    suite, _ = suite_of(make_sweep(tmp_path, TABLE[:3], macro=0.05))
    mad = suite.mad["vanilla"]  # one variant: named by its attention
    # each setting's macro accuracy (0.05 below), at the same cells as the micro choice
    assert mad[RECALL].per_seed == pytest.approx({"1": 0.8, "2": 0.85, "3": 0.9})
    assert mad[COPYING].per_seed == pytest.approx({"1": 0.95, "2": 0.95, "3": 0.95})
    assert suite.ours["vanilla"][RECALL].per_seed == pytest.approx({"1": 0.8, "2": 0.9, "3": 0.85})


def test_the_choice_never_sees_test_metrics(tmp_path: Path):
    """Test accuracies of cells not chosen changed (to 1.0): the chosen cells and our scores
    stay put; MAD's number, chosen on test, moves."""
    suite, _ = suite_of(make_sweep(tmp_path / "a"))

    def boosted(variant, part, cell, seed, setting, value):
        chosen = next(row[3] for row in TABLE if row[0] == variant and row[2] == part)
        return value if cell == chosen else 1.0

    changed, _ = suite_of(make_sweep(tmp_path / "b", test_override=boosted))
    for variant in suite.variants:
        for task in suite.parts[variant]:
            before = [p.result.chosen.label for p in suite.parts[variant][task]]
            assert [p.result.chosen.label for p in changed.parts[variant][task]] == before
        for task, score in suite.ours[variant].items():
            assert changed.ours[variant][task].per_seed == score.per_seed
            assert changed.ours[variant][task].verdict == score.verdict
    assert changed.mad["attention=gla"][RECALL].summary.mean == pytest.approx(1.0)


def test_a_seed_missing_from_one_part_leaves_the_task_and_suite_without_it(tmp_path: Path):
    suite, _ = suite_of(make_sweep(tmp_path, skip={("gla", "data.vocab_size=32", 3)}))
    gla = suite.ours["attention=gla"]
    assert gla[RECALL].per_seed == pytest.approx({"1": 0.45, "2": 0.55})
    assert gla[COPYING].per_seed == pytest.approx({"1": 0.9, "2": 0.95, "3": 0.85})
    assert list(gla[SUITE].per_seed) == ["1", "2"]


def test_a_run_without_a_record_or_task_costs_no_task(tmp_path: Path):
    """A job killed before it started: no summary.json, no `data=` override to name its task."""
    make_sweep(tmp_path, TABLE[-2:])
    (tmp_path / "killed" / ".hydra").mkdir(parents=True)
    killed = ["attention=gla", "optim.lr=0.001", "optim.weight_decay=0.0", "seed=4"]
    (tmp_path / "killed" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(killed))
    suite, _ = suite_of(tmp_path)
    assert suite.tasks == (COPYING,)
    assert suite.ours["attention=gla"][SUITE].summary.mean == pytest.approx(0.9)


def test_parts_sharing_a_setting_name_are_told_apart(tmp_path: Path):
    """MAD's variations of a task all log their one setting by length (`L128`)."""
    renamed = [(*row[:4], {"L128": next(iter(row[4].values()))}, {}) for row in TABLE[:2]]
    suite, _ = suite_of(make_sweep(tmp_path, renamed))
    assert suite.variants == ("vanilla",)  # one variant: named by its attention
    settings = suite.settings("vanilla", RECALL)
    assert list(settings) == ["data.vocab_size=16 L128", "data.vocab_size=32 L128"]
    assert suite.ours["vanilla"][RECALL].per_seed == pytest.approx({"1": 0.8, "2": 0.9, "3": 0.85})


def test_settings_task_and_recall_points(sweep: Path):
    suite, rows = suite_of(sweep)
    run = load_runs([sweep / "0"])[0]
    assert task_of(run) == RECALL and setting_accuracies(run) == {"v16": 0.9}
    settings = suite.settings("attention=vanilla", RECALL)
    assert list(settings) == ["v16", "v32"]  # unique: no part prefix
    assert settings["v32"].mean == pytest.approx(0.8)
    points, errors, contexts = recall_points(suite, rows)
    assert set(points) == {f"in_context_recall · {v}" for v in ("vanilla", "gla")}
    vanilla = points["in_context_recall · vanilla"]
    assert vanilla.x == pytest.approx(4.0) and vanilla.quality == pytest.approx(0.85)
    assert errors["in_context_recall · vanilla"] == pytest.approx(0.124207, abs=1e-6)
    assert contexts == [64]


def test_suite_md_and_csv(sweep: Path):
    runs = load_runs([sweep])
    files = write_suite(runs, comparison_rows(runs), sweep, [str(sweep)])
    assert [f.name for f in files] == [
        "suite.csv", "suite.md", "suite_heatmap.png", "recall_vs_state.png"
    ]  # fmt: skip
    for figure in files[2:]:
        assert figure.read_bytes().startswith(PNG)
    text = (sweep / "suite.md").read_text()
    lines = text.splitlines()
    header = f"| variant | {RECALL} | {COPYING} | suite |"
    table = lines[lines.index(header) :]
    assert table[2] == (
        "| attention=vanilla | 0.850 ± 0.124, best | 0.950 ± 0.124, best | 0.900 ± 0.108, best |"
    )
    assert table[4].startswith("| attention=linear |  | 0.300 ± 0.248, worse |  |")
    assert "Machine: cpu (host testhost)" in text and "Seeds: 1, 2, 3" in text
    assert "lr=0.001 wd=0.0, lr=0.001 wd=0.1, lr=0.003 wd=0.0, lr=0.003 wd=0.1" in text
    rows = list(csv.DictReader(io.StringIO((sweep / "suite.csv").read_text())))
    ours = {(r["variant"], r["task"]): r for r in rows if r["kind"] == "ours"}
    suite_row = ours[("attention=vanilla", SUITE)]
    assert float(suite_row["mean"]) == pytest.approx(0.9) and suite_row["n"] == "3"
    assert ours[("attention=vanilla", RECALL)]["cells"] == (
        "data.vocab_size=16: lr=0.001 wd=0.0 (edge); data.vocab_size=32: lr=0.003 wd=0.1 (edge)"
    )
    mad = {(r["variant"], r["task"]): r for r in rows if r["kind"] == "mad"}
    assert float(mad[("attention=vanilla", RECALL)]["mean"]) == pytest.approx(0.9)


def test_compare_cli_writes_the_suite_beside_the_comparison(tmp_path: Path, capsys):
    """A small sweep (the comparison draws figures per run): linear and gla on copying."""
    make_sweep(tmp_path, [row for row in TABLE if row[0] != "vanilla"][-2:], cells=CELLS[:1])
    files = compare.main([str(tmp_path)])
    names = {f.name for f in files}
    assert {"suite.md", "suite.csv", "suite_heatmap.png", "recall_vs_state.png"} <= names
    assert {"comparison.md", "protocol.md"} <= names  # the comparison's own files stay
    lines = (tmp_path / "suite.md").read_text().splitlines()
    assert "| attention=gla | 0.900 ± 0.124, best | 0.900 ± 0.124, best |" in lines
    capsys.readouterr()


def test_a_sweep_without_settings_gets_no_suite_files(tmp_path: Path):
    write_run(tmp_path / "0", ["attention=vanilla"], "shakespeare", "vanilla", {"val/loss": 1.5})
    runs = load_runs([tmp_path])
    assert write_suite(runs, comparison_rows(runs), tmp_path, [str(tmp_path)]) == []
    suite, _ = suite_of(make_sweep(tmp_path / "s"))
    assert render_suite_csv(suite_rows(suite)).splitlines()[0].startswith("variant,task,kind")


def test_settings_are_listed_in_natural_order() -> None:
    names = ["L128", "L32", "L64_d12p5", "L64_d100", "L64_d0"]
    assert sorted(names, key=natural_order) == ["L32", "L64_d0", "L64_d12p5", "L64_d100", "L128"]
