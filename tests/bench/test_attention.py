"""The attention benchmark: its figures mean what they say, failures are recorded and the sweep
goes on, the fits recover known slopes, and the CLI rejects bad input without a traceback."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import pytest
import torch
from helpers import REPO_ROOT

from attn_lightning.analysis.scaling import crossover_length, fit_points, scaling_exponent
from attn_lightning.attention.registry import variant_names
from attn_lightning.bench.attention import main
from attn_lightning.bench.attention.memory_ledger import StorageLedger
from attn_lightning.bench.attention.report import write_outputs
from attn_lightning.bench.attention.settings import Settings
from attn_lightning.bench.attention.sweep import run
from attn_lightning.errors import UserError

TINY = {"batch_size": 1, "heads": 2, "head_dim": 8, "repeats": 1, "warmup": 0}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """vanilla, linear and a Performer with many random features at T = 16, 32."""
    settings = Settings(
        variants=("vanilla", "linear", "performer"),
        lengths=(16, 32),
        options={"performer": {"nb_features": 4096}},
        **TINY,
    )
    results = run(settings)
    out = tmp_path_factory.mktemp("bench")
    return settings, results, write_outputs(settings, results, out)


def _rows(results, variant):
    return [r for r in results if r.variant == variant]


def test_csv_reads_back_a_row_per_variant_and_length_with_its_figures(sweep):
    settings, results, paths = sweep
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], int(r["length"])) for r in rows] == [
        (v, n) for n in (16, 32) for v in ("vanilla", "linear", "performer")
    ]
    measured = {(r.variant, r.length): r for r in results}
    for row in rows:
        result = measured[row["variant"], int(row["length"])]
        assert row["status"] == "ok"
        for figure in ("time_ms", "memory_mib", "output_cosine", "matrix_cosine"):
            value = float(row[figure])
            assert math.isfinite(value) and value > 0
            assert value == pytest.approx(getattr(result, figure), rel=1e-12)
        shape = (int(row["batch_size"]), int(row["heads"]), int(row["head_dim"]))
        assert shape == (settings.batch_size, settings.heads, settings.head_dim)
        assert (row["dtype"], row["device"]) == ("float32", "cpu")


def test_vanilla_against_itself_is_exact(sweep):
    for r in _rows(sweep[1], "vanilla"):
        assert r.output_cosine == pytest.approx(1.0, abs=1e-5)
        assert r.matrix_cosine == pytest.approx(1.0, abs=1e-5)


def test_performer_with_many_features_approximates_softmax(sweep):
    for r in _rows(sweep[1], "performer"):  # measured: 0.98 and 0.95 (0.71-0.82 at 17 features)
        assert r.output_cosine > 0.9 and r.matrix_cosine > 0.9


def test_a_core_with_n_h_keys_per_token_is_timed_without_a_softmax_to_compare():
    """gated_deltaproduct's k and v hold n_h sub-steps per token: it runs on leaves of its
    split_heads' shapes, and its cosines to causal softmax are NaN (no keys in common)."""
    settings = Settings(variants=("gated_deltaproduct",), lengths=(16,), **TINY)
    (result,) = run(settings)
    assert result.status == "ok" and result.time_ms > 0 and result.memory_mib > 0
    assert math.isnan(result.output_cosine) and math.isnan(result.matrix_cosine)


def test_linear_attention_computes_a_different_function(sweep):
    for r in _rows(sweep[1], "linear"):  # measured: about 0.75
        assert r.output_cosine < 0.9 and r.matrix_cosine < 0.9


def test_markdown_and_pngs_are_written(sweep):
    _, _, paths = sweep
    markdown = paths["markdown"].read_text()
    assert "| vanilla |" in markdown and "faster than vanilla" in markdown
    for key in ("time", "memory"):
        assert paths[key].read_bytes().startswith(PNG_SIGNATURE)


