"""State tracking: every target is the running product recomputed here by composing
permutation tuples (or summing bits), S5's table is a group with id 0 its identity, splits are
decided by the prefix alone so no evaluation example starts a training one, trivial predictors
score what theory says, and bad settings are one-line errors naming their key."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from helpers import first_training_batch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.token_tasks.state_tracking import S5, Parity
from attn_lightning.data.token_tasks.task import split_of_keys
from attn_lightning.errors import ConfigError

# the elements as the docstring defines them: tuples (p(0), .., p(4)) in lexicographic order
ELEMENTS = sorted(itertools.permutations(range(5)))
IDENTITY = (0, 1, 2, 3, 4)


def then(state: tuple[int, ...], g: tuple[int, ...]) -> tuple[int, ...]:
    """g ∘ state: first state, then g (i goes to state(i), then to g(state(i)))."""
    return tuple(g[state[i]] for i in range(5))


def draw(task, seq_len: int, count: int, seed: int = 0):
    return task.draw(np.random.default_rng(seed), task.setting({"seq_len": seq_len}, "k"), count)


def check_s5(inputs: list[list[int]], targets: list[list[int]]) -> None:
    """Every target is the composition of the inputs so far, by tuples."""
    for row, answers in zip(inputs, targets, strict=True):
        state = IDENTITY
        for g, answer in zip(row, answers, strict=True):
            state = then(state, ELEMENTS[g])
            assert answer == ELEMENTS.index(state)


def check_parity(inputs: list[list[int]], targets: list[list[int]]) -> None:
    """Every target is the sum of the bits so far, mod 2."""
    for row, answers in zip(inputs, targets, strict=True):
        assert set(row) <= {0, 1}
        for t, answer in enumerate(answers):
            assert answer == sum(row[: t + 1]) % 2


def test_s5_targets_are_the_running_composition():
    examples = draw(S5(), 24, 50)
    assert examples.inputs.shape == examples.targets.shape == (50, 24)
    check_s5(examples.inputs.tolist(), examples.targets.tolist())


def test_s5_convention_of_the_docstring_example():
    """Swap 0,1 then swap 1,2: 0 -> 1 -> 2, 1 -> 0, 2 -> 2 -> 1: the tuple (2, 0, 1, 3, 4)."""
    swap01, swap12 = ELEMENTS.index((1, 0, 2, 3, 4)), ELEMENTS.index((0, 2, 1, 3, 4))
    assert (swap01, swap12) == (24, 6)
    table = S5().table
    assert ELEMENTS[table[swap01, swap12]] == (2, 0, 1, 3, 4)
    assert ELEMENTS[table[swap12, swap01]] == (1, 2, 0, 3, 4)  # the other order differs


def test_s5_table_is_the_group():
    task = S5()
    table = task.table
    assert task.vocab_size == 120 and ELEMENTS[0] == IDENTITY
    ids = np.arange(120)
    assert (table[0] == ids).all() and (table[:, 0] == ids).all()  # id 0 is the identity
    for row in [*table, *table.T]:  # closed, and a Latin square: each product exactly once
        assert sorted(row.tolist()) == ids.tolist()
    for g, p in enumerate(ELEMENTS):
        inverse = [0] * 5
        for i in range(5):
            inverse[p[i]] = i
        h = ELEMENTS.index(tuple(inverse))
        assert table[g, h] == 0 and table[h, g] == 0  # g and its inverse compose to identity
    a, b, c = np.random.default_rng(1).integers(0, 120, size=(3, 500))
    assert (table[table[a, b], c] == table[a, table[b, c]]).all()  # associative


def test_parity_targets_are_the_running_parity():
    examples = draw(Parity(split_prefix=4), 20, 50)
    assert set(np.unique(examples.inputs)) == {0, 1}
    check_parity(examples.inputs.tolist(), examples.targets.tolist())


def test_last_input_predicts_s5_only_after_an_identity_and_a_constant_predicts_half_parity():
    """Predicting the last input g_t is right iff g_t ∘ s_{t-1} = g_t iff s_{t-1} is the
    identity: always at t = 0, with probability 1/120 after."""
    examples = draw(S5(), 64, 2000, seed=2)
    hits = examples.targets == examples.inputs  # (N, L)
    assert hits[:, 0].all()
    assert (hits[:, 1:] == (examples.targets[:, :-1] == 0)).all()
    assert hits[:, 1:].mean() == pytest.approx(1 / 120, rel=0.1)  # 126,000 answers: sd ~2.6%
    parity = draw(Parity(), 64, 2000, seed=3).targets
    assert (parity == 0).mean() == pytest.approx(0.5, abs=0.01)


def test_an_example_s_split_is_decided_by_its_prefix_alone():
    """Parity with a 4-bit split prefix: examples of two lengths that start alike share their
    split, whatever follows; the 16 prefixes fall in more than one split."""
    task = Parity(split_prefix=4)
    short, long = draw(task, 4, 300), draw(task, 12, 300, seed=1)
    split_of_prefix: dict[tuple[int, ...], str] = {}
    for examples in (short, long):
        for row, split in zip(examples.inputs.tolist(), examples.splits(0.2), strict=True):
            assert split_of_prefix.setdefault(tuple(row[:4]), split) == split
    assert len(split_of_prefix) == 16 and len(set(split_of_prefix.values())) > 1
    assert len({tuple(row) for row in long.inputs.tolist()}) > 250  # tails differ


def test_no_evaluation_example_starts_a_training_example_of_another_length():
    """Parity over 16 bits has 65,536 prefixes: L16 evaluation examples often start L32
    training ones when the split hashes whole sequences; the prefix hash rules it out."""
    task = Parity(split_prefix=16)
    short, long = draw(task, 16, 4000), draw(task, 32, 20000, seed=1)
    held_out = {
        tuple(row)
        for row, split in zip(short.inputs.tolist(), short.splits(0.2), strict=True)
        if split != "train"
    }
    starts_trained = {
        tuple(row[:16])
        for row, split in zip(long.inputs.tolist(), long.splits(0.2), strict=True)
        if split == "train"
    }
    starts_trained_if_whole = {
        tuple(row[:16])
        for row in long.inputs
        if split_of_keys(row, 0.2) == "train"  # the split a whole-sequence hash would give
    }
    assert len(held_out) > 1000
    assert not held_out & starts_trained
    assert len(held_out & starts_trained_if_whole) > 100


@pytest.mark.parametrize(
    "task, entry, message",
    [
        (Parity(), {"seq_len": 8}, r"^data\.test_settings\[1\]: seq_len=8 is shorter than data"),
        (S5(), {"seq_len": 8, "depth": 0.5}, r"^data\.test_settings\[1\] = .*give exactly seq_len"),
        (S5(), {"seq_len": "8"}, r"^data\.test_settings\[1\] = .*must be integers"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(task, entry, message):
    with pytest.raises(ConfigError, match=message) as error:
        task.setting(entry, "data.test_settings[1]")
    assert "\n" not in str(error.value)


def test_split_prefix_must_be_positive():
    with pytest.raises(ConfigError, match=r"^data\.task\.split_prefix must be >= 1"):
        S5(split_prefix=0)


@pytest.mark.parametrize("data, check", [("s5", check_s5), ("parity", check_parity)])
def test_the_preset_composes_and_its_first_batch_scores_every_position(data, check):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=.", f"data={data}"])
    dm = instantiate(cfg.data)
    assert cfg.model.block_size == dm.block_size == 128
    assert dm.teacher_forced_answers  # every answer is read from one forward pass
    assert dm.test_splits == ("test", "test_L32", "test_L64", "test_L128")
    inputs, targets = first_training_batch(dm)
    assert inputs.shape == targets.shape
    assert inputs.shape[0] == cfg.data.batch_size and inputs.shape[1] in (16, 32)
    check(inputs.tolist(), targets.tolist())  # every position scored, with its answer
