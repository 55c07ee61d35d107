"""DDP jobs inside a Hydra multirun: each job's ranks run exactly that job, then leave no trace.

Lightning's subprocess launcher starts rank k > 0 by re-running the command line (`sys.argv`)
with `hydra.run.dir=<HydraConfig.run.dir>`. In a multirun, `sys.argv` holds `-m` and the whole
sweep, and `run.dir` is not the job's directory: each child would start a sweep of its own and
pair with rank 0 only by luck. The launcher also leaves `LOCAL_RANK`, `MASTER_PORT`, ... in the
environment and the process group open, so the next job of the sweep would believe its ranks
were launched externally and wait for them forever.

`ddp_job_scope()` fixes both: before fit, the child command becomes this job's own override
list run in this job's output directory; after the job, the process group is destroyed and
the environment restored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from attn_lightning.errors import in_multirun


def _pin_children_to_job() -> None:
    hydra_cfg = HydraConfig.get()
    flags = [f"--config-name={hydra_cfg.job.config_name}"]
    flags += [
        f"--config-dir={source.path}"
        for source in hydra_cfg.runtime.config_sources
        if source.provider == "command-line"
    ]
    sys.argv = [sys.argv[0], *flags, *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir


@contextmanager
def ddp_job_scope() -> Iterator[None]:
    """Wrap one job's fit/test. A no-op outside a Hydra multirun."""
    if not in_multirun():
        yield
        return
    argv, environ = list(sys.argv), dict(os.environ)
    _pin_children_to_job()
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(environ)
        sys.argv = argv
