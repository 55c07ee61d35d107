"""The run directory's life: checkpoints, resuming, the run record."""
