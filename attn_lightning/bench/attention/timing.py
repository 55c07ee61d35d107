"""Wall-clock time of repeated calls, CUDA-synchronised, with a time limit."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


class MeasurementTimeout(Exception):
    """The measurement ran past its time limit."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    call: Callable[[], None], warmup: int, repeats: int, limit: float, device: torch.device
) -> list[float]:
    """Seconds of each of `repeats` calls after `warmup` untimed ones; MeasurementTimeout as
    soon as the calls so far took longer than `limit` seconds."""
    start = time.perf_counter()
    seconds = []
    for i in range(warmup + repeats):
        sync(device)
        begin = time.perf_counter()
        call()
        sync(device)
        end = time.perf_counter()
        if i >= warmup:
            seconds.append(end - begin)
        if end - start > limit:
            raise MeasurementTimeout(f"{end - start:.3g} s after {i + 1} calls > {limit:g} s")
    return seconds
