"""MQAR: every answer is the value its query's key was bound to (read back from the sequence),
nothing else is scored, the splits share no context, a constant predictor scores chance,
query placement follows the power law, and bad settings are one-line errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.interface import IGNORE
from attn_lightning.data.mqar_datamodule import MQARDataModule
from attn_lightning.data.mqar_tokenizer import IntTokenizer
from attn_lightning.data.token_tasks.mqar import MQARSetting, draw_examples, weighted_distinct_draws
from attn_lightning.errors import ConfigError
from attn_lightning.training.metrics import StageMetrics

SMALL = [{"seq_len": 16, "num_kv_pairs": 2}, {"seq_len": 24, "num_kv_pairs": 4}]


def datamodule(vocab_size: int = 16, **overrides) -> MQARDataModule:
    options = {
        "vocab_size": vocab_size,
        "block_size": 24,
        "train_settings": SMALL,
        "test_settings": [*SMALL, {"seq_len": 24, "num_kv_pairs": 6}],
        "batch_size": 32,
        "val_size": 40,
        "test_size": 60,
        "eval_fraction": 0.05,
        "eval_seed": 0,
    }
    return MQARDataModule(**{**options, **overrides})


def training_batches(dm: MQARDataModule, count: int, rank: int = 0) -> list:
    batches = dm.training_batches(count, rank=rank)
    return [batches[i] for i in range(count)]


def check_rows(inputs: torch.Tensor, targets: torch.Tensor, vocab_size: int, filler: bool) -> int:
    """Checks each row by reading it as a reader of the paper would; returns answers seen."""
    answers = 0
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        scored = [p for p, t in enumerate(y) if t != IGNORE]
        n = len(scored)
        assert n >= 1
        keys, values = x[0 : 2 * n : 2], x[1 : 2 * n : 2]
        assert all(1 <= k < vocab_size // 2 for k in keys) and len(set(keys)) == n
        assert all(vocab_size // 2 <= v < vocab_size for v in values) and len(set(values)) == n
        bound = dict(zip(keys, values, strict=True))
        assert min(scored) >= 2 * n  # queries come after the context
        assert sorted(x[p] for p in scored) == sorted(keys)  # every key queried exactly once
        for p in scored:
            assert y[p] == bound[x[p]]  # the answer: the value bound to the queried key
            assert (p - 2 * n) % 2 == 0  # a query opens a two-token slot
        if filler:  # everything else after the context is the filler id 0
            assert all(x[p] == 0 for p in range(2 * n, len(x)) if p not in scored)
        answers += n
    return answers


@pytest.mark.parametrize("random_non_queries", [False, True])
def test_answers_are_the_values_of_the_queried_keys_and_nothing_else_is_scored(
    random_non_queries: bool,
):
    dm = datamodule(random_non_queries=random_non_queries)
    lengths = set()
    for inputs, targets in training_batches(dm, 6):
        assert inputs.shape == targets.shape and inputs.shape[0] == dm.batch_size
        lengths.add(inputs.shape[1])
        check_rows(inputs, targets, 16, filler=not random_non_queries)
    assert lengths == {16, 24}  # both training settings appear
    for loader in [dm.val_dataloader(), *dm.test_dataloader()]:
        for inputs, targets in loader:
            check_rows(inputs, targets, 16, filler=not random_non_queries)
    if random_non_queries:  # the non-query positions are no longer constant
        assert len(set(inputs[:, -1].tolist())) > 3


def contexts(inputs: torch.Tensor, targets: torch.Tensor) -> set[tuple[int, ...]]:
    n = int((targets[0] != IGNORE).sum())
    return {tuple(row[: 2 * n]) for row in inputs.tolist()}


def test_train_val_and_test_share_no_key_value_context():
    # vocabulary 16, 2 pairs: 7*6 * 8*7 = 2352 ordered contexts; the ~40 length-16 batches of 32
    # among 80 meet about 40% of them, so without the split hash ~16 of the 40 val contexts
    # (and ~24 of the 60 test ones) would be training contexts too
    dm = datamodule()
    setting = MQARSetting(16, 2)
    train = set()
    for inputs, targets in training_batches(dm, 80):
        if inputs.shape[1] == 16:
            train |= contexts(inputs, targets)
    val = contexts(*dm.examples("val", setting).tensors())
    test = contexts(*dm.examples("test", setting).tensors())
    assert len(val) == 40 and len(test) == 60  # distinct within a split
    assert len(train) > 800
    assert not train & val and not train & test and not val & test


def test_evaluation_sets_are_fixed_and_training_batches_follow_seed_step_and_rank():
    a, b = datamodule(), datamodule(seed=99)
    setting = MQARSetting(24, 4)
    assert torch.equal(
        a.examples("test", setting).tensors()[0], b.examples("test", setting).tensors()[0]
    )
    first = training_batches(a, 3)
    again = training_batches(a, 3)
    other_rank = training_batches(a, 3, rank=1)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, again, strict=True))
    assert not any(
        x[0].shape == y[0].shape and torch.equal(x[0], y[0])
        for x, y in zip(first, other_rank, strict=True)
    )


def test_the_most_frequent_training_value_scores_chance_on_the_test():
    """Each answer is one of the V/2 value ids, uniformly (the values of a context are a random
    ordered subset): always answering the most frequent training value is right with
    probability 2/V. Scored with the project's answer metric, per test setting."""
    vocab = 64  # 32 value ids: chance 1/32
    dm = datamodule(vocab_size=vocab, test_size=400)
    counts = Counter()
    for _, targets in training_batches(dm, 60):
        counts.update(targets[targets != IGNORE].tolist())
    mode = counts.most_common(1)[0][0]
    chance = 1 / (vocab // 2)
    for split, loader in zip(dm.test_splits, dm.test_dataloader(), strict=True):
        metrics = StageMetrics(vocab)
        answers = 0
        for _, targets in loader:
            logits = torch.zeros(*targets.shape, vocab)
            logits[..., mode] = 1.0  # a model that always says `mode`
            exact = torch.zeros(len(targets), dtype=torch.bool)
            metrics.update_answers(logits, targets, exact)
            answers += int((targets != IGNORE).sum())
        accuracy = float(metrics.answer_token_acc.compute())
        sigma = (chance * (1 - chance) / answers) ** 0.5
        assert abs(accuracy - chance) < 4 * sigma, (split, accuracy, chance, answers)


def test_query_slots_follow_successive_sampling_of_the_power_law():
    # 3 slots, 2 queries, alpha = 0.5: p_i ~ (i+1)^(-1/2); successive sampling without
    # replacement gives P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j)
    w = np.array([1.0, 2**-0.5, 3**-0.5])
    p = w / w.sum()
    expected = {
        (i, j): p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j])
        for i in range(3)
        for j in range(i + 1, 3)
    }
    rows = 40_000
    drawn = weighted_distinct_draws(np.random.default_rng(0), rows, p, 2)
    seen = Counter(tuple(sorted(r)) for r in drawn.tolist())
    for pair, prob in expected.items():
        sigma = (prob * (1 - prob) / rows) ** 0.5
        assert abs(seen[pair] / rows - prob) < 4 * sigma, (pair, seen[pair] / rows, prob)
    # and the default alpha = 0.01 puts the queries right after the context
    examples = draw_examples(np.random.default_rng(0), MQARSetting(64, 4), 2000, 512, 0.01, False)
    slots = (np.nonzero(examples.targets != IGNORE)[1] - 8) // 2
    assert np.mean(slots < 8) > 0.5


