"""When the attention callbacks fire, and which tokens they probe."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attn_lightning.callbacks.validation_probe import EveryNValidations, first_validation_inputs


def test_every_n_validations_skips_sanity_checks_and_counts_the_rest() -> None:
    due = EveryNValidations(2)
    sanity, real = SimpleNamespace(sanity_checking=True), SimpleNamespace(sanity_checking=False)
    assert not due(sanity)
    assert [due(real) for _ in range(5)] == [True, False, True, False, True]
    never = EveryNValidations(0)
    assert not any(never(real) for _ in range(3))
    with pytest.raises(ValueError, match="every_n_validations"):
        EveryNValidations(-1)


def test_probe_is_the_first_validation_batch_cut_to_size() -> None:
    x = torch.arange(40).view(10, 4)
    loader = DataLoader(TensorDataset(x, x + 1), batch_size=3)
    trainer = SimpleNamespace(val_dataloaders=loader, datamodule=None)
    first = first_validation_inputs(trainer, 2)
    assert torch.equal(first, x[:2])
    assert torch.equal(first_validation_inputs(trainer, 2), first)  # fixed windows: same probe
    trainer = SimpleNamespace(val_dataloaders=[loader], datamodule=None)
    assert torch.equal(first_validation_inputs(trainer, 8), x[:3])  # at most one batch
    assert (
        first_validation_inputs(SimpleNamespace(val_dataloaders=None, datamodule=None), 1) is None
    )
