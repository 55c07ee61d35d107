"""Make Lightning's DDP child processes re-run exactly the current Hydra job.

Lightning's subprocess launcher starts rank k > 0 by re-running the command line (`sys.argv`)
with `hydra.run.dir=<HydraConfig.run.dir>`. In a multirun, `sys.argv` holds `-m` and the
whole sweep, and `run.dir` is not the job's directory: each child would start a sweep of
its own and pair with rank 0 only by luck. Before `trainer.fit`, we rewrite both so the
child command is this job's own override list, run in this job's output directory.
"""

from __future__ import annotations

import sys

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import open_dict


def pin_ddp_children_to_job() -> None:
    """No-op outside a Hydra multirun; there, point re-launched ranks at this job only."""
    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return
    flags = [f"--config-name={hydra_cfg.job.config_name}"]
    flags += [
        f"--config-dir={source.path}"
        for source in hydra_cfg.runtime.config_sources
        if source.provider == "command-line"
    ]
    sys.argv = [sys.argv[0], *flags, *hydra_cfg.overrides.task]
    with open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
