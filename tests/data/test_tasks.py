"""Synthetic tasks: right answers (checked with plain Python), the loss mask, exact match,
determinism from (seed, step, rank), disjoint splits, block-size checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from attn_lightning.data.interface import IGNORE
from attn_lightning.data.task_datamodule import (
    TaskBatches,
    TaskDataModule,
    encode_examples,
)
from attn_lightning.data.tasks import AdditionTask, CopyTask, SortingTask, split_of
from attn_lightning.model.gpt import GPTOutput
from attn_lightning.training.answers import exact_matches, greedy_answers

TASKS = {
    "copy": CopyTask(length=16, long_length=24, min_length=3),
    "sorting": SortingTask(length=16, long_length=24, num_symbols=10, min_length=3),
    "addition": AdditionTask(num_digits=3, long_num_digits=5),
    "addition_msd_first": AdditionTask(num_digits=3, long_num_digits=5, reverse_answer=False),
}


def check_answer(name: str, prompt: str, answer: str) -> None:
    """The task's rule, written independently of the task classes."""
    if name == "copy":
        assert answer == prompt
    elif name == "sorting":
        assert answer == "".join(sorted(prompt))  # digits 0-9 sort as characters
    else:
        a, b = prompt.split("+")
        assert len(a) == len(b)
        written = answer[::-1] if name == "addition" else answer
        assert int(written) == int(a) + int(b) and len(answer) == len(a) + 1


def decode_rows(task, inputs: Tensor, targets: Tensor) -> list[tuple[str, str, str]]:
    """(whole sequence, prompt, answer) per row, read back from a batch's token ids."""
    chars = task.vocabulary
    rows = []
    for x, y in zip(inputs.tolist(), targets.tolist(), strict=True):
        seq = "".join(chars[i] for i in x)
        seq += chars[y[-1]] if y[-1] != IGNORE else "\n"  # the final target, or padding
        kept = [j for j, t in enumerate(y) if t != IGNORE]
        prompt = seq[: kept[0]]
        answer = "".join(chars[y[j]] for j in kept)
        rows.append((seq, prompt, answer))
    return rows


@pytest.mark.parametrize("name", TASKS)
def test_generated_examples_are_well_formed_and_right(name: str):
    task = TASKS[name]
    batch = TaskBatches(task, batch_size=200, num_batches=1, seed=0, eval_fraction=0.05)[0]
    lengths = set()
    for seq, prompt, answer in decode_rows(task, *batch):
        body = seq.rstrip("\n")  # padding
        assert set(seq[len(body) :]) <= {"\n"}
        assert body == f"{prompt}={answer}" and body.count("=") == 1 and body.endswith(".")
        check_answer(name, prompt, answer.removesuffix("."))
        lengths.add(len(prompt))
    if name in ("copy", "sorting"):
        assert min(lengths) == 3 and max(lengths) == 16  # min_length to length
    rng = np.random.default_rng(0)
    for _ in range(50):  # the length-generalisation split: longer than any training prompt
        prompt, answer = task.sample(rng, long=True)
        check_answer(name, prompt, answer)
        assert len(prompt) > task.max_lengths()[0]


def test_loss_mask_covers_exactly_the_answer_and_its_end():
    examples = [("123+456", "9750"), ("3141", "3141"), ("27", "27")]
    inputs, targets = encode_examples(examples, "\n=.0123456789+", length=14)
    assert inputs.shape == targets.shape == (3, 13)
    for row, (prompt, answer) in enumerate(examples):
        kept = (targets[row] != IGNORE).nonzero().flatten().tolist()
        # target j predicts token j + 1: the answer starts right after the "=" at len(prompt)
        assert kept == list(range(len(prompt), len(prompt) + len(answer) + 1))
        seq = f"{prompt}={answer}."
        assert "".join("\n=.0123456789+"[t] for t in targets[row, kept]) == answer + "."
        assert "".join("\n=.0123456789+"[t] for t in inputs[row, : len(seq) - 1]) == seq[:-1]


class Oracle(nn.Module):
    """A stand-in GPT that knows each task's answers (optionally off by one)."""

    def __init__(self, task, off_by_one: bool = False) -> None:
        super().__init__()
        self.task, self.off_by_one, self.block_size = task, off_by_one, 64
        self.dummy = nn.Parameter(torch.zeros(()))

    def next_ids(self, idx: Tensor) -> Tensor:  # (B, T) -> (B, T): the token after each prefix
        chars = self.task.vocabulary
        out = torch.zeros_like(idx)
        for b, row in enumerate(idx.tolist()):
            text = "".join(chars[i] for i in row)
            if "=" not in text:
                continue
            prompt = text.split("=")[0]
            a, c = prompt.split("+") if "+" in prompt else (prompt, None)
            if c is None:
                answer = prompt if isinstance(self.task, CopyTask) else "".join(sorted(prompt))
                if self.off_by_one:
                    answer = answer[1:] + answer[0]
            else:
                total = int(a) + int(c) + int(self.off_by_one)
                answer = f"{total:0{len(a) + 1}d}"[::-1]
            full = f"{prompt}={answer}."
            for t in range(len(prompt), len(row)):
                out[b, t] = chars.index(full[t + 1]) if t + 1 < len(full) else 0
        return out

    def forward(self, idx: Tensor, targets: Tensor | None = None, **_) -> GPTOutput:
        logits = 10.0 * nn.functional.one_hot(self.next_ids(idx), len(self.task.vocabulary))
        logits = logits.float() + self.dummy
        loss = None
        if targets is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return GPTOutput(logits, loss, None)

    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 0.0) -> Tensor:
        assert temperature == 0
        for _ in range(max_new_tokens):
            idx = torch.cat([idx, self.next_ids(idx)[:, -1:]], dim=1)
        return idx