def test_a_timeout_skips_longer_lengths_and_the_sweep_goes_on():
    settings = Settings(variants=("vanilla", "linear"), lengths=(16, 32), time_limit=0.0, **TINY)
    statuses = [(r.variant, r.length, r.status) for r in run(settings)]
    assert statuses == [
        ("vanilla", 16, "timeout"),
        ("linear", 16, "timeout"),
        ("vanilla", 32, "skipped"),
        ("linear", 32, "skipped"),
    ]


def test_an_error_is_recorded_and_other_variants_still_run():
    settings = Settings(
        variants=("linformer", "vanilla"),
        lengths=(16, 32),
        options={"linformer": {"num_segments": 3}},  # divides neither length
        **TINY,
    )
    results = run(settings)
    assert all(r.status.startswith("error: ConfigError") for r in _rows(results, "linformer"))
    assert all(r.ok for r in _rows(results, "vanilla"))


def test_an_estimated_oom_refuses_the_length_without_running_it():
    settings = Settings(variants=("vanilla",), lengths=(16, 32), max_memory=1.0, **TINY)
    assert [r.status for r in run(settings)] == ["oom (estimated)", "skipped"]


def test_the_memory_ledger_counts_allocations_not_views():
    T = 64
    x = torch.randn(2, T, T)
    with StorageLedger() as ledger:
        y = x.exp()  # 2*T*T floats
        views = y.transpose(-1, -2), y.view(-1)  # views: no new memory
        z = y.softmax(-1)  # another 2*T*T floats
        del y, views  # frees y's storage
    assert ledger.peak == 2 * (2 * T * T * 4)
    assert ledger.live == 2 * T * T * 4
    del z


def test_exponent_fit_recovers_a_known_slope():
    lengths = [128 * 2**i for i in range(7)]
    assert scaling_exponent(lengths, [3e-9 * n**2 for n in lengths]) == pytest.approx(2.0)
    # A fixed overhead flattens the short end (1.91 over all points); the upper half, fitted,
    # still shows the slope.
    with_overhead = [1 + 1e-4 * n**2 for n in lengths]
    assert [n for n, _ in fit_points(lengths, with_overhead)] == lengths[3:]
    assert scaling_exponent(lengths, with_overhead) == pytest.approx(2.0, abs=0.01)
    assert scaling_exponent([128], [1.0]) is None
    assert scaling_exponent(lengths, [math.nan] * 6 + [1.0]) is None


def test_crossover_is_the_first_length_from_which_it_stays_faster():
    lengths = [128, 256, 512, 1024]
    assert crossover_length(lengths, [2, 1, 3, 1], [1, 2, 2, 2]) == 1024
    assert crossover_length(lengths, [2, 1, 1, 1], [1, 2, 2, 2]) == 256
    assert crossover_length(lengths, [2, 2, 2, 2], [1, 1, 1, 1]) is None
    # vanilla did not finish at 1024: the variant that did is faster there
    assert crossover_length(lengths, [2, 2, 1, 1], [1, 1, 2, None]) == 512
    assert crossover_length(lengths, [2, 2, 1, None], [1, 1, 2, 3]) is None


def test_bad_settings_raise_user_errors():
    with pytest.raises(UserError, match="must be positive"):
        Settings(variants=("vanilla",), lengths=(16, 0)).validate()
    with pytest.raises(UserError, match="nb_features, redraw_interval"):
        Settings(variants=("performer",), lengths=(16,), options={"performer": {"x": 1}}).validate()


def test_cli_rejects_non_positive_lengths(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--lengths", "128,-4"])
    assert exit_info.value.code == 2
    assert "error: sequence lengths must be positive" in capsys.readouterr().err


def test_cli_unknown_variant_lists_the_valid_ones_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "attn_lightning.bench", "attention", "--variants", "vanilla,nope"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown attention variant(s) nope")
    assert all(name in result.stderr for name in variant_names())
    assert "Traceback" not in result.stderr
