"""`bench gpu`: it refuses what it cannot measure in one line, and a part that fails does not
cost the others their figures (a device run is too scarce to lose to one broken part)."""

from __future__ import annotations

import pytest
import torch

from attn_lightning.bench.gpu import main


def run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_a_cuda_device_it_stops_in_one_line(capsys) -> None:
    code, _, err = run([], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("error: bench gpu needs a CUDA device") and "--device cpu --smoke" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cpu"], "--device cpu runs only with --smoke"),
        (["--device", "cpu", "--smoke", "--parts", "model,kernels"], "--parts: unknown kernels"),
    ],
)
def test_bad_settings_are_one_line(args, message, capsys) -> None:
    code, _, err = run(args, capsys)
    assert code == 2 and err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_failing_part_leaves_the_others_their_figures(tmp_path, capsys) -> None:
    missing = tmp_path / "no_such_text.txt"
    args = ["--device", "cpu", "--smoke", "--output-dir", str(tmp_path), f"data.path={missing}"]
    code, out, err = run(args, capsys)
    assert code == 2 and err.strip().endswith("part(s) failed: model (their errors above)")
    assert "model: failed:" in out and str(missing) in out  # its reason, in a line
    assert "Traceback" not in err  # a user error: no traceback
    rows = (tmp_path / "attention" / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2  # the header, then vanilla and linear at two lengths each
    assert "fla: skipped (its Triton kernels need CUDA)" in out
