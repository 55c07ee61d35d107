"""Forgetting MQAR: every answer is its key's last value (a dict updated left to right over the
context), a reassigned key's new value is any other value, the splits share no context, a
predictor that remembers first values scores 0 on the reassigned keys, and bad settings are
one-line errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.datamodule import TokenTaskDataModule
from attn_lightning.data.token_tasks.mqar_forgetting import ForgettingMQARTask, ForgettingSetting
from attn_lightning.errors import ConfigError


def read(row: list[int], target: list[int], n: int, u: int) -> dict:
    """One example read as the construction states, by plain loops."""
    context = row[: 2 * (n + u)]
    pairs = [(context[i], context[i + 1]) for i in range(0, len(context), 2)]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for position, (key, value) in enumerate(pairs):
        if position < n:
            first[key] = value
        last[key] = value  # a later binding overwrites an earlier one
    queries = [(p, row[p], target[p]) for p in range(len(row)) if target[p] != IGNORE]
    return {"pairs": pairs, "first": first, "last": last, "queries": queries}


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_each_answer_is_the_last_value_its_key_was_given(random_non_queries: bool):
    vocab = 16
    task = ForgettingMQARTask(vocab, random_non_queries=random_non_queries)
    rng = np.random.default_rng(0)
    for n, u, length in [(2, 1, 12), (3, 3, 24), (4, 2, 30)]:
        examples = task.draw(rng, ForgettingSetting(length, n, u), 200)
        assert np.array_equal(examples.split_keys, examples.inputs[:, : 2 * (n + u)])
        for row, target in zip(examples.inputs.tolist(), examples.targets.tolist(), strict=True):
            seen = read(row, target, n, u)
            keys = [k for k, _ in seen["pairs"][:n]]
            firsts = [v for _, v in seen["pairs"][:n]]
            updates = seen["pairs"][n:]
            assert len(set(keys)) == n and all(1 <= k < vocab // 2 for k in keys)
            assert len(set(firsts)) == n and all(vocab // 2 <= v < vocab for v in firsts)
            assert len({k for k, _ in updates}) == u and {k for k, _ in updates} <= set(keys)
            for key, value in updates:  # a new value, never the key's first one
                assert vocab // 2 <= value < vocab and value != seen["first"][key]
            assert sorted(k for _, k, _ in seen["queries"]) == sorted(keys)  # each key once
            for position, key, answer in seen["queries"]:
                assert position >= 2 * (n + u) and (position - 2 * (n + u)) % 2 == 0
                assert answer == seen["last"][key]
            if not random_non_queries:
                queried = {p for p, _, _ in seen["queries"]}
                rest = range(2 * (n + u), length)
                assert all(row[p] == 0 for p in rest if p not in queried)


def test_the_new_value_is_uniform_over_the_other_values():
    # vocab 8: values 4..7; a reassigned key's new value is each of the 3 others w.p. 1/3
    task = ForgettingMQARTask(8)
    examples = task.draw(np.random.default_rng(1), ForgettingSetting(12, 2, 1), 30_000)
    shifts = Counter()
    for row in examples.inputs.tolist():
        updated_key, new = row[4], row[5]
        first = row[1] if row[0] == updated_key else row[3]
        shifts[(new - first) % 4] += 1
    assert set(shifts) == {1, 2, 3}
    sigma = (1 / 3 * 2 / 3 / 30_000) ** 0.5
    assert all(abs(c / 30_000 - 1 / 3) < 4 * sigma for c in shifts.values()), shifts


def test_remembering_first_values_scores_zero_on_reassigned_keys_and_one_on_the_others():
    task = ForgettingMQARTask(64)
    n, u = 6, 3
    examples = task.draw(np.random.default_rng(2), ForgettingSetting(48, n, u), 500)
    right = Counter()
    total = Counter()
    for row, target in zip(examples.inputs.tolist(), examples.targets.tolist(), strict=True):
        seen = read(row, target, n, u)
        reassigned = {k for k, _ in seen["pairs"][n:]}
        for _, key, answer in seen["queries"]:
            kind = "reassigned" if key in reassigned else "kept"
            right[kind] += seen["first"][key] == answer
            total[kind] += 1
    assert total == {"reassigned": 500 * u, "kept": 500 * (n - u)}
    assert right["reassigned"] == 0 and right["kept"] == total["kept"]


def contexts(inputs: torch.Tensor, width: int) -> set[tuple[int, ...]]:
    return {tuple(row[:width]) for row in inputs.tolist()}


def test_train_val_and_test_share_no_context_updates_included():
    # vocab 8, 2 pairs, 1 update: 6 * 12 * 2 * 3 = 432 contexts; 100 batches of 32 meet most
    # training ones, so without the split hash most val and test contexts would be trained on
    dm = TokenTaskDataModule(
        ForgettingMQARTask(8),
        vocab_size=8,
        block_size=12,
        train_settings=[{"seq_len": 12, "num_kv_pairs": 2, "num_updates": 1}],
        test_settings=[{"seq_len": 12, "num_kv_pairs": 2, "num_updates": 1}],
        batch_size=32,
        val_size=10,
        test_size=10,
    )
    batches = dm.training_batches(100)
    train = set().union(*(contexts(batches[i][0], 6) for i in range(100)))
    setting = dm.train_settings[0]
    val = contexts(dm.examples("val", setting).tensors()[0], 6)
    test = contexts(dm.examples("test", setting).tensors()[0], 6)
    assert len(val) == len(test) == 10 and len(train) > 300
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"seq_len": 64, "num_kv_pairs": 4, "num_updates": 5}, "num_updates <= num_kv_pairs"),
        ({"seq_len": 64, "num_kv_pairs": 4, "num_updates": 0}, "1 <= num_updates"),
        ({"seq_len": 19, "num_kv_pairs": 4, "num_updates": 2}, "need seq_len >= 20"),
        ({"seq_len": 33, "num_kv_pairs": 8, "num_updates": 1}, "need seq_len >= 34"),
        ({"seq_len": 64, "num_kv_pairs": 8, "num_updates": 1}, "data.vocab_size >= 18"),
        ({"seq_len": 64, "num_kv_pairs": 4}, "give exactly seq_len, num_kv_pairs, num_updates"),
    ],
)
def test_a_setting_that_cannot_be_drawn_is_a_one_line_error(entry, message):
    with pytest.raises(ConfigError) as error:
        ForgettingMQARTask(16).setting(entry, "data.test_settings[1]")
    text = str(error.value)
    assert text.startswith("data.test_settings[1]") and message in text and "\n" not in text
