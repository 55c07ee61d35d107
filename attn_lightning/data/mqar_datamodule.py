"""MQAR as a datamodule with the task's options beside the data's, the form in which MQAR runs
were recorded (`data._target_` naming this class, `power_alpha` and `random_non_queries` at the
top of `data`): `python -m attn_lightning.eval` and `analyze` rebuild such a run's data from
its record. conf/data/mqar.yaml builds the same data as a `TokenTaskDataModule` of an
`MQARTask`, batch for batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attn_lightning.data.token_tasks.datamodule import TokenTaskDataModule
from attn_lightning.data.token_tasks.mqar import MQARTask


class MQARDataModule(TokenTaskDataModule):
    """A `TokenTaskDataModule` of `MQARTask(vocab_size, power_alpha, random_non_queries)`."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        train_settings: Sequence[Mapping[str, Any]],
        test_settings: Sequence[Mapping[str, Any]],
        batch_size: int,
        eval_batch_size: int = 250,
        val_size: int = 500,
        test_size: int = 1000,
        power_alpha: float = 0.01,
        random_non_queries: bool = False,
        eval_fraction: float = 0.05,
        seed: int = 1337,
        eval_seed: int = 0,
    ) -> None:
        super().__init__(
            MQARTask(vocab_size, power_alpha, random_non_queries),
            vocab_size,
            block_size,
            train_settings,
            test_settings,
            batch_size,
            eval_batch_size=eval_batch_size,
            val_size=val_size,
            test_size=test_size,
            eval_fraction=eval_fraction,
            seed=seed,
            eval_seed=eval_seed,
        )
