"""What the LightningModule (training/lit_module.py) delegates: the optimiser and its schedule, the
evaluation metrics, greedy decoding of task answers, and the non-finite-loss policy."""
