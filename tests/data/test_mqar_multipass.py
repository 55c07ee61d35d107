"""Multi-pass MQAR: the context is the same pairs `passes` times, every answer is its key's value,
one pass is MQAR itself, the splits share no pairs, answering a random value of the context
scores 1/n, and bad settings are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.datamodule import TokenTaskDataModule
from attn_lightning.data.token_tasks.mqar import MQARSetting, MQARTask
from attn_lightning.data.token_tasks.mqar_multipass import MultiPassMQARTask
from attn_lightning.errors import ConfigError


@pytest.mark.parametrize("passes", [2, 3])
def test_the_pairs_are_read_passes_times_then_each_key_is_answered_by_its_value(passes: int):
    vocab = 16
    task = MultiPassMQARTask(vocab, passes=passes)
    for n, length in [(2, 16), (3, 30)]:
        examples = task.draw(np.random.default_rng(0), MQARSetting(length, n), 200)
        assert np.array_equal(examples.split_keys, examples.inputs[:, : 2 * n])  # one pass
        for row, target in zip(examples.inputs.tolist(), examples.targets.tolist(), strict=True):
            once = row[: 2 * n]
            for p in range(passes):  # every pass repeats the first, in the same order
                assert row[2 * n * p : 2 * n * (p + 1)] == once
            bound = {}
            for i in range(0, 2 * n, 2):
                bound[once[i]] = once[i + 1]
            assert len(bound) == n and len(set(bound.values())) == n
            context = 2 * n * passes
            scored = [p for p in range(length) if target[p] != IGNORE]
            assert sorted(row[p] for p in scored) == sorted(bound)  # every key once
            for p in scored:
                assert p >= context and (p - context) % 2 == 0
                assert target[p] == bound[row[p]]
            assert all(row[p] == 0 for p in range(context, length) if p not in scored)


def test_one_pass_is_mqar_itself():
    setting = MQARSetting(24, 4)
    for random_non_queries in (False, True):
        one = MultiPassMQARTask(32, passes=1, random_non_queries=random_non_queries)
        mqar = MQARTask(32, random_non_queries=random_non_queries)
        a = one.draw(np.random.default_rng(3), setting, 50)
        b = mqar.draw(np.random.default_rng(3), setting, 50)
        assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.targets, b.targets)


def test_answering_a_random_value_of_the_context_scores_one_in_n():
    n, rows = 4, 4000
    task = MultiPassMQARTask(64, passes=2)
    examples = task.draw(np.random.default_rng(4), MQARSetting(32, n), rows)
    rng = np.random.default_rng(5)
    right = 0
    for row, target in zip(examples.inputs.tolist(), examples.targets.tolist(), strict=True):
        values = row[1 : 4 * n : 2]  # every value token of both passes
        for p in (p for p in range(len(row)) if target[p] != IGNORE):
            right += values[int(rng.integers(len(values)))] == target[p]
    answers = rows * n
    sigma = (1 / n * (1 - 1 / n) / answers) ** 0.5
    assert abs(right / answers - 1 / n) < 4 * sigma


def test_train_val_and_test_share_no_pairs():
    # vocab 10: keys 1..4, values 5..9, 2 pairs: 12 * 20 = 240 contexts, most met in training
    dm = TokenTaskDataModule(
        MultiPassMQARTask(10, passes=2),
        vocab_size=10,
        block_size=14,
        train_settings=[{"seq_len": 14, "num_kv_pairs": 2}],
        test_settings=[{"seq_len": 14, "num_kv_pairs": 2}],
        batch_size=32,
        val_size=6,
        test_size=6,
        eval_fraction=0.1,
    )
    batches = dm.training_batches(60)
    pairs = lambda x: {tuple(r[:4]) for r in x.tolist()}  # noqa: E731
    train = set().union(*(pairs(batches[i][0]) for i in range(60)))
    setting = dm.train_settings[0]
    val = pairs(dm.examples("val", setting).tensors()[0])
    test = pairs(dm.examples("test", setting).tensors()[0])
    assert len(val) == len(test) == 6 and len(train) > 150
    assert not train & val and not train & test and not val & test
    assert all(torch.equal(x[:, :4], x[:, 4:8]) for x, _ in (batches[i] for i in range(5)))


@pytest.mark.parametrize(
    ("passes", "entry", "message"),
    [
        (2, {"seq_len": 23, "num_kv_pairs": 4}, "need seq_len >= 24"),
        (3, {"seq_len": 24, "num_kv_pairs": 4}, "need seq_len >= 32"),
        (2, {"seq_len": 64, "num_kv_pairs": 8}, "data.vocab_size >= 18"),
        (2, {"seq_len": 64, "kv": 4}, "give exactly seq_len, num_kv_pairs"),
    ],
)
def test_a_setting_that_cannot_be_drawn_is_a_one_line_error(passes, entry, message):
    with pytest.raises(ConfigError) as error:
        MultiPassMQARTask(16, passes=passes).setting(entry, "data.train_settings[0]")
    text = str(error.value)
    assert text.startswith("data.train_settings[0]") and message in text and "\n" not in text
    with pytest.raises(ConfigError, match=r"data\.task\.passes"):
        MultiPassMQARTask(16, passes=0)
