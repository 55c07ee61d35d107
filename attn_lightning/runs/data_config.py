"""The data a saved run was trained on, for the commands that evaluate it again (analyze,
eval): the run's own data config, with the command line's `data.<key>=...` on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf


def command_line_data_keys() -> tuple[bool, list[str]]:
    """Whether the command line picked a `data=<option>`, and the `data.<key>` it set."""
    if not HydraConfig.initialized():
        return False, []
    overrides = [o.lstrip("+~") for o in HydraConfig.get().overrides.task]
    option = any(o.startswith("data=") for o in overrides)
    keys = [o.split("=", 1)[0].removeprefix("data.") for o in overrides if o.startswith("data.")]
    return option, keys


def data_config(cfg: DictConfig, run_dir: Path, block_size: int) -> tuple[Any, str]:
    """The data config to validate on, and where it came from: the run's own (its
    .hydra/config.yaml) with the command line's `data.<key>=...` on top, unless the command
    line picks a `data=<option>` or there is no saved run config."""
    option, keys = command_line_data_keys()
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file() and not option:
        run_cfg = OmegaConf.load(saved)
        if "data" in run_cfg:
            data = OmegaConf.create(OmegaConf.to_container(run_cfg.data, resolve=True))
            for key in keys:  # the user's value wins over the run's, as everywhere else
                OmegaConf.update(data, key, OmegaConf.select(cfg.data, key), force_add=True)
            given = f" with {', '.join(f'data.{k}' for k in keys)} from the command line"
            return OmegaConf.to_container(data, enum_to_str=True), str(saved) + (given * bool(keys))
    data = OmegaConf.to_container(cfg.data, resolve=True, enum_to_str=True)
    # windows as long as the checkpoint's model takes, whatever the data option's default
    return data | {"block_size": block_size}, "the data options of conf/analyze.yaml"
