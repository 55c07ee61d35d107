"""attn-lightning: train small GPTs with swappable attention and compare attention honestly."""

__version__ = "0.1.0"
