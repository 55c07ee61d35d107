"""Looking inside attention: statistics, ablations, masks, plots and reports.

Pure functions on tensors and models: nothing here knows about Lightning, Hydra or training.
The callbacks (attn_lightning/callbacks/) and `python -m attn_lightning.analyze` call them.
"""
