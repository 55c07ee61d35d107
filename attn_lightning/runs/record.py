"""The run record: `summary.json` in a run dir, everything a comparison knows about a run
beside its metrics CSV. One typed object (`RunRecord`), one reader, one writer.

A run's record is filled in parts, each producer handing its values to `update_record`, which
merges them into what is there and rewrites the file atomically:
- the sweep report (Hydra callback) at job start: status `running`, overrides, the settings a
  fair comparison shares, the process; at job end: status `completed`/`failed`, error, wall time;
- `train()` after fit and after test: the variant (config option and config), the data option
  (the task), the device, parameter count, the decoding state's bytes per sequence at the
  block size, steps trained, final metrics.
  These are what every comparison needs, so no optional callback owns them;
- the memory monitor: whether its peaks are the run's own or the process's;
- the run report: what only it computes (attention pattern, statistics, layer-0 mask).
A run killed midway keeps `running`; a dir without the file has no record (`incomplete`).

Reading forgives a damaged file field by field: a missing key is the field's default, a value
of the wrong type too, and a key that is no field is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.core.hydra_config import HydraConfig

from attn_lightning.analysis.state_size import decoding_state_bytes
from attn_lightning.atomic import write_text

if TYPE_CHECKING:
    import lightning as L

    from attn_lightning.model.gpt import GPT

log = logging.getLogger(__name__)

SUMMARY = "summary.json"


@dataclass
class RunRecord:
    """What is known about one run. None (or empty) where nothing was recorded."""

    status: str | None = None  # running, completed, failed
    error: str | None = None  # `Type: first line` of a failed job's error
    wall_time_s: float | None = None
    overrides: list[str] = field(default_factory=list)  # the job's command-line overrides
    comparable: dict[str, Any] = field(default_factory=dict)  # settings a fair comparison shares
    process: str | None = None  # host:pid, jobs in one process share its memory counters
    peak_memory_scope: str | None = None  # run (reset at fit start) or process
    attention_option: str | None = None  # the config option, `attention=gqa`: the variant's name
    attention: dict[str, Any] = field(default_factory=dict)  # its resolved config (_target_, ...)
    attention_layout: list[str] | None = None  # each layer's variant, ["gla", "vanilla", ...]
    data_option: str | None = None  # the data config option, `data=mqar`: the run's task
    device: str | None = None  # what it trained on: `cpu`, `cuda: NVIDIA H100 80GB HBM3`
    params: int | None = None  # as GPT.num_params counts them
    decoding_state_bytes: int | None = None  # per sequence, all layers (analysis/state_size.py)
    decoding_state_context: int | None = None  # ... after this many tokens: the block size
    step: int | None = None  # optimizer steps trained
    metrics: dict[str, float] = field(default_factory=dict)  # final values, fit then test
    attention_pattern: list[list[float]] | None = None  # (T, T), mean over layers and heads
    attention_stats: dict[str, list[list[float]]] | None = None  # {name: [layer][head]}
    attention_mask: list[str] | None = None  # layer 0's (query, key) pairs, rows of '0'/'1'

    @property
    def variant(self) -> str:
        """The attention variant by its config option (gqa and mqa share a class); its class
        name where no option was recorded (a run outside Hydra's command line)."""
        return self.attention_option or class_name(self.attention.get("_target_"))

    @property
    def attention_label(self) -> str:
        """The variant with the layers of a hybrid stack that differ from it (`gla+vanilla@1`);
        the variant alone for a plain stack and for records without a layout."""
        return layout_label(self.variant, self.attention_layout or [])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record from summary.json's contents: fields of the wrong type are left empty."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: _checked(k, v) for k, v in data.items() if k in known}
        return cls(**{k: v for k, v in values.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        """summary.json's contents: the fields that hold something."""
        defaults = RunRecord()
        data = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and value != getattr(defaults, f.name):
                data[f.name] = value
        return data


def _kinds(hint: Any) -> tuple[type, ...]:
    """`list[str] | None` -> (list,): what a field's JSON value may be."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(a) or a for a in args if a is not type(None))


_KINDS = {name: _kinds(hint) for name, hint in typing.get_type_hints(RunRecord).items()}


def _checked(name: str, value: Any) -> Any:
    """The value if it has the field's type (any number for a number field, cast), else None:
    one damaged field must not cost a comparison the whole run."""
    kinds = _KINDS[name]
    if isinstance(value, bool):  # JSON true is no number here
        return None
    if int in kinds or float in kinds:
        if not isinstance(value, int | float):
            return None
        return int(value) if int in kinds else float(value)
    if not isinstance(value, kinds):
        return None
    if name == "metrics":
        return {
            k: float(v)
            for k, v in value.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
    return value


def class_name(target: str | None) -> str:
    """`attn_lightning.attention.vanilla.VanillaAttention` -> `VanillaAttention`."""
    return (target or "").rsplit(".", 1)[-1]


def chosen_option(group: str) -> str | None:
    """The option this Hydra run picked for a config group (`attention` -> `gqa`); None outside
    a Hydra run (the compose API, a test)."""
    if not HydraConfig.initialized():
        return None
    return HydraConfig.get().runtime.choices.get(group)


def variant_name(attention: Mapping[str, Any]) -> str:
    """This run's variant as a reader knows it: its config option (`gqa`), else (outside a
    Hydra run) the class its config builds."""
    return chosen_option("attention") or class_name(attention.get("_target_"))


def layout_label(main: str, layout: list[str]) -> str:
    """`gla`, ["gla", "vanilla", "gla", "vanilla"] -> `gla+vanilla@1,3`: the main variant, then
    each other variant with the layers that use it."""
    others: dict[str, list[str]] = {}
    for index, name in enumerate(layout):
        if name != main:
            others.setdefault(name, []).append(str(index))
    return main + "".join(f"+{name}@{','.join(layers)}" for name, layers in others.items())


def attention_layout(module: L.LightningModule) -> list[str]:
    """Each layer's variant: `attention`'s option, or for a layer of `layer_attention` the
    option its override chose (Hydra records `attention@layer_attention.<i>`); class names
    outside a Hydra run."""
    layout = [variant_name(module.hparams["attention"])] * len(module.model.blocks)
    for key, cfg in (module.hparams.get("layer_attention") or {}).items():
        option = chosen_option(f"attention@layer_attention.{key}")
        layout[int(key)] = option or class_name(cfg.get("_target_"))
    return layout


def device_name(device: torch.device) -> str:
    """`cpu`, or a GPU's type with its name (`cuda: NVIDIA H100 80GB HBM3`): the machine a
    report states its numbers for."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def read_record(run_dir: str | Path) -> RunRecord | None:
    """The run's record; None when there is none or it cannot be read (a report must not die
    on one damaged run)."""
    try:
        data = json.loads((Path(run_dir) / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return RunRecord.from_dict(data) if isinstance(data, dict) and data else None


def update_record(run_dir: str | Path, **values: Any) -> Path:
    """Merge `values` (RunRecord fields; an unknown name is a TypeError) into the run's
    record and write it atomically."""
    record = dataclasses.replace(read_record(run_dir) or RunRecord(), **values)
    text = json.dumps(record.to_dict(), indent=1, sort_keys=True)
    return write_text(Path(run_dir) / SUMMARY, text)


def decoding_state(model: GPT) -> dict[str, int | None]:
    """The record's decoding-state fields: bytes per sequence at the full block size (one
    forward of block_size tokens at batch 1). A layer whose cache cannot be measured (a
    user's own class with a broken decode) leaves them empty with a warning: the run's
    other results are recorded all the same."""
    context = model.block_size
    try:
        size = decoding_state_bytes(model, context)
    except Exception as error:  # any failure of user code: reported, not raised
        log.warning("decoding state not recorded: %s: %s", type(error).__name__, error)
        return {"decoding_state_bytes": None, "decoding_state_context": None}
    return {"decoding_state_bytes": size, "decoding_state_context": context}


def record_training(
    trainer: L.Trainer, module: L.LightningModule, metrics: dict[str, float]
) -> None:
    """What every comparison needs, recorded by train() after fit in the run dir (the
    trainer's root dir), on rank 0; record_metrics adds the test's."""
    if trainer.is_global_zero:
        update_record(
            trainer.default_root_dir,
            attention_option=chosen_option("attention"),
            attention=dict(module.hparams["attention"]),
            attention_layout=attention_layout(module),
            data_option=chosen_option("data"),
            device=device_name(module.device),
            params=module.model.num_params(),
            **decoding_state(module.model),
            step=trainer.global_step,
            metrics=dict(metrics),
        )


def record_metrics(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """The final metrics after test: the rest of record_training's fields are unchanged."""
    if trainer.is_global_zero:
        update_record(trainer.default_root_dir, metrics=dict(metrics))
