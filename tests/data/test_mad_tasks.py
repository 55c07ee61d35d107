"""MAD's six tasks: every scored target is the answer a reader of the paper computes from the
inputs alone (a plain loop here), nothing else is scored, each split key is what makes the
example, a constant guess scores chance, and impossible settings are one-line errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from attn_lightning.data.interface import IGNORE
from attn_lightning.data.token_tasks.mad.compression import Compression
from attn_lightning.data.token_tasks.mad.fuzzy_recall import FuzzyRecall, distinct_ids
from attn_lightning.data.token_tasks.mad.in_context_recall import InContextRecall
from attn_lightning.data.token_tasks.mad.memorization import Memorization
from attn_lightning.data.token_tasks.mad.noisy_recall import NoisyRecall
from attn_lightning.data.token_tasks.mad.recall import first_occurrence
from attn_lightning.data.token_tasks.mad.selective_copying import SelectiveCopying
from attn_lightning.data.token_tasks.task import TokenExamples, TokenTask
from attn_lightning.errors import ConfigError


def draw(task: TokenTask, entry: dict, count: int, seed: int = 0) -> TokenExamples:
    return task.draw(np.random.default_rng(seed), task.setting(entry, "test"), count)


def rows(examples: TokenExamples) -> list[tuple[list[int], list[int]]]:
    return list(zip(examples.inputs.tolist(), examples.targets.tolist(), strict=True))


def recall_answers(tokens: list[int], num_keys: int, num_values: int) -> list[int]:
    """The targets of a (noisy) recall example, read pair by pair: a key seen in an earlier
    pair asks for the value it was bound to; noise pairs, first sightings and the last
    position are not scored. Also checks each key keeps one value within the example."""
    bound: dict[int, int] = {}
    answers = [IGNORE] * len(tokens)
    for t in range(0, len(tokens), 2):
        key, value = tokens[t], tokens[t + 1]
        if key >= num_keys:  # noise: both tokens outside the key and value ids
            assert key >= num_keys + num_values and value >= num_keys + num_values
            continue
        assert num_keys <= value < num_keys + num_values
        if key in bound:
            assert bound[key] == value
            answers[t] = value
        bound[key] = value
    return answers


@pytest.mark.parametrize("seq_len", [4, 10, 64])
def test_in_context_recall_scores_each_repeated_key_s_value_and_ends_on_a_probe(seq_len):
    task = InContextRecall(vocab_size=16)
    examples = draw(task, {"seq_len": seq_len}, 300)
    assert examples.inputs.shape == examples.targets.shape == (300, seq_len)
    for inputs, targets in rows(examples):
        assert targets == recall_answers(inputs, num_keys=8, num_values=8)
        assert targets[-2] == inputs[-1] != IGNORE  # the probe's key was presented before
        assert targets[-1] == IGNORE
    assert (examples.split_keys == examples.inputs).all()


def test_noisy_recall_skips_noise_pairs_and_noise_is_as_frequent_as_asked():
    task = NoisyRecall(vocab_size=32, noise_vocab_size=16)
    examples = draw(task, {"seq_len": 128, "frac_noise": 0.4}, 400)
    noise_slots = 0
    for inputs, targets in rows(examples):
        assert targets == recall_answers(inputs, num_keys=8, num_values=8)
        noise_slots += sum(inputs[t] >= 16 for t in range(0, 126, 2))
        assert targets[-2] != IGNORE  # a key was presented despite the noise
    assert noise_slots / (400 * 63) == pytest.approx(0.4, abs=0.02)
    assert task.setting({"seq_len": 128, "frac_noise": 0.4}, "k").name == "L128_noise40"
    assert task.setting({"seq_len": 64, "frac_noise": 0.125}, "k").name == "L64_noise12p5"


def test_recall_answers_are_uniform_over_values_so_a_constant_guess_scores_chance():
    examples = draw(InContextRecall(vocab_size=16), {"seq_len": 128}, 500)
    answers = examples.targets[examples.targets != IGNORE]
    assert set(answers.tolist()) == set(range(8, 16))
    most_common_share = Counter(answers.tolist()).most_common(1)[0][1] / len(answers)
    assert most_common_share == pytest.approx(1 / 8, abs=0.01)


def test_the_probe_key_is_uniform_over_the_distinct_keys_presented():
    # 3 keys in 1 pair before the probe: the probe is that pair's key; with 2 pairs, either
    # of the two distinct keys equally often (not weighted by how often a key occurs)
    examples = draw(InContextRecall(vocab_size=6), {"seq_len": 8}, 6000)
    picks = Counter()
    for inputs, _ in rows(examples):
        keys = [inputs[0], inputs[2], inputs[4]]
        if len(set(keys)) == 2:
            repeated = max(set(keys), key=keys.count)
            picks["repeated" if inputs[6] == repeated else "once"] += 1
    assert picks["repeated"] / sum(picks.values()) == pytest.approx(0.5, abs=0.03)


def test_first_occurrence_points_at_the_first_equal_entry():
    codes = np.array([[5, 3, 5, 5, 3, 9], [1, 1, 1, 2, 2, 0]])
    expected = [[row.index(c) for c in row] for row in codes.tolist()]
    assert first_occurrence(codes).tolist() == expected


def fuzzy_pairs(stream: list[int], num_keys: int, pad: int) -> list[tuple[list[int], list[int]]]:
    """Pads off the front, then maximal runs of key ids and of value ids, as (key, value)."""
    start = 0
    while stream[start] == pad:
        start += 1
    pairs: list[tuple[list[int], list[int]]] = []
    for token in stream[start:]:
        assert token != pad
        is_key = token < num_keys
        if is_key and (not pairs or pairs[-1][1]):
            pairs.append(([], []))
        pairs[-1][0 if is_key else 1].append(token)
    return pairs


def fuzzy_check(task: FuzzyRecall, entry: dict, count: int, key_sizes: set[int]) -> None:
    """Each row re-read from its stream (inputs, then the last target: the probe's last
    value token): a repeated key (and the final probe) asks for every token of its value."""
    examples = draw(task, entry, count)
    K, W, pad = task.key_motif_size, task.value_motif_size, task.vocab_size - 1
    seen_sizes = set()
    for inputs, targets in rows(examples):
        stream = [*inputs, targets[-1]]
        pairs = fuzzy_pairs(stream, task.num_keys, pad)
        expected = [IGNORE] * len(stream)
        position = len(stream) - sum(len(k) + len(v) for k, v in pairs)
        assert position >= 1  # at least one pad
        bound: dict[tuple[int, ...], list[int]] = {}
        for i, (key, value) in enumerate(pairs):
            assert len(set(key)) == len(key) and len(set(value)) == len(value)
            assert 1 <= len(value) <= W
            seen_sizes.add(len(key))
            position += len(key)
            if tuple(key) in bound:
                assert bound[tuple(key)] == value
                for j, token in enumerate(value):
                    expected[position + j] = token
            else:
                assert i < len(pairs) - 1  # the probe re-asks a key of the stream
            bound[tuple(key)] = value
            position += len(value)
        assert targets == expected[1:]
    assert seen_sizes == key_sizes
    assert max(sizes for sizes in seen_sizes) <= K


def test_fuzzy_recall_scores_the_whole_value_of_each_repeated_key_motif():
    task = FuzzyRecall(vocab_size=16, key_motif_size=3, value_motif_size=3)
    fuzzy_check(task, {"seq_len": 64}, 400, key_sizes={1, 2, 3})


def test_fuzzy_recall_tests_with_keys_of_the_largest_motif_size_only():
    task = FuzzyRecall(vocab_size=16, key_motif_size=3, value_motif_size=3)
    fuzzy_check(task, {"seq_len": 128, "min_key_size": 3}, 200, key_sizes={3})
    assert task.setting({"seq_len": 128, "min_key_size": 3}, "k").name == "L128_k3"
    assert task.setting({"seq_len": 128}, "k").name == "L128"


def test_distinct_ids_are_uniform_over_ordered_subsets():
    ids = distinct_ids(np.random.default_rng(0), (30000,), 4, 2)
    counts = Counter(map(tuple, ids.tolist()))
    assert set(counts) == {(a, b) for a in range(4) for b in range(4) if a != b}
    assert max(counts.values()) / min(counts.values()) < 1.15


def test_selective_copying_asks_for_the_non_blank_tokens_in_order_after_the_copy_token():
    task = SelectiveCopying(vocab_size=8)
    examples = draw(task, {"seq_len": 20, "num_tokens_to_copy": 4}, 500)
    blank, copy = 6, 7
    gaps_after_last = 0
    for (inputs, targets), keys in zip(rows(examples), examples.split_keys.tolist(), strict=True):
        here = inputs.index(copy)
        content = [t for t in inputs[:here] if t != blank]
        assert here == 20 - 4 - 1 and len(content) == 4 and copy not in inputs[here + 1 :]
        assert inputs[here + 1 :] == [blank] * 4
        assert targets == [IGNORE] * (here + 1) + content
        assert keys == content
        gaps_after_last += inputs[here - 1] == blank
    assert gaps_after_last == 0  # MAD's blanks all fall before some content token


def test_selective_copying_spreads_blanks_over_the_gaps_and_guesses_score_chance():
    task = SelectiveCopying(vocab_size=16)
    examples = draw(task, {"seq_len": 64, "num_tokens_to_copy": 8}, 2000)
    before_first = (examples.inputs[:, 0] == 14).mean()  # a blank before the first token
    assert before_first == pytest.approx(1 - (7 / 8) ** (64 - 17), abs=0.01)
    answers = examples.targets[examples.targets != IGNORE].tolist()
    assert Counter(answers).most_common(1)[0][1] / len(answers) == pytest.approx(1 / 14, abs=0.01)


def test_compression_writes_the_tokens_back_after_the_compression_token():
    task = Compression(vocab_size=5)
    examples = draw(task, {"num_tokens": 6}, 200)
    assert examples.inputs.shape == (200, 12)
    for (inputs, targets), keys in zip(rows(examples), examples.split_keys.tolist(), strict=True):
        content = inputs[: inputs.index(4)]
        assert len(content) == 6 and inputs[6:] == [4] * 6
        assert targets == [IGNORE] * 6 + content
        assert keys == content
    assert task.setting({"num_tokens": 31}, "k").seq_len == 62


def test_memorization_answers_every_key_with_one_fixed_value_in_every_draw():
    task = Memorization(vocab_size=16)  # keys 0-6, values 7-14, insert 15
    value_of: dict[int, int] = {}
    for seed in range(3):  # training, validation and test draws alike
        examples = draw(task, {"seq_len": 32}, 200, seed=seed)
        for (inputs, targets), keys in zip(
            rows(examples), examples.split_keys.tolist(), strict=True
        ):
            assert inputs[1::2] == [15] * 16 and targets[0::2] == [IGNORE] * 16
            assert keys == inputs[0::2]
            for key, value in zip(inputs[0::2], targets[1::2], strict=True):
                assert 0 <= key < 7 and 7 <= value < 15
                assert value_of.setdefault(key, value) == value
    assert len(value_of) == 7 and len(set(value_of.values())) == 7  # one value per key
    other = draw(Memorization(vocab_size=16, map_seed=1), {"seq_len": 32}, 50)
    other_keys, other_values = other.inputs[:, 0::2].ravel(), other.targets[:, 1::2].ravel()
    other_map = dict(zip(other_keys.tolist(), other_values.tolist(), strict=True))
    assert other_map != value_of


def test_a_constant_guess_scores_one_over_the_keys_on_memorization():
    examples = draw(Memorization(vocab_size=256), {"seq_len": 32}, 500)
    answers = examples.targets[examples.targets != IGNORE].tolist()
    assert Counter(answers).most_common(1)[0][1] / len(answers) == pytest.approx(1 / 127, abs=0.004)


def test_the_same_seed_draws_the_same_examples():
    for task, entry in [
        (FuzzyRecall(16), {"seq_len": 64}),
        (NoisyRecall(32), {"seq_len": 32, "frac_noise": 0.2}),
        (SelectiveCopying(16), {"seq_len": 40, "num_tokens_to_copy": 4}),
    ]:
        a, b = draw(task, entry, 20, seed=5), draw(task, entry, 20, seed=5)
        assert (a.inputs == b.inputs).all() and (a.targets == b.targets).all()


def test_fuzzy_recall_draws_large_counts_in_chunks_alike():
    task = FuzzyRecall(16)
    task.draw_chunk = 7
    examples = draw(task, {"seq_len": 48}, 20)
    assert examples.inputs.shape == (20, 48)
    fuzzy_check(task, {"seq_len": 48}, 20, key_sizes={1, 2, 3})


@pytest.mark.parametrize(
    ("task", "entry", "message"),
    [
        (InContextRecall(16), {"seq_len": 127}, r"data\.x\[1\]\.seq_len must be even"),
        (InContextRecall(16), {"seq_len": 2}, r"data\.x\[1\]\.seq_len must be even and >= 4"),
        (InContextRecall(16), {"seq_len": 64, "frac_noise": 0.2}, r"data\.x\[1\].*unknown"),
        (NoisyRecall(32), {"seq_len": 64}, r"data\.x\[1\].*missing frac_noise"),
        (NoisyRecall(32), {"seq_len": 64, "frac_noise": 1.0}, r"data\.x\[1\]\.frac_noise"),
        (FuzzyRecall(16), {"seq_len": 64, "min_key_size": 4}, r"data\.x\[1\]\.min_key_size"),
        (FuzzyRecall(16), {"seq_len": 10}, r"data\.x\[1\]\.seq_len must be >= 12"),
        (SelectiveCopying(16), {"seq_len": 32, "num_tokens_to_copy": 16}, r"data\.x\[1\]: 16"),
        (SelectiveCopying(16), {"seq_len": "long", "num_tokens_to_copy": 1}, r"\.seq_len"),
        (Compression(16), {"num_tokens": 0}, r"data\.x\[1\]\.num_tokens"),
        (Memorization(16), {"seq_len": 31}, r"data\.x\[1\]\.seq_len must be even"),
    ],
)
def test_impossible_settings_are_one_line_errors_naming_the_entry(task, entry, message):
    with pytest.raises(ConfigError, match=message) as error:
        task.setting(entry, "data.x[1]")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: FuzzyRecall(8, key_motif_size=4),
            r"data\.task\.key_motif_size must be in 1 \.\. 3",
        ),
        (lambda: FuzzyRecall(8, value_motif_size=5), r"data\.task\.value_motif_size"),
        (lambda: FuzzyRecall(2**20, key_motif_size=4), r"data\.task\.key_motif_size=4"),
        (lambda: NoisyRecall(16, noise_vocab_size=15), r"data\.task\.noise_vocab_size"),
        (lambda: SelectiveCopying(2), r"data\.vocab_size must be >= 3"),
        (lambda: Memorization(3), r"data\.vocab_size must be >= 4"),
    ],
)
def test_a_vocabulary_too_small_for_the_task_is_a_one_line_error(make, message):
    with pytest.raises(ConfigError, match=message) as error:
        make()
    assert "\n" not in str(error.value)
