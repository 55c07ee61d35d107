"""`python -m attn_lightning.eval ckpts=[<run dir>,<run dir>] lengths=[32,64,128,256]`: the loss
of trained checkpoints at several context lengths, without training.

The length-extrapolation test of position schemes (learned, none, rotary, ALiBi) and of attention
variants: every length scores the same targets of the split (the windows are explained in
attn_lightning/analysis/context_length.py); at the training length over the whole test split the
loss is the run's own `test/loss`. A run dir stands for its best checkpoint, the one the test
after fit evaluated. Writes to `output_dir`: `context_length.md` and `.csv` (model, length,
loss, perplexity, bits per character, targets, windows), `loss_vs_length.png` (`plot`: one
line per checkpoint, the training lengths marked) and `eval_config.yaml`.

Longer than training: the model is rebuilt for block_size = L with the trained weights, and used
only if it is the same function on the trained length. Refused before any evaluation, one line
each: a length past learned position embeddings (there is no embedding to look up); a variant
whose weights are sized by block_size (Linformer's per-segment compressions) or whose
computation changes with it (Nyströmformer's segments of block_size / num_landmarks).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from attn_lightning.analysis.context_length import (
    LengthResult,
    Logits,
    common_span,
    loss_against_length,
    loss_at_length,
    results_csv,
    results_markdown,
)
from attn_lightning.analysis.plots import save_png
from attn_lightning.atomic import write_text
from attn_lightning.config.device import resolve_device
from attn_lightning.config.entry_point import hydra_entry_point
from attn_lightning.config.schema import EvalConfig
from attn_lightning.data.shakespeare import ShakespeareDataModule
from attn_lightning.errors import ConfigError
from attn_lightning.model.gpt import GPT
from attn_lightning.runs.checkpoint import load_checkpoint
from attn_lightning.runs.data_config import data_config
from attn_lightning.runs.paths import best_checkpoint, run_dir_of
from attn_lightning.runs.record import class_name, read_record
from attn_lightning.training.lit_module import LitGPT

log = logging.getLogger(__name__)

SPLITS = ("test", "train")  # TinyShakespeare: held-out text (val windows are a subset), training
PROBE_ATOL, PROBE_RTOL = 1e-5, 1e-4  # same function: trained vs rebuilt attention outputs


@dataclass
class Checkpoint:
    """One model to evaluate: where it came from and how the table names it."""

    path: Path
    label: str
    module: LitGPT

    @property
    def training_length(self) -> int:
        return self.module.model.block_size


def checkpoint_path(entry: str) -> Path:
    """A checkpoint file as given, or a run dir's best checkpoint."""
    path = Path(entry).expanduser()
    if path.is_dir() and (path / "checkpoints").is_dir():
        return best_checkpoint(path)
    return path  # a missing file: read_checkpoint says so


def as_list(value: Any) -> list[Any]:
    """A list config value; a single value is a list of one."""
    if value is None:
        return []
    if isinstance(value, ListConfig | list | tuple):
        return list(value)
    return [value]


def check_lengths(lengths: Any) -> list[int] | None:
    """Sorted distinct positive ints; None (the default) stands for each training length."""
    if lengths is None:
        return None
    values = as_list(lengths)
    if not values:
        raise ConfigError("lengths=[] is empty: pass lengths=[32,64,128] (tokens per window)")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v <= 0]
    if bad:
        raise ConfigError(f"lengths: {bad[0]!r} is not a positive number of tokens")
    return sorted(set(values))


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(
            f"split={split!r} does not exist: choose one of {', '.join(SPLITS)} (test is the "
            "held-out text, whose validation windows are a subset)"
        )
    return split


def label_of(path: Path, module: LitGPT) -> str:
    """The run's attention option (summary.json) with its position embedding, e.g.
    `rotary, pos none`; the attention class outside a run dir."""
    record = read_record(run_dir_of(path))
    attention = module.hparams["attention"]
    name = record.attention_label if record else class_name(attention.get("_target_"))
    if attention.get("rope") and "rotary" not in name:
        name += "+rope"
    return f"{name}, pos {module.hparams['model'].get('pos_embedding', 'learned')}"


