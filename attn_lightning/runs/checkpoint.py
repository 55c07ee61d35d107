"""Checkpoint files: written atomically, read without executing code.

Writing: a checkpoint goes to a temp file in the same directory, is flushed to disk, then
renamed over its final name. A kill at any moment leaves either the previous file or the new
one, never a half-written file under a checkpoint's name.

Reading: `torch.load(weights_only=True)` unpickles only tensors and plain containers, so a
file carrying a pickled object (which could run code) is refused. Our checkpoints contain only
such data: the hyperparameters and tokenizer are plain dicts. The `_target_` entries in them
are checked too, since instantiating them calls code: only `attn_lightning.*` and
torch.optim's optimizer classes are accepted, plus what the reader trusts explicitly
(`trusted`: module prefixes or whole targets). A training run trusts the `_target_`s its own
config names (`config_targets`), so a run with the user's own attention class reloads its own
checkpoints; sampling or analysing such a file elsewhere needs `trust_targets=[my_attention]`.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from attn_lightning.atomic import atomic_write
from attn_lightning.errors import CheckpointError
from attn_lightning.training.lit_module import LitGPT

TRUSTED_TARGET_PREFIX = "attn_lightning."


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically (attn_lightning/atomic.py)."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def config_targets(*configs: Any) -> tuple[str, ...]:
    """Every `_target_` the given configs (plain containers) name outside attn_lightning.*:
    what a run that was started with them may trust in its own checkpoints."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if target is not None and not is_trusted(str(target), ()):
                found.append(str(target))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for config in configs:
        walk(config)
    return tuple(dict.fromkeys(found))


def torch_optimizers() -> frozenset[str]:
    """torch.optim's optimizer classes by dotted name (`torch.optim.AdamW`): a checkpoint's
    `optim._target_` (conf/optim/) names one, and building it runs only torch's code. Whole
    names, not the `torch.optim.` prefix, which would reach whatever that module imports."""
    return frozenset(
        f"torch.optim.{name}"
        for name, value in vars(torch.optim).items()
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer)
    )


TORCH_OPTIMIZERS = torch_optimizers()


def is_trusted(target: str, trusted: Iterable[str]) -> bool:
    """attn_lightning.* and torch.optim's optimizers always; else `target` is one of `trusted`
    or inside one of them as a module prefix (`my_attention` trusts `my_attention.MyAttention`)."""
    if target in TORCH_OPTIMIZERS:
        return True
    trusted = tuple(str(t) for t in trusted)
    prefixes = [TRUSTED_TARGET_PREFIX, *(f"{t.rstrip('.')}." for t in trusted)]
    return target in trusted or any(target.startswith(prefix) for prefix in prefixes)


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", trusted: Sequence[str] = ()
) -> dict[str, Any]:
    """Load a checkpoint file safely, with an error that says what is wrong and what to do.
    `trusted`: `_target_`s (or their module prefixes) beyond attn_lightning.* that it may
    name."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}: pass ckpt_path=<run dir>/checkpoints/last.ckpt "
            "(run dirs live under outputs/)"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refused to load {path}: it contains pickled objects that could run code when "
            f"loaded ({str(error).splitlines()[0]}). attn_lightning checkpoints hold only tensors "
            "and plain data; use a checkpoint written by attn_lightning, from a source you trust"
        ) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
        raise CheckpointError(
            f"{path} is truncated or corrupted ({error}); use another checkpoint of the run "
            "(checkpoints/last.ckpt or a checkpoints/step*.ckpt)"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict inside)")
    _check_targets(checkpoint.get("hyper_parameters", {}), path, tuple(trusted))
    return checkpoint


def _check_targets(node: Any, path: Path, trusted: tuple[str, ...]) -> None:
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None and not is_trusted(str(target), trusted):
            module = str(target).rpartition(".")[0] or str(target)
            raise CheckpointError(
                f"refused to load {path}: its config names _target_={target!r}, outside "
                f"{TRUSTED_TARGET_PREFIX}*; building it would run that code. If you trust this "
                f"file and that code, pass trust_targets=[{module}]"
            )
        for value in node.values():
            _check_targets(value, path, trusted)
    elif isinstance(node, list):
        for value in node:
            _check_targets(value, path, trusted)


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", trusted: Sequence[str] = ()
) -> LitGPT:
    """Rebuild a trained LitGPT (model and tokenizer) from a checkpoint file alone, read
    safely, in eval mode (`trusted`: as in `read_checkpoint`)."""
    checkpoint = read_checkpoint(path, map_location, trusted)
    module = LitGPT(**checkpoint["hyper_parameters"])
    check_weights_fit(module, tensor_shapes(checkpoint["state_dict"]), path)
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(map_location).eval()


# What a checkpoint's model is: the hyperparameters that shape its weights and what they mean.
# The optimizer and schedule may change on a resume (a new learning rate); these may not.
MODEL_HPARAMS = ("model", "attention", "layer_attention", "tokenizer")


def flat(node: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts as {dotted key: leaf}, the way a config override names them."""
    if isinstance(node, dict) and node:
        return {
            k: v for key, value in node.items() for k, v in flat(value, f"{prefix}.{key}").items()
        }
    return {prefix: node}


