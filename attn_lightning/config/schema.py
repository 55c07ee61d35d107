"""Typed schemas of the configs, registered in Hydra's ConfigStore: a value of the wrong type
(`model.n_layer=four`) or an unknown option value (`model.pos_embedding=lerned`) is refused by
Hydra while composing, with its own message naming the key, before anything runs.

The schemas give types only: every value comes from the YAML files (`MISSING` here), so the
defaults live in one place. A YAML file opts in through its defaults list (`train_schema` in
train.yaml, `gpt_schema` in model/gpt.yaml, ...). Ranges and divisibility are the
constructors' checks; relations between groups and the machine are `training/validate.py`'s.

Enums are `Name`s, str enums that compare, print and format as their bare names; `plain()` in
training/builders.py turns them into plain strings before they reach constructors and
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Name(str, Enum):
    """An option value: equal to, printed and formatted as its bare name (`learned`), as the
    YAML writes it, so code that compares or formats strings never sees the difference."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class PosEmbedding(Name):
    learned = "learned"
    none = "none"


class NonFiniteLoss(Name):
    stop = "stop"
    skip = "skip"


class Resume(Name):
    auto = "auto"


class MatmulPrecision(Name):
    highest = "highest"
    high = "high"
    medium = "medium"


class TokenizerName(Name):
    char = "char"
    bpe = "bpe"


@dataclass
class ScheduleConfig:
    """conf/train.yaml's `schedule`: warm-up + cosine decay from optim.lr to min_lr."""

    min_lr: float = MISSING
    warmup_steps: int = MISSING
    decay_steps: int = MISSING


@dataclass
class TrainConfig:
    """conf/train.yaml. The groups are typed by their own options' schemas (or not at all:
    trainer, logger and callbacks are Lightning's and Hydra's, optim torch's, with their own
    checks)."""

    model: Any = MISSING
    attention: Any = MISSING
    # {layer index: attention config} for the layers that do not use `attention` (hybrid
    # stacks, filled by `+attention@layer_attention.<i>=<option>`)
    layer_attention: dict[str, Any] = MISSING
    data: Any = MISSING
    trainer: Any = MISSING
    logger: Any = MISSING
    callbacks: Any = MISSING
    paths: Any = MISSING
    seed: int = MISSING
    # conf/optim/*: a torch optimizer's own keyword arguments, which differ per class (SGD has
    # no betas), so no dataclass can type them; training/optim.py checks them against the
    # class's signature before fit.
    optim: Any = MISSING
    schedule: ScheduleConfig | None = MISSING
    on_nonfinite_loss: NonFiniteLoss = MISSING
    max_nonfinite_skips: int = MISSING
    compile: bool = MISSING
    ckpt_path: str | None = MISSING
    resume: Resume | None = MISSING
    checkpoint_every_n_steps: int = MISSING
    test: bool = MISSING
    matmul_precision: MatmulPrecision = MISSING


@dataclass
class GPTConfig:
    """conf/model/gpt.yaml (attn_lightning/model/gpt.py)."""

    _target_: str = MISSING
    n_layer: int = MISSING
    n_head: int = MISSING
    n_embd: int = MISSING
    block_size: int = MISSING
    dropout: float = MISSING
    bias: bool = MISSING
    pos_embedding: PosEmbedding = MISSING
    mlp: bool = MISSING
    vocab_size: int | None = None  # from the tokenizer; a value given must agree with it


@dataclass
class ShakespeareDataConfig:
    """conf/data/shakespeare.yaml (attn_lightning/data/shakespeare.py)."""

    _target_: str = MISSING
    data_dir: str = MISSING
    path: str | None = MISSING
    url: str = MISSING
    sha256: str = MISSING
    block_size: int = MISSING
    batch_size: int = MISSING
    val_fraction: float = MISSING
    val_windows: int | None = MISSING
    eval_batch_size: int = MISSING
    seed: int = MISSING
    tokenizer: TokenizerName = MISSING
    bpe_vocab_size: int = MISSING


