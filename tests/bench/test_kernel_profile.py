"""`bench kernels --profile`: the matmul work is counted in full (in-place products and the
triangular solve included), the time of a matmul-only call lands in the matmul group, and the
limits are that work at the given rates."""

from __future__ import annotations

import torch

from attn_lightning.bench._kernel_profile import Breakdown, breakdown_table, profile_call


def test_in_place_products_and_the_triangular_solve_are_counted() -> None:
    a, b, out = torch.randn(8, 16, 4), torch.randn(8, 4, 32), torch.randn(8, 16, 32)
    triangle, rhs = torch.eye(16).expand(8, 16, 16), torch.randn(8, 16, 5)

    def call() -> None:
        torch.bmm(a, b)  # 2 * 8*16*4*32 = 32,768
        out.baddbmm_(a, b)  # 32,768 more
        torch.mm(a[0], b[0]).addmm_(a[1], b[1])  # 2 * 16*4*32 = 4,096 each
        torch.linalg.solve_triangular(triangle, rhs, upper=False)  # 8 * 16² * 5 = 10,240

    assert profile_call(call).gflop * 1e9 == 32_768 * 2 + 4_096 * 2 + 10_240


def test_a_large_product_spends_its_time_in_the_matmul_group() -> None:
    a = torch.randn(512, 512)
    breakdown = profile_call(lambda: torch.mm(a, a))
    assert breakdown.matmul_ms > 0.8 * breakdown.total_ms
    assert breakdown.layout_ms < breakdown.matmul_ms


def test_the_limits_are_the_work_at_the_measured_rates() -> None:
    rows = [("ours: linear", 200.0, Breakdown(60.0, 10.0, 20.0, 10.0, gflop=5.0))]
    cells = [
        c.strip()
        for c in breakdown_table(rows, peak=100.0, chunked=25.0).splitlines()[2].split("|")
    ]
    # ms, shares of the 100 ms profiled, GFLOP, achieved 5 GFLOP / 0.2 s, 5 / 100, 5 / 25 (in ms)
    assert cells[2:] == ["200.0", "60%", "10%", "20%", "10%", "5.00", "25", "50.0", "200.0", ""]