def model_at_length(module: LitGPT, length: int, key: str) -> GPT:
    """The checkpoint's model for windows of `length`: itself up to its block_size, else
    rebuilt for block_size = length with the same weights, refused (ConfigError naming `key`
    and why) where no such model exists."""
    model = module.model
    trained = model.block_size
    if length <= trained:
        return model
    if model.pos_emb is not None:
        raise ConfigError(
            f"{key}={length}: model.pos_embedding=learned has {trained} position embeddings "
            f"(the training block_size), none for positions {trained}..{length - 1}: evaluate "
            f"lengths <= {trained}, or train with model.pos_embedding=none (attention=rotary, "
            "alibi, or a variant without positions)"
        )
    hparams = copy.deepcopy(dict(module.hparams))
    hparams["model"] = {**hparams["model"], "block_size": length}
    try:
        longer = LitGPT(**hparams).model
    except ConfigError as error:
        raise ConfigError(f"{key}={length}: the model cannot be built that long: {error}") from None
    trained_state = model.state_dict()
    for name, value in longer.state_dict().items():
        if not isinstance(value, torch.Tensor):  # extra state (Performer's draw): no shape
            continue
        shape = tuple(trained_state[name].shape)
        if tuple(value.shape) != shape:
            raise ConfigError(
                f"{key}={length}: {name} is sized by block_size ({shape} at {trained}, "
                f"{tuple(value.shape)} at {length}): the checkpoint has no weights for longer "
                f"contexts; evaluate lengths <= {trained}"
            )
    longer.load_state_dict(trained_state)
    longer = longer.to(module.device).eval()
    check_same_function(model, longer, key, length)
    return longer


@torch.no_grad()
def check_same_function(model: GPT, longer: GPT, key: str, length: int) -> None:
    """Each layer's attention, rebuilt for `length`, gives the trained layer's outputs on the
    trained length (a random input): otherwise the rebuilt model is another model."""
    trained = model.block_size
    n_embd = model.tok_emb.embedding_dim
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, trained, n_embd, generator=generator).to(model.tok_emb.weight.device)
    for layer, (block, rebuilt) in enumerate(zip(model.blocks, longer.blocks, strict=True)):
        y, y_rebuilt = block.attn(x)[0], rebuilt.attn(x)[0]
        if not torch.allclose(y, y_rebuilt, atol=PROBE_ATOL, rtol=PROBE_RTOL):
            difference = (y - y_rebuilt).abs().max().item()
            raise ConfigError(
                f"{key}={length}: layer {layer}'s attention ({type(block.attn).__name__}) "
                f"built for block_size={length} computes other outputs on the same {trained} "
                f"positions (max difference {difference:.2g}): its computation depends on "
                "block_size (e.g. segments of block_size / num_segments), so no longer form of "
                f"this model exists; evaluate lengths <= {trained}"
            )


def split_tokens(cfg: DictConfig, checkpoint: Checkpoint, split: str) -> torch.Tensor:
    """The token stream of `split` from the checkpoint's own data (its run's config, else the
    data options of conf/eval.yaml), with a check that the vocabulary is the model's."""
    module = checkpoint.module
    data_cfg, source = data_config(cfg, run_dir_of(checkpoint.path), module.model.block_size)
    datamodule = instantiate(data_cfg)
    if not isinstance(datamodule, ShakespeareDataModule):
        raise ConfigError(
            f"{checkpoint.path} was trained on {data_cfg.get('_target_')} ({source}), which has "
            "no token stream to cut at other lengths: eval measures text corpora "
            "(data=shakespeare); a synthetic task's length test is its test_long split"
        )
    datamodule.prepare_data()
    if datamodule.tokenizer.state_dict() != module.tokenizer.state_dict():
        raise ConfigError(
            f"the data of {source} has another vocabulary than {checkpoint.path}: point the data "
            "options of conf/eval.yaml at the data the model was trained on"
        )
    train, held_out = datamodule.splits
    return {"train": train, "test": held_out}[split]


