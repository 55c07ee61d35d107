"""Quality against decoding-state size and against training throughput: which quality a sweep
is judged by, and that each run is drawn where its values put it."""

from __future__ import annotations

from attn_lightning.comparison.tradeoff_plots import (
    STATE_FIGURE,
    THROUGHPUT_FIGURE,
    quality_column,
    quality_vs_width,
    tradeoff_figures,
    width_of,
)


def row(job: str, attention: str, kib: float | None, tokens: float | None, **quality) -> dict:
    return {
        "job": job,
        "attention": attention,
        "decoding_state_kib": kib,
        "decoding_state_context": 64,
        "tokens_per_sec_median": tokens,
        "val_loss": None,
        "val_answer_token_acc": None,
        "val_exact_match": None,
    } | quality


ROWS = [
    row("0", "vanilla", 256.0, 1000.0, val_loss=1.9, val_answer_token_acc=0.99),
    row("1", "vanilla", 256.0, 1100.0, val_loss=1.95, val_answer_token_acc=0.97),
    row("2", "linear", 66.0, 3000.0, val_loss=2.3, val_answer_token_acc=0.4),
    row("3", "deltanet", None, None),  # failed: no record values
]
LABELS = {r["job"]: f"run{r['job']}" for r in ROWS}


def points(fig) -> dict[tuple[float, float], str]:
    """Every drawn point -> the legend entry (variant) of its series."""
    (ax,) = fig.axes
    drawn = {}
    for series in ax.collections:
        for x, y in series.get_offsets():
            drawn[(float(x), float(y))] = series.get_label()
    return drawn


def test_task_accuracy_is_the_quality_when_a_run_logged_it_else_val_loss():
    assert quality_column(ROWS)[0] == "val_answer_token_acc"
    no_accuracy = [r | {"val_answer_token_acc": None} for r in ROWS]
    assert quality_column(no_accuracy)[0] == "val_loss"


def test_state_figure_puts_each_run_at_its_state_size_on_a_log_axis():
    fig = tradeoff_figures(ROWS, LABELS)[STATE_FIGURE]
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert points(fig) == {
        (256.0, 0.99): "vanilla",
        (256.0, 0.97): "vanilla",
        (66.0, 0.4): "linear",
    }
    assert "KiB per sequence at T=64" in ax.get_xlabel()
    assert "accuracy" in ax.get_ylabel()
    assert "no data: run3" in fig.get_supxlabel()


def test_throughput_figure_puts_each_run_at_its_tokens_per_second():
    fig = tradeoff_figures(ROWS, LABELS)[THROUGHPUT_FIGURE]
    assert points(fig) == {
        (1000.0, 0.99): "vanilla",
        (1100.0, 0.97): "vanilla",
        (3000.0, 0.4): "linear",
    }


def test_no_values_give_a_note_not_an_empty_axis():
    fig = tradeoff_figures([ROWS[3]], LABELS)[STATE_FIGURE]
    (ax,) = fig.axes
    assert not ax.collections
    assert any("No run has both values" in t.get_text() for t in ax.texts)


def test_width_figure_is_each_variants_mean_test_accuracy_per_width():
    """Zoology's Figure 2: two seeds of vanilla at width 64 (0.9, 1.0) draw their mean 0.95;
    the width comes from the command line (`model.n_embd=`), test accuracy over val."""
    table = [
        ("0", "vanilla", 32, 0.5),
        ("1", "vanilla", 64, 0.9),
        ("2", "vanilla", 64, 1.0),
        ("3", "linear", 32, 0.1),
        ("4", "linear", 64, 0.3),
    ]
    rows = [
        row(job, variant, None, None, val_answer_token_acc=0.0, test_answer_token_acc=acc)
        for job, variant, _, acc in table
    ]
    overrides = {job: ["seed=1", f"model.n_embd={width}"] for job, _, width, _ in table}
    widths = {job: width_of(o) for job, o in overrides.items()}
    assert widths == {"0": 32, "1": 64, "2": 64, "3": 32, "4": 64}
    (ax,) = quality_vs_width(rows, widths).axes
    lines = {line.get_label(): list(zip(*line.get_data(), strict=True)) for line in ax.lines}
    assert lines == {"vanilla": [(32, 0.5), (64, 0.95)], "linear": [(32, 0.1), (64, 0.3)]}
    assert ax.get_xscale() == "log" and "test answer" in ax.get_ylabel()


def test_width_figure_without_a_width_sweep_says_so():
    (ax,) = quality_vs_width(ROWS, {r["job"]: None for r in ROWS}).axes
    assert not ax.lines and "No sweep over model.n_embd" in ax.texts[0].get_text()