def shown(key: str, value: Any) -> str:
    """A value for a one-line message: a class in full, a vocabulary as its size."""
    long = len(repr(value)) > 40 and not key.endswith("_target_")
    if isinstance(value, str | list | tuple | dict) and (long or "\n" in str(value)):
        unit = "characters" if isinstance(value, str) else "entries"
        return f"<{len(value)} {unit}>"
    return "absent" if value is None else str(value)


def model_differences(saved: dict[str, Any], run: dict[str, Any]) -> list[str]:
    """`key: checkpoint X, config Y` for each model hyperparameter that differs."""

    def leaves(hparams: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v for name in MODEL_HPARAMS for k, v in flat(hparams.get(name) or {}, name).items()
        }

    before, now = leaves(saved), leaves(run)
    return [
        f"{key}: checkpoint {shown(key, before.get(key))}, config {shown(key, now.get(key))}"
        for key in sorted(set(before) | set(now), key=lambda k: (k.startswith("tokenizer"), k))
        if before.get(key) != now.get(key)
    ]


def check_same_model(saved: dict[str, Any], run: dict[str, Any], path: str | Path) -> None:
    """Resuming continues the same model: a checkpoint of another model config is refused
    before fit, naming what differs, instead of failing inside `load_state_dict`."""
    differences = model_differences(saved, run)
    if differences:
        raise CheckpointError(
            f"{path} holds another model than this config ({listing(differences)}): resume "
            "it with the checkpoint's values, or drop ckpt_path to start fresh"
        )


def listing(items: list[str], limit: int = 4) -> str:
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def tensor_shapes(state_dict: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The shapes of a state dict's tensors (a module's extra state, a dict, has none)."""
    return {key: tuple(value.shape) for key, value in state_dict.items() if hasattr(value, "shape")}


def weight_differences(module: torch.nn.Module, shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """The weights a module and a checkpoint (its tensors' shapes) disagree on."""
    expected = tensor_shapes(module.state_dict())
    missing = [f"{key} missing" for key in expected if key not in shapes]
    unexpected = [f"{key} unexpected" for key in shapes if key not in expected]
    sizes = [
        f"{key}: checkpoint {list(shapes[key])}, model {list(shape)}"
        for key, shape in expected.items()
        if key in shapes and shapes[key] != shape
    ]
    return sizes + missing + unexpected


def check_weights_fit(
    module: torch.nn.Module, shapes: dict[str, tuple[int, ...]], path: str | Path
) -> None:
    """A one-line error, instead of torch's multi-line `load_state_dict` one, when a checkpoint's
    weights do not fit the model its hyperparameters (or the run's config) build."""
    differences = weight_differences(module, shapes)
    if differences:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its hyper_parameters describe "
            f"({listing(differences, 3)}); the file was edited or is corrupted: use another "
            "checkpoint of the run"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with atomic writes and safe, explained reads (`trusted`:
    what its reads accept beyond attn_lightning.*; train.py sets the run's own targets)."""

    def __init__(self, trusted: Sequence[str] = ()) -> None:
        super().__init__()
        self.trusted = tuple(trusted)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        save_atomic(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return read_checkpoint(path, "cpu" if map_location is None else map_location, self.trusted)


def trust_in_run(trainer: Any, trusted: Sequence[str]) -> None:
    """Let the trainer's checkpoint I/O (when it is ours) read checkpoints naming `trusted`:
    `trainer.test(ckpt_path="best")` and resuming reload the run's own files through it."""
    checkpoint_io = getattr(trainer.strategy, "checkpoint_io", None)
    if isinstance(checkpoint_io, AtomicCheckpointIO):
        checkpoint_io.trusted = tuple(trusted)
