"""`bench kernels`: our Performer computes performer-pytorch's function (when installed), the
table's ratio is ours over theirs from medians, a tiny race prints every core, and bad input is
one line and exit 2."""

from __future__ import annotations

import pytest
import torch

from attn_lightning.attention.registry import build_attention
from attn_lightning.bench import _kernel_references as refs
from attn_lightning.bench.attention.sweep import row_cosine
from attn_lightning.bench.kernels import Entry, main, table


def test_our_performer_given_performer_pytorchs_projection_computes_its_function() -> None:
    pytest.importorskip("performer_pytorch")
    torch.manual_seed(0)
    B, H, T, D = 2, 2, 200, 16
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    _, projection = refs.performer_pytorch(D, None, seed=0)
    ours = build_attention(
        "performer", n_embd=H * D, n_head=H, block_size=T, nb_features=projection.size(0)
    )
    ours.projection.copy_(projection)
    with torch.no_grad():
        ours_out = ours.attend(q, k, v)
        theirs = refs.performer_pytorch_without_stabiliser(projection)(q, k, v)
    assert row_cosine(ours_out, theirs) >= 0.999
    assert row_cosine(ours_out, v) < 0.9  # not a trivial agreement: attention mixes the values


def test_ratios_are_of_the_medians_ours_over_theirs_and_over_the_first_entry() -> None:
    sdpa = Entry("SDPA (is_causal)", lambda: None, seconds=[0.8, 0.9, 0.7])
    ours = Entry("ours: linear", lambda: None, seconds=[0.1, 0.3, 0.2])
    theirs = Entry("theirs", lambda: None, versus="ours: linear", cosine=0.99999, seconds=[0.4])
    rows = [[c.strip() for c in row.split("|")] for row in table([sdpa, ours, theirs]).splitlines()]
    assert rows[0][3] == "/ SDPA (is_causal)"
    assert rows[3][1:4] == ["ours: linear", "200.0", "0.250"]  # 200 ms / 800 ms
    assert rows[4][3:7] == ["0.500", "ours: linear", "0.5", "0.99999"]  # 400 / 800; 200 / 400


def test_a_tiny_race_prints_a_row_per_core(capsys) -> None:
    tiny = ["--length", "16", "--batch-size", "1", "--head-dim", "8", "--heads", "2"]
    main(["--variants", "linear,retention", *tiny, "--repeats", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert rows[:5] == ["core", "---", "SDPA (is_causal)", "ours: linear", "ours: retention"]
    for line in out.splitlines()[4:]:  # the rows after the header
        if line.startswith("| "):
            assert float(line.split("|")[2].replace(",", "")) > 0  # a measured time


def test_a_core_shaping_its_own_k_and_v_races_on_leaves_of_those_shapes(capsys) -> None:
    """gated_deltaproduct's k and v hold n_h sub-steps per token, gqa's fewer heads: each
    core gets leaves shaped as its split_heads gives them."""
    tiny = ["--length", "16", "--batch-size", "1", "--head-dim", "8", "--heads", "2"]
    main(["--variants", "gated_deltaproduct,gqa", *tiny, "--repeats", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert rows[3:5] == ["ours: gated_deltaproduct", "ours: gqa"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--variants", "lineer"], "--variants: unknown lineer"),
        (["--length", "0"], "--length must be >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1