@pytest.mark.parametrize("name", ["copy", "sorting", "addition"])
def test_exact_match_is_one_for_an_oracle_and_zero_off_by_one(name: str):
    task = TASKS[name]
    inputs, targets = TaskBatches(task, 32, num_batches=1, seed=1, eval_fraction=0.05)[0]
    perfect = exact_matches(greedy_answers(Oracle(task), inputs, targets), targets)
    assert perfect.all()
    off = greedy_answers(Oracle(task, off_by_one=True), inputs, targets)
    wrong = exact_matches(off, targets)
    if name == "sorting":  # rotating a sorted answer changes it unless all symbols are equal
        assert wrong.float().mean() < 0.05
    else:
        assert not wrong.any()
    # greedy decoding, not teacher forcing: a prediction is written only where targets are kept
    assert torch.equal(off == IGNORE, targets == IGNORE)


def test_lit_module_logs_exact_match_one_for_an_oracle(tmp_path):
    from helpers import quiet_trainer, tiny_lit_gpt

    task = TASKS["addition"]
    dm = TaskDataModule(
        task,
        vocab_size=14,
        block_size=20,
        batch_size=8,
        val_size=40,
        test_size=40,
        test_long_size=40,
        eval_batch_size=16,
    )
    for off_by_one, expected in ((False, 1.0), (True, 0.0)):
        module = tiny_lit_gpt(dm.tokenizer.state_dict(), n_head=1, n_embd=8, block_size=20)
        module.model = Oracle(task, off_by_one)
        trainer = quiet_trainer(default_root_dir=tmp_path)
        (val,) = trainer.validate(module, datamodule=dm, verbose=False)
        assert val["val/exact_match"] == expected
        assert (val["val/answer_token_acc"] == 1.0) == (not off_by_one)
        results = trainer.test(module, datamodule=dm, verbose=False)
        metrics = {k: v for r in results for k, v in r.items()}
        assert metrics["test/exact_match"] == metrics["test_long/exact_match"] == expected


def test_training_batches_are_a_pure_function_of_seed_step_and_rank():
    task = TASKS["copy"]

    def batch(seed: int, step: int, rank: int) -> Tensor:
        return TaskBatches(task, 16, num_batches=100, seed=seed, eval_fraction=0.05, rank=rank)[
            step
        ][0]

    assert torch.equal(batch(1, 5, 0), batch(1, 5, 0))
    assert not torch.equal(batch(1, 5, 0), batch(1, 6, 0))
    assert not torch.equal(batch(1, 5, 0), batch(1, 5, 1))
    assert not torch.equal(batch(1, 5, 0), batch(2, 5, 0))
    resumed = TaskBatches(task, 16, num_batches=100, seed=1, eval_fraction=0.05, first_batch=40)
    assert torch.equal(resumed[0][0], batch(1, 40, 0))
    assert torch.equal(resumed[59][0], batch(1, 99, 0))


def test_evaluation_sets_are_fixed_and_disjoint_from_each_other_and_training():
    task = AdditionTask(num_digits=3, long_num_digits=4)  # a small space: 10^6 prompts
    dm = TaskDataModule(task, 14, 16, 64, val_size=500, test_size=1000, test_long_size=200)
    val = {p for p, _ in dm.examples("val")}
    test = {p for p, _ in dm.examples("test")}
    assert len(val) == 500 and len(test) == 1000 and not val & test
    again = TaskDataModule(task, 14, 16, 64, val_size=500, test_size=1000, seed=7)
    assert again.examples("val") == dm.examples("val")  # independent of the training seed
    train = set()
    batches = TaskBatches(task, 64, num_batches=200, seed=0, eval_fraction=0.05)
    for i in range(200):
        train |= {seq for seq, _, _ in decode_rows(task, *batches[i])}
    train_prompts = {seq.split("=")[0] for seq in train}
    # Without the hash partition about 19 of 12,800 random training prompts would be in them.
    assert len(train_prompts) > 12_000 and not train_prompts & (val | test)
    assert all(split_of(p, 0.05) == "val" for p in val)
    long = [p for p, _ in dm.examples("test_long")]
    assert len(set(long)) == 200 and all(len(p) == 9 for p in long)


def test_block_sizes_too_small_are_refused_with_what_to_set():
    task = CopyTask(length=16, long_length=24)  # longest input: 24 + 1 + 24 = 49 tokens
    with pytest.raises(ValueError, match=r"data\.block_size=49"):
        TaskDataModule(task, vocab_size=13, block_size=48, batch_size=8)
    with pytest.raises(ValueError, match=r"data\.vocab_size=13"):
        TaskDataModule(task, vocab_size=12, block_size=49, batch_size=8)
    dm = TaskDataModule(task, vocab_size=13, block_size=49, batch_size=8)
    x, _ = dm.eval_set("test_long")[:]
    assert x.shape[1] == 49  # the bound is tight