@dataclass
class TaskDataConfig:
    """conf/data/<task>.yaml (attn_lightning/data/task_datamodule.py); `task` is the task's
    own config (`_target_` and its options)."""

    _target_: str = MISSING
    task: Any = MISSING
    vocab_size: int = MISSING
    block_size: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    val_size: int = MISSING
    test_size: int = MISSING
    test_long_size: int = MISSING
    eval_fraction: float = MISSING
    seed: int = MISSING
    eval_seed: int = MISSING


@dataclass
class TokenTaskDataConfig:
    """conf/data/<token task>.yaml (attn_lightning/data/token_tasks/datamodule.py); `task` is the
    task's own config (`_target_` and its options); a setting is a dict of the task's keys
    (MQAR: `{seq_len, num_kv_pairs}`), checked by the task."""

    _target_: str = MISSING
    task: Any = MISSING
    vocab_size: int = MISSING
    block_size: int = MISSING
    train_settings: list[dict[str, Any]] = MISSING
    test_settings: list[dict[str, Any]] = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    train_size: int | None = MISSING
    val_size: int = MISSING
    test_size: int = MISSING
    eval_fraction: float = MISSING
    seed: int = MISSING
    eval_seed: int = MISSING


@dataclass
class SampleConfig:
    """conf/sample.yaml (attn_lightning/sample.py)."""

    ckpt_path: str = MISSING
    prompt: str = MISSING
    prompt_file: str | None = MISSING
    max_new_tokens: int = MISSING
    num_samples: int = MISSING
    temperature: float = MISSING
    top_k: int | None = MISSING
    top_p: float | None = MISSING
    min_p: float | None = MISSING
    stop: str | None = MISSING
    stream: bool = MISSING
    compile: bool = MISSING
    seed: int = MISSING
    device: str = MISSING  # auto, cpu, cuda, cuda:1, ...
    trust_targets: list[str] = MISSING


@dataclass
class EvalConfig:
    """conf/eval.yaml (attn_lightning/eval.py)."""

    paths: Any = MISSING
    data: Any = MISSING
    ckpts: Any = MISSING  # one path, or a list of them
    lengths: Any = MISSING  # a list of token counts or null (eval.py checks each entry)
    split: str = MISSING
    max_tokens: int | None = MISSING
    batch_tokens: int = MISSING
    plot: bool = MISSING
    labels: list[str] | None = MISSING
    output_dir: str = MISSING
    device: str = MISSING
    seed: int = MISSING
    trust_targets: list[str] = MISSING


@dataclass
class AblationConfig:
    enabled: bool = MISSING
    max_batches: int = MISSING
    top_k: int = MISSING


@dataclass
class MasksConfig:
    enabled: bool = MISSING
    seq_len: int = MISSING
    n_embd: int = MISSING
    n_head: int = MISSING


@dataclass
class AnalyzeConfig:
    """conf/analyze.yaml (attn_lightning/analyze.py)."""

    paths: Any = MISSING
    data: Any = MISSING
    ckpt_path: str = MISSING
    text: str = MISSING
    output_dir: str | None = MISSING
    device: str = MISSING
    trust_targets: list[str] = MISSING
    seed: int = MISSING
    ablation: AblationConfig = MISSING
    masks: MasksConfig = MISSING


def register_schemas() -> None:
    """Store the schemas under the names the YAML defaults lists use (idempotent)."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(name="sample_schema", node=SampleConfig)
    store.store(name="eval_schema", node=EvalConfig)
    store.store(name="analyze_schema", node=AnalyzeConfig)
    store.store(name="gpt_schema", node=GPTConfig)
    store.store(name="shakespeare_schema", node=ShakespeareDataConfig)
    store.store(name="task_schema", node=TaskDataConfig)
    store.store(name="token_task_schema", node=TokenTaskDataConfig)