def load_checkpoints(cfg: DictConfig, device: torch.device) -> list[Checkpoint]:
    entries = as_list(cfg.ckpts)
    if not entries:
        raise ConfigError("ckpts=[] is empty: pass ckpts=[<run dir or .ckpt file>,...]")
    labels = as_list(cfg.labels)
    if labels and len(labels) != len(entries):
        raise ConfigError(f"labels has {len(labels)} names for {len(entries)} ckpts: one each")
    checkpoints = []
    for i, entry in enumerate(entries):
        path = checkpoint_path(str(entry))
        module = load_checkpoint(path, map_location=device, trusted=cfg.trust_targets)
        checkpoints.append(Checkpoint(path, str(labels[i]) if labels else "", module))
    for checkpoint in checkpoints:
        checkpoint.label = checkpoint.label or label_of(checkpoint.path, checkpoint.module)
    seen: dict[str, int] = {}
    for checkpoint in checkpoints:  # two runs of one variant: tell them apart
        seen[checkpoint.label] = seen.get(checkpoint.label, 0) + 1
        if seen[checkpoint.label] > 1:
            checkpoint.label += f" ({seen[checkpoint.label]})"
    return checkpoints


def model_logits(model: GPT) -> Logits:
    return lambda idx: model(idx).logits


def evaluate(cfg: DictConfig) -> tuple[dict[str, list[LengthResult]], dict[str, Path]]:
    """Every checkpoint at every length; returns {label: results} and {description: file}.
    Everything that can be refused is refused before the first evaluation."""
    lengths = check_lengths(cfg.lengths)
    split = check_split(cfg.split)
    if cfg.batch_tokens <= 0:
        raise ConfigError(f"batch_tokens must be positive, got {cfg.batch_tokens}")
    if cfg.max_tokens is not None and cfg.max_tokens <= 0:
        raise ConfigError(f"max_tokens must be positive or null, got {cfg.max_tokens}")
    device = resolve_device(cfg.device)
    checkpoints = load_checkpoints(cfg, device)
    if lengths is None:
        lengths = sorted({c.training_length for c in checkpoints})
    plans = []
    for checkpoint in checkpoints:  # every refusal first
        try:
            models = {n: model_at_length(checkpoint.module, n, "lengths") for n in lengths}
        except ConfigError as error:
            if len(checkpoints) == 1:
                raise
            raise ConfigError(f"{checkpoint.path}: {error}") from None
        tokens = split_tokens(cfg, checkpoint, split)
        plans.append(
            (checkpoint, models, tokens, common_span(len(tokens), lengths, cfg.max_tokens))
        )

    results: dict[str, list[LengthResult]] = {}
    for checkpoint, models, tokens, span in plans:
        rows = results.setdefault(checkpoint.label, [])
        for length, model in models.items():
            logits_of = model_logits(model)
            chars = checkpoint.module.token_chars
            rows.append(loss_at_length(logits_of, tokens, length, span, chars, cfg.batch_tokens))
            log.info("%s at %d: loss %.4f", checkpoint.label, length, rows[-1].loss)
    return results, write_outputs(cfg, checkpoints, results, split)


def write_outputs(
    cfg: DictConfig,
    checkpoints: list[Checkpoint],
    results: dict[str, list[LengthResult]],
    split: str,
) -> dict[str, Path]:
    out = Path(cfg.output_dir).expanduser()
    training = {c.label: c.training_length for c in checkpoints}
    lines = [
        "# Loss against context length",
        "",
        f"Split `{split}`: at every length a model scores the same targets (`tokens`), cut "
        "into non-overlapping windows of that length. loss: mean cross-entropy over every target "
        "(nats/token); ppl: exp(loss); bpc: bits per character.",
        "",
        *[f"- {c.label}: `{c.path}` (trained at {c.training_length})" for c in checkpoints],
        "",
        *results_markdown(results),
    ]
    saved = OmegaConf.to_container(cfg, enum_to_str=True)
    saved.get("paths", {}).pop("output_dir", None)  # Hydra's run dir: `.` here, not ours
    files = {
        "table": write_text(out / "context_length.md", "\n".join(lines) + "\n"),
        "csv": write_text(out / "context_length.csv", results_csv(results)),
    }
    if cfg.plot:
        figure = loss_against_length(results, training)
        files["plot"] = save_png(figure, out / "loss_vs_length.png")
    config = OmegaConf.to_yaml(OmegaConf.create(saved), resolve=True)
    files["config"] = write_text(out / "eval_config.yaml", config)
    return files


@hydra_entry_point("eval", schema=EvalConfig)
def main(cfg: DictConfig) -> None:
    _, files = evaluate(cfg)
    print(files["table"].read_text(encoding="utf-8").rstrip())
    print("\nWritten:")
    for description, path in files.items():
        print(f"  {path}  ({description})")


if __name__ == "__main__":
    main()
