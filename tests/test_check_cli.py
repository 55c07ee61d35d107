"""`python -m attn_lightning.check` as a user runs it: the table and exit 0 for our variant, exit
1 naming causality for a leaky class of the user's own, exit 2 for bad input; and the README's
"Bring your own attention" walk-through, checked, trained, tested and sampled."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import REPO_ROOT, TINY, run_cli, run_dirs, run_module
from omegaconf import OmegaConf

from attn_lightning.analysis.contract import (
    CAUSALITY_GRADIENTS,
    CAUSALITY_OUTPUTS,
    CHECKS,
    TIMING,
    ContractSizes,
)
from attn_lightning.bench.attention.contract_timing import TimingSizes
from attn_lightning.check import user_factory
from attn_lightning.config import CONFIG_DIR
from attn_lightning.errors import ConfigError

FAST_TIMING = ["timing.lengths=[32,64]", "timing.repeats=1"]
LEAK_AT = 11
LEAKY = f'''
from attn_lightning.attention.vanilla import VanillaAttention


class LeakyAttention(VanillaAttention):
    """Query {LEAK_AT} also sees the next key."""

    def allowed(self, q_pos, k_pos):
        leak = (q_pos[:, None] == {LEAK_AT}) & (k_pos[None, :] == {LEAK_AT + 1})
        return super().allowed(q_pos, k_pos) | leak
'''


def readme_class() -> str:
    """The Python block of the README's "Bring your own attention" section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Bring your own attention") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_our_variant_passes_with_a_table(tmp_path: Path) -> None:
    proc = run_cli("attn_lightning.check", ["attention=vanilla", *FAST_TIMING], tmp_path, None)
    for name in [*CHECKS, TIMING]:
        (row,) = [line for line in proc.stdout.splitlines() if line.startswith(name)]
        assert row.split()[len(name.split())] == "pass", row
    assert f"all {len(CHECKS) + 1} checks passed" in proc.stdout


def test_a_leaky_class_of_the_users_fails_naming_causality(tmp_path: Path) -> None:
    (tmp_path / "leaky.py").write_text(LEAKY)
    args = ["attention._target_=leaky.LeakyAttention", "timing.enabled=false"]
    proc = run_module("attn_lightning.check", args, tmp_path, None)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for name in (CAUSALITY_OUTPUTS, CAUSALITY_GRADIENTS):
        assert (
            f"FAILED {name} at position {LEAK_AT}: query {LEAK_AT} reads later key" in proc.stdout
        )


@pytest.mark.parametrize("attention", ["attention=no_such_variant"])
def test_an_unknown_option_is_one_line_and_exit_2(tmp_path: Path, attention: str) -> None:
    proc = run_module("attn_lightning.check", [attention], tmp_path, None)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: unknown attention option 'no_such_variant'")


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("no_such_module.Attention", "does not import"),
        ("collections.OrderedDict", "is not a subclass of"),
        ("attn_lightning.attention.base.CausalSelfAttention", "does not implement attend"),
    ],
)
def test_a_target_that_is_not_an_attention_class_is_a_user_error(target: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        user_factory(OmegaConf.create({"_target_": target, "_partial_": True}))


def test_code_defaults_mirror_conf_check_yaml() -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "check.yaml"))
    assert cfg["sizes"] == asdict(ContractSizes())
    timing = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["timing"].items()}
    assert timing.pop("enabled") is True
    assert timing == asdict(TimingSizes())


@pytest.mark.slow  # a training run end to end; run with -m slow
def test_bring_your_own_attention_checks_trains_and_samples_with_trust(
    tmp_path: Path, data_dir: Path
) -> None:
    (tmp_path / "my_attention.py").write_text(readme_class())
    target = "attention._target_=my_attention.MyAttention"
    run_cli("attn_lightning.check", [target, *FAST_TIMING], tmp_path, None)
    # the test step reloads the best checkpoint, which names the user's class
    run_cli("attn_lightning", [*TINY, target, "+trainer.limit_test_batches=2"], tmp_path, data_dir)
    (run_dir,) = run_dirs(tmp_path / "outputs")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["attention"]["_target_"] == "my_attention.MyAttention"
    assert summary["metrics"]["test/loss"] > 0
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    sample = [f"ckpt_path={ckpt}", "max_new_tokens=8", "device=cpu"]
    refused = run_module("attn_lightning.sample", sample, tmp_path, data_dir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "_target_='my_attention.MyAttention'" in refused.stderr
    assert "trust_targets=[my_attention]" in refused.stderr
    run_cli("attn_lightning.sample", [*sample, "trust_targets=[my_attention]"], tmp_path, data_dir)
