"""Peak memory is the run's own: a sweep's later jobs do not inherit earlier jobs' peaks."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from attn_lightning.callbacks.memory import peak_rss_mib, reset_peak_rss


@pytest.mark.skipif(sys.platform != "linux", reason="the RSS peak can be reset on Linux only")
def test_reset_forgets_an_earlier_peak():
    big = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    big_peak = peak_rss_mib()
    del big
    assert reset_peak_rss()
    assert peak_rss_mib() < big_peak - 200
