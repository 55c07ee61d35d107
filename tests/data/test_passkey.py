"""Passkey retrieval: the scored answer is the digits read back after the key marker, the needle
sits at its depth in filler that reads as the paper's text, greedy decoding from the query
reproduces the answer of a model that reads the needle, the split is the passkey's alone,
guessing scores chance, and bad settings are one-line errors naming their key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import first_training_batch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.passkey import Passkey
from attn_lightning.errors import ConfigError
from attn_lightning.training.answers import exact_matches, greedy_answers

TEXT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
WORDS = TEXT.lower().replace(".", " .").split()  # the filler as word tokens, 24 of them
IDS = list(dict.fromkeys(WORDS))  # a word's id: the order of first appearance
KEY, QUERY, DIGIT_0 = 16, 17, 18  # the vocabulary of the docstring


def draw(task: Passkey, seq_len: int, depth: float | None, count: int, seed: int = 0):
    setting = task.setting({"seq_len": seq_len, "depth": depth}, "k")
    return task.draw(np.random.default_rng(seed), setting, count)


def read_passkey(row: list[int], digits: int) -> list[int]:
    """The digits after the key marker, as a reader finds them."""
    start = row.index(KEY) + 1
    return [token - DIGIT_0 for token in row[start : start + digits]]


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0, None])
def test_the_answer_is_the_passkey_read_back_and_nothing_else_is_scored(depth):
    digits, seq_len = 4, 61
    examples = draw(Passkey(digits), seq_len, depth, 40)
    assert examples.inputs.shape == examples.targets.shape == (40, seq_len)
    filler_len = seq_len - 2 * digits - 1
    for row, answer in zip(examples.inputs.tolist(), examples.targets.tolist(), strict=True):
        passkey = read_passkey(row, digits)
        assert all(0 <= d <= 9 for d in passkey) and row.count(KEY) == 1
        query_at = seq_len - digits
        assert row.count(QUERY) == 1 and row[query_at] == QUERY
        assert row[query_at + 1 :] == [DIGIT_0 + d for d in passkey[:-1]]
        assert answer[:query_at] == [IGNORE] * query_at
        assert answer[query_at:] == [DIGIT_0 + d for d in passkey]
        key_at = row.index(KEY)
        if depth is not None:
            assert key_at == int(depth * filler_len + 0.5)
        filler = row[:key_at] + row[key_at + digits + 1 : query_at]
        assert len(filler) == filler_len
        assert filler == [IDS.index(w) for w in (WORDS * 3)[:filler_len]]  # the text, on


def test_depths_name_settings_and_a_null_depth_spreads_the_needle_over_the_filler():
    task = Passkey(5)
    names = [task.setting({"seq_len": 256, "depth": d}, "k").name for d in (0, 0.125, 1, None)]
    assert names == ["L256_d0", "L256_d12p5", "L256_d100", "L256_dany"]
    examples = draw(task, 32, None, 4000)  # 21 filler tokens: 22 places
    places = [row.index(KEY) for row in examples.inputs.tolist()]
    counts = np.bincount(places, minlength=22)
    assert len(counts) == 22 and counts.min() > 4000 / 22 * 0.6


class NeedleReader:
    """A stand-in for the GPT whose `generate` reads the passkey from the prompt."""

    def __init__(self, digits: int) -> None:
        self.digits = digits

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float):
        assert temperature == 0 and max_new_tokens == self.digits
        assert (idx[:, -1] == QUERY).all()  # the prompt ends at the query
        answers = [[DIGIT_0 + d for d in read_passkey(row, self.digits)] for row in idx.tolist()]
        return torch.cat([idx, torch.tensor(answers)], dim=1)


def test_greedy_decoding_from_the_query_scores_a_reader_exactly_and_a_guess_at_chance():
    digits = 3
    task = Passkey(digits)
    assert task.teacher_forced_answers is False  # answer digits are inputs: decode greedily
    inputs, targets = draw(task, 48, 0.5, 3000).tensors()
    produced = greedy_answers(NeedleReader(digits), inputs, targets)
    assert exact_matches(produced, targets).all()
    scored = targets != IGNORE
    guess = torch.full_like(targets, DIGIT_0 + 7)  # always the digit 7
    assert (guess == targets)[scored].float().mean() == pytest.approx(0.1, abs=0.015)
    assert exact_matches(torch.where(scored, guess, IGNORE), targets).float().mean() < 0.005


def test_an_example_s_split_is_its_passkey_at_any_depth_and_length():
    task = Passkey(2)  # 100 passkeys, each met many times
    split_of_passkey: dict[tuple[int, ...], str] = {}
    for seq_len, depth in [(16, 0.0), (40, 0.5), (64, None)]:
        examples = draw(task, seq_len, depth, 400, seed=seq_len)
        for row, split in zip(examples.inputs.tolist(), examples.splits(0.2), strict=True):
            passkey = tuple(read_passkey(row, 2))
            assert split_of_passkey.setdefault(passkey, split) == split
    assert len(split_of_passkey) == 100
    assert {"train", "val", "test"} <= set(split_of_passkey.values())


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"seq_len": 64, "depth": -0.1}, r"depth=-0.1 is outside \[0, 1\]"),
        ({"seq_len": 64, "depth": 1.5}, r"depth=1.5 is outside \[0, 1\]"),
        ({"seq_len": 10, "depth": 0.5}, r"seq_len=10 cannot hold a 5-digit passkey.*>= 11"),
        ({"seq_len": 64}, r"give exactly seq_len and depth"),
        ({"seq_len": "64", "depth": 0.5}, r"seq_len must be an integer, depth a number or null"),
        ({"seq_len": 64, "depth": True}, r"seq_len must be an integer, depth a number or null"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(entry, message):
    with pytest.raises(ConfigError, match=r"^data\.test_settings\[3\]" + ".*" + message) as error:
        Passkey(5).setting(entry, "data.test_settings[3]")
    assert "\n" not in str(error.value)
    Passkey(5).setting({"seq_len": 11, "depth": 1.0}, "k")  # the shortest that fits


def test_digits_must_be_positive():
    with pytest.raises(ConfigError, match=r"^data\.task\.digits must be >= 1"):
        Passkey(0)


def test_the_preset_composes_into_a_length_by_depth_grid_scoring_the_digits_only():
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=.", "data=passkey"])
    dm = instantiate(cfg.data)
    assert cfg.model.block_size == dm.block_size == 256
    assert not dm.teacher_forced_answers  # exact match decodes greedily
    grid = [f"test_L{n}_d{d}" for n in (64, 128, 256) for d in (0, 25, 50, 75, 100)]
    assert dm.test_splits == ("test", *grid)
    inputs, targets = first_training_batch(dm)
    digits = cfg.data.task.digits
    assert inputs.shape == targets.shape
    assert inputs.shape[0] == cfg.data.batch_size and inputs.shape[1] in (64, 128)
    for row, answer in zip(inputs.tolist(), targets.tolist(), strict=True):
        scored = [t for t in answer if t != IGNORE]
        assert answer[-digits:] == scored  # the last `digits` positions, and only those
        assert [t - DIGIT_0 for t in scored] == read_passkey(row, digits)
