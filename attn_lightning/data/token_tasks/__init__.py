"""Token-level synthetic tasks: each a `TokenTask` (task.py), all served by one
`TokenTaskDataModule` (datamodule.py) with per-setting test splits.

- mqar.py, mqar_forgetting.py, mqar_multipass.py: Zoology's associative recall and its harder
  forms;
- mad/: MAD's six tasks (Poli et al. 2024);
- state_tracking.py: S5 permutation composition and parity;
- passkey.py: a passkey hidden at a depth of filler text.
"""
