"""The attention benchmark: each core's forward+backward time, peak memory and closeness to exact
causal softmax against sequence length (`python -m attn_lightning.bench attention --help`).

settings.py (what to sweep, the defaults), timing.py and memory_ledger.py (how a call is
measured), sweep.py (the measurements), report.py (CSV, markdown, figures), cli.py.
"""

from attn_lightning.bench.attention.cli import main

__all__ = ["main"]
