"""Random number generator states in the checkpoint, so a resumed run draws the same dropout
masks (and anything else random) as an uninterrupted one."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class RngState(L.Callback):
    """Saves torch's CPU and CUDA generator states with the checkpoint. On resume, they are put
    back just before the first training batch, so whatever runs between loading and training
    (sanity validation, data loader start-up) cannot shift them. (Batches need nothing: they
    are a function of (seed, step, rank).)"""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, *args: Any) -> None:
        if self._pending is None:
            return
        torch.set_rng_state(self._pending["cpu"])
        if "cuda" in self._pending and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._pending["cuda"])
        self._pending = None
