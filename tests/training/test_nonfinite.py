"""The non-finite-loss policy on its own: which batches are skipped, when it stops, and what the
message names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attn_lightning.errors import ConfigError
from attn_lightning.training.nonfinite import NonFiniteLossError, NonFiniteLossGuard

GOOD, BAD = torch.tensor(1.0), torch.tensor(float("nan"))


def test_skip_skips_up_to_its_limit_then_stops_naming_the_checkpoint():
    guard = NonFiniteLossGuard("skip", 2, lambda: Path("ckpts/last.ckpt"))
    assert [guard.skip_batch(loss, s, False) for s, loss in enumerate([GOOD, BAD, GOOD, BAD])] == [
        False,
        True,
        False,
        True,
    ]
    with pytest.raises(NonFiniteLossError, match=r"step 4; .*\(3 non-finite so far\).*ckpts"):
        guard.skip_batch(BAD, 4, False)


def test_stop_on_cpu_stops_at_the_first_bad_loss():
    guard = NonFiniteLossGuard("stop", 5, lambda: None)
    assert not guard.skip_batch(GOOD, 0, False)
    with pytest.raises(NonFiniteLossError, match="at step 1; stopped before the bad update"):
        guard.skip_batch(BAD, 1, False)


def test_deferred_record_names_the_first_bad_step_when_read_back(monkeypatch):
    monkeypatch.setattr(NonFiniteLossGuard, "checks_every_step", lambda self, device: False)
    guard = NonFiniteLossGuard("stop", 0, lambda: None)
    for step, loss in enumerate([GOOD, BAD, GOOD, BAD]):
        assert not guard.skip_batch(loss, step, check_now=False)  # no sync, no stop yet
    with pytest.raises(NonFiniteLossError, match="became non-finite at step 1;"):
        guard.raise_if_recorded()


def test_unknown_policy_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"on_nonfinite_loss='halt'"):
        NonFiniteLossGuard("halt", 0, lambda: None)