def test_overall_test_split_is_the_union_of_the_settings():
    dm = datamodule()
    assert dm.test_splits == ("test", "test_L16_kv2", "test_L24_kv4", "test_L24_kv6")
    overall, *each = dm.test_dataloader()
    rows = lambda loader: sorted(tuple(x) for batch, _ in loader for x in batch.tolist())  # noqa: E731
    assert rows(overall) == sorted(r for loader in each for r in rows(loader))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"test_settings": [{"seq_len": 24, "num_kv_pairs": 7}]}, "data.test_settings[0]"),
        ({"vocab_size": 8}, "data.vocab_size"),
        ({"block_size": 16}, "data.block_size=24"),
        ({"train_settings": [{"seq_len": 16, "pairs": 2}]}, "data.train_settings[0]"),
        ({"train_settings": []}, "data.train_settings is empty"),
    ],
)
def test_a_setting_that_does_not_fit_is_a_one_line_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        datamodule(**overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_tokenizer_writes_ids_as_numbers_and_refuses_anything_else():
    tokenizer = IntTokenizer(16)
    assert tokenizer.decode(tokenizer.encode("3 9 15 0")) == "3 9 15 0"
    assert tokenizer.encode("\n").tolist() == [0]  # the callbacks' default prompt
    for bad in ("3 16", "3 x"):
        with pytest.raises(ConfigError):
            tokenizer.encode(bad)
    assert instantiate(tokenizer.state_dict()).vocab_size == 16


def test_preset_composes_with_the_model_following_the_data():
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=.", "experiment=mqar"])
    assert cfg.model.block_size == cfg.data.block_size == 64
    assert (cfg.model.n_layer, cfg.model.n_embd) == (2, 64)  # Zoology's smallest point
    assert cfg.data.train_settings == [{"seq_len": 64, "num_kv_pairs": 4}]


def test_comparison_lists_the_accuracy_of_each_test_setting_in_length_order(tmp_path):
    from attn_lightning.comparison.columns import Sweep, test_split_accuracies
    from attn_lightning.comparison.runs import Run

    series = {
        "test/answer_token_acc": [(9, 0.6)],
        "test_L64_kv16/answer_token_acc": [(9, 0.25)],
        "test_L64_kv4/answer_token_acc": [(5, 0.1), (9, 1.0)],
        "test_L64_kv4/loss": [(9, 0.01)],
    }
    run = Run("0", tmp_path, None, [], series)
    assert test_split_accuracies(run, Sweep.of([run])) == "L64_kv4 1.000, L64_kv16 0.250"
    assert test_split_accuracies(Run("1", tmp_path, None, [], {}), Sweep.of([run])) is None


def test_lit_module_scores_every_named_test_split_and_the_overall_is_their_union():
    from helpers import quiet_trainer, tiny_lit_gpt

    dm = datamodule(test_size=50)
    module = tiny_lit_gpt(dm.tokenizer.state_dict(), block_size=24)
    results = quiet_trainer().test(module, datamodule=dm, verbose=False)  # one dict a loader
    metrics = {k: v for result in results for k, v in result.items()}
    totals = {"right": 0, "answers": 0, "exact": 0, "rows": 0}
    for split, loader in zip(dm.test_splits[1:], dm.test_dataloader()[1:], strict=True):
        right = answers = exact = rows = 0
        for inputs, targets in loader:  # an independent route: one forward, the argmax
            with torch.no_grad():
                predicted = module.model(inputs).logits.argmax(-1)
            scored = targets != IGNORE
            right += int((predicted == targets)[scored].sum())
            answers += int(scored.sum())
            exact += int(((predicted == targets) | ~scored).all(1).sum())
            rows += len(targets)
        assert metrics[f"{split}/answer_token_acc"] == pytest.approx(right / answers, abs=1e-6)
        assert metrics[f"{split}/exact_match"] == pytest.approx(exact / rows, abs=1e-6)
        for key, value in zip(totals, (right, answers, exact, rows), strict=True):
            totals[key] += value
    overall = totals["right"] / totals["answers"]
    assert metrics["test/answer_token_acc"] == pytest.approx(overall, abs=1e-6)
    assert metrics["test/exact_match"] == pytest.approx(totals["exact"] / totals["rows"], abs=1e-6)
