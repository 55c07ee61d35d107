"""Benchmarks: `python -m attn_lightning.bench <name> [args]`; each prints its figures."""
