"""The comparison protocol on a small hand-made sweep: arms, the learning rate chosen on
validation (never on test), means and t-intervals computed by hand, Welch marks, one seed
without an interval, arms.csv and protocol.md, the seed band of the figures."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from attn_lightning.comparison.arms import group_arms, override_key
from attn_lightning.comparison.columns import comparison_rows, differences
from attn_lightning.comparison.protocol import Protocol
from attn_lightning.comparison.protocol_plots import seed_band
from attn_lightning.comparison.protocol_report import (
    PROTOCOL_FIGURES,
    arm_rows,
    render_arms_csv,
    render_protocol_markdown,
    write_protocol,
)
from attn_lightning.comparison.report import render_markdown
from attn_lightning.comparison.runs import Run
from attn_lightning.runs.record import RunRecord

T_975_2 = 4.302653  # t_{0.975, 2} from a printed table: three seeds


def run(
    label: str, attention: str, lr: str, seed: int, val: float, test: float, status="completed"
):
    record = RunRecord(
        status=status,
        attention_option=attention,
        params=1000,
        step=100,
        metrics={"val/loss": val, "test/loss": test},
        comparable={"trainer.max_steps": 100, "seed": seed, "data.seed": seed},
    )
    overrides = [f"attention={attention}", f"optim.lr={lr}", f"seed={seed}", "trainer=cpu"]
    return Run(label, Path(label), record, overrides)


def sweep() -> list[Run]:
    """vanilla: lr 0.003 has the lower val loss (2.0 vs 2.1) but the worse test loss (3.0 vs
    1.1): chosen on validation it is 0.003, and its test losses are 2, 3, 4 (mean 3, sd 1).
    linear: its lr 0.003 has a lower val loss on the one seed that completed; the complete rate
    0.001 is chosen (test 3, 4, 5). gla: one seed. performer: far worse, little spread."""
    runs = []
    table = [
        ("vanilla", "0.001", [2.0, 2.1, 2.2], [1.0, 1.1, 1.2]),
        ("vanilla", "0.003", [1.9, 2.0, 2.1], [2.0, 3.0, 4.0]),
        ("linear", "0.001", [2.5, 2.6, 2.7], [3.0, 4.0, 5.0]),
        ("linear", "0.003", [1.0, 9.0, 9.0], [1.0, 9.0, 9.0]),
        ("performer", "0.001", [8.0, 8.1, 8.2], [8.0, 8.1, 8.2]),
    ]
    for attention, lr, vals, tests in table:
        for seed, (val, test) in enumerate(zip(vals, tests, strict=True), start=1):
            failed = attention == "linear" and lr == "0.003" and seed > 1
            status = "failed" if failed else "completed"
            runs.append(run(str(len(runs)), attention, lr, seed, val, test, status))
    runs.append(run(str(len(runs)), "gla", "0.001", 1, 9.0, 10.0))
    return runs


def results(runs: list[Run]) -> tuple[Protocol, dict[str, dict]]:
    protocol = Protocol.of(runs, comparison_rows(runs))
    return protocol, {row["arm"]: row for row in arm_rows(protocol)}


def test_arms_are_the_overrides_apart_from_seed_and_learning_rate():
    arms = {a.label: a for a in group_arms(sweep())}
    assert list(arms) == ["attention=vanilla", "attention=linear", "attention=performer",
                          "attention=gla"]  # fmt: skip
    assert [c.lr for c in arms["attention=vanilla"].cells] == ["0.001", "0.003"]
    assert [len(c.runs) for c in arms["attention=vanilla"].cells] == [3, 3]
    assert override_key("++optim.lr=0.1") == "optim.lr"


def test_learning_rate_is_chosen_on_validation_never_on_test():
    _, rows = results(sweep())
    vanilla = rows["attention=vanilla"]
    assert vanilla["lr"] == "0.003"  # val 2.0 < 2.1, although its test (3.0) is worse than 1.1
    assert vanilla["val_loss"].mean == pytest.approx(2.0)
    assert vanilla["test_loss"].mean == pytest.approx(3.0)  # the test of the chosen rate


def test_a_rate_with_failed_seeds_is_not_chosen_over_a_complete_one():
    _, rows = results(sweep())
    linear = rows["attention=linear"]
    assert linear["lr"] == "0.001" and linear["seeds"] == "3"
    assert linear["lr_chosen_among_complete"] is True


def test_intervals_and_welch_marks_by_hand():
    protocol, rows = results(sweep())
    vanilla, linear = rows["attention=vanilla"], rows["attention=linear"]
    # test 2, 3, 4: mean 3, sd 1, half width t_{0.975,2} / sqrt(3) = 2.4841
    assert vanilla["test_loss"].half_width == pytest.approx(T_975_2 / 3**0.5, abs=1e-5)
    assert vanilla["test_loss"].half_width == pytest.approx(2.4841, abs=1e-4)
    # val 1.9, 2.0, 2.1: sd 0.1, half width 0.24841
    assert vanilla["val_loss"].half_width == pytest.approx(0.24841, abs=1e-5)
    assert protocol.ranked == "test_loss" and vanilla["vs_best"] == "best"
    # linear 3, 4, 5 vs best 2, 3, 4: t = 1 / sqrt(2/3) = 1.2247, df = 4; the nu = 4 closed form
    # at t^2 = 1.5 gives P(T > t) = 0.5 - 1.2247 * 7.5 / (2 * 5.5^1.5) = 0.14393: p = 0.2879
    assert linear["vs_best"] == "≈ best" and linear["welch_p"] == pytest.approx(0.2879, abs=1e-4)
    # performer 8.0, 8.1, 8.2 vs 2, 3, 4: t = 5.1 / sqrt(1/3 + 0.01/3) = 8.790, df = 2.04
    performer = protocol.verdicts["attention=performer"].test
    assert performer.t == pytest.approx(8.790, abs=1e-3)
    assert performer.df == pytest.approx(2.0400, abs=1e-3)
    assert rows["attention=performer"]["vs_best"] == "worse"
    assert rows["attention=performer"]["welch_p"] < 0.05
    assert [r["arm"] for r in arm_rows(protocol)] == [
        "attention=vanilla", "attention=linear", "attention=performer", "attention=gla"
    ]  # fmt: skip


def test_worse_is_decided_on_holm_adjusted_p_values():
    """Two arms each significantly worse than the best on its own (Welch p ~0.033 and ~0.037)
    are not, read together: Holm multiplies the smaller p by the 2 arms tested (> 0.05), and
    the larger takes that value too (the step-down is monotone)."""
    best = [2.0, 3.0, 4.0]
    table = {"vanilla": best, "linear": [4.6, 5.6, 6.6], "performer": [4.5, 5.5, 6.5]}
    runs = [
        run(f"{name}{seed}", name, "0.001", seed, val=test, test=test)
        for name, tests in table.items()
        for seed, test in enumerate(tests, start=1)
    ]
    protocol, rows = results(runs)
    raw = {name: rows[f"attention={name}"]["welch_p"] for name in ("linear", "performer")}
    # linear: t = 2.6 / sqrt(2/3) = 3.184, df = 4 (closed form: p = 0.0334)
    assert raw["linear"] == pytest.approx(0.0334, abs=2e-4) and raw["performer"] < 0.05
    for name in ("linear", "performer"):
        row = rows[f"attention={name}"]
        assert row["holm_p"] == pytest.approx(2 * raw["linear"])
        assert row["vs_best"] == "≈ best"  # "worse" without the correction
    text = render_protocol_markdown(protocol, arm_rows(protocol), ["sweep"])
    assert "Holm-adjusted over the 2 arms tested" in text and "| Holm p |" in text


def test_an_arm_with_one_seed_shows_no_interval():
    protocol, rows = results(sweep())
    gla = rows["attention=gla"]
    assert gla["test_loss"].n == 1 and gla["test_loss"].half_width is None
    assert gla["vs_best"] == "untested: one seed" and gla["welch_p"] is None
    table = arm_rows(protocol)
    text = render_protocol_markdown(protocol, table, ["sweep"])
    line = next(line for line in text.splitlines() if line.startswith("| attention=gla "))
    assert "10.0000 (n=1)" in line and "±" not in line
    vanilla = next(line for line in text.splitlines() if line.startswith("| attention=vanilla "))
    assert "3.0000 ± 2.4841" in vanilla and "| best |" in vanilla
    assert "Welch's two-sided t-test" in text and "test loss" in text
    parsed = {r["arm"]: r for r in csv.DictReader(io.StringIO(render_arms_csv(table)))}
    assert parsed["attention=gla"]["test_loss_mean"] == "10.0"
    assert parsed["attention=gla"]["test_loss_ci95"] == ""  # no fake interval
    assert parsed["attention=gla"]["test_loss_n"] == "1"
    assert float(parsed["attention=vanilla"]["test_loss_ci95"]) == pytest.approx(2.4841, abs=1e-4)


def test_ranked_on_validation_when_no_arm_was_tested():
    runs = [r for r in sweep() if r.record.attention_option in ("vanilla", "linear")]
    for r in runs:
        del r.record.metrics["test/loss"]
    protocol, rows = results(runs)
    assert protocol.ranked == "val_loss"
    assert rows["attention=vanilla"]["vs_best"] == "best"  # val 2.0 vs linear's 2.6


def test_seeds_of_a_seed_sweep_are_not_flagged_as_unlike():
    runs = sweep()
    flags, differing = differences(runs)
    assert "seed" not in differing and "data.seed" not in differing
    assert not any(flags.values())
    for r in runs:  # the same runs without seed overrides: different seeds are a flaw again
        r.overrides = [o for o in r.overrides if not o.startswith("seed=")]
    assert "seed" in differences(runs)[1]


def test_a_sweep_writes_the_protocol_files(tmp_path: Path):
    runs = sweep()
    rows = comparison_rows(runs)
    written = {p.name for p in write_protocol(runs, rows, tmp_path, ["sweep"])}
    assert written == {"protocol.md", "arms.csv", *PROTOCOL_FIGURES}
    for name in PROTOCOL_FIGURES:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "[protocol.md](protocol.md)" in render_markdown(runs, rows, ["sweep"])


def test_seed_band_by_hand():
    # two seeds at the steps both logged: mean 2 and 3, sd sqrt(2), half width
    # t_{0.975,1} * sqrt(2) / sqrt(2) = 12.7062; one seed: no band
    steps, mean, low, high = seed_band([[(0, 1.0), (10, 2.0)], [(0, 3.0), (10, 4.0), (20, 5.0)]])
    assert steps == [0, 10] and mean == pytest.approx([2.0, 3.0])
    assert high == pytest.approx([2.0 + 12.7062, 3.0 + 12.7062], abs=1e-3)
    assert low == pytest.approx([2.0 - 12.7062, 3.0 - 12.7062], abs=1e-3)
    assert seed_band([[(0, 1.0), (5, 2.0)]]) == ([0, 5], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0])


def test_a_rate_chosen_at_the_edge_of_the_grid_is_flagged():
    """In the sweep, vanilla's chosen 0.003 and linear's 0.001 are the ends of a two-rate grid;
    with a three-rate grid whose middle rate wins, nothing is flagged."""
    protocol, rows = results(sweep())
    text = render_protocol_markdown(protocol, list(rows.values()), ["sweep"])
    assert "Chosen at the edge of the grid**: attention=vanilla, attention=linear." in text
    middle = [
        run(str(i), "vanilla", lr, seed, val, 1.0)
        for i, (lr, seed, val) in enumerate(
            (lr, seed, val + seed / 100)
            for lr, val in (("0.001", 2.0), ("0.002", 1.5), ("0.003", 2.5))
            for seed in (1, 2)
        )
    ]
    protocol, rows = results(middle)
    (only,) = rows.values()
    assert only["lr"] == "0.002"
    assert "edge of the grid" not in render_protocol_markdown(protocol, list(rows.values()), [])
