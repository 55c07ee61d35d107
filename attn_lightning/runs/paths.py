"""Where things are in a run directory: the run of a checkpoint, the run's best checkpoint."""

from __future__ import annotations

from pathlib import Path

from attn_lightning.errors import CheckpointError


def run_dir_of(ckpt_path: Path) -> Path:
    """The run dir of a checkpoint in `<run>/checkpoints/`, else the checkpoint's own dir."""
    ckpt_path = ckpt_path.resolve()
    parent = ckpt_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run's test after fit evaluated: its best one (checkpoints/ holds
    last.ckpt and, with save_top_k=1 in conf/callbacks/default.yaml, the best), else, in a run
    that never validated, last.ckpt (the test then used the final weights)."""
    checkpoints = run_dir / "checkpoints"
    found = sorted(p for p in checkpoints.glob("*.ckpt") if p.name != "last.ckpt")
    if not found and (checkpoints / "last.ckpt").is_file():
        return checkpoints / "last.ckpt"
    if len(found) != 1:
        what = "no checkpoint" if not found else f"{len(found)} checkpoints besides last.ckpt"
        raise CheckpointError(f"{checkpoints} holds {what}: name the file in ckpts=[...]")
    return found[0]
