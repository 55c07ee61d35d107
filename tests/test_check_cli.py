"""`python -m attn_lightning.check` as a user runs it: the table and exit 0 for our variant, exit
1 naming causality for a leaky class of the user's own, exit 2 for bad input; any sequence
mixer (x-transformers' attention, modules of the user's own, with and without a recurrent
step); and the README's "Bring your own attention" walk-through, checked, trained, tested and
sampled."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pytest
from helpers import REPO_ROOT, TINY, run_cli, run_dirs, run_entry_point_cases, run_module
from omegaconf import OmegaConf

from attn_lightning.analysis.contract import (
    ATTENTION_MATRIX,
    CAUSALITY_GRADIENTS,
    CAUSALITY_OUTPUTS,
    CHECKS,
    DECODING,
    DECODING_STATE,
    TIMING,
    ContractSizes,
)
from attn_lightning.bench.attention.contract_timing import TimingSizes
from attn_lightning.check import mixer_under_test, user_factory
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

WRONG_FROM = 30
MIXERS = f'''
import torch
from torch import nn


class LookAhead(nn.Module):
    """Position {LEAK_AT} also adds the next input; returns (y, None) as many layers do."""

    def __init__(self, dim):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x):
        ahead = torch.zeros_like(x)
        ahead[:, {LEAK_AT}] = x[:, {LEAK_AT + 1}]
        return self.linear(x) + ahead, None


class RunningMean(nn.Module):
    """y_t = W mean(x_0..x_t); its step keeps (sum, count), and from position wrong_from
    on (when given) scales its output."""

    def __init__(self, dim, wrong_from=None):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.wrong_from = wrong_from

    def forward(self, x):
        return self.linear(x.cumsum(1) / torch.arange(1, x.size(1) + 1)[:, None])

    def step(self, x_t, state):
        total, count = (0.0, 0) if state is None else state
        total, count = total + x_t, count + 1
        y = self.linear(total / count)
        if self.wrong_from is not None and count - 1 >= self.wrong_from:
            y = 1.1 * y
        return y, (total, count)
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


def test_an_x_transformers_layer_in_two_commands(tmp_path: Path) -> None:
    """The README's command: causality checked, the checks needing our API not applicable."""
    pytest.importorskip("x_transformers")
    args = ["mixer._target_=x_transformers.Attention", "+mixer.causal=true", *FAST_TIMING]
    proc = run_cli("attn_lightning.check", args, tmp_path, None)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("contract of mixer x_transformers.Attention(dim=32, causal=True)")
    assert lines[1] == "Attention returns a Tensor: the checks read it as the output"
    for name, verdict in [
        (CAUSALITY_OUTPUTS, "pass"),
        (CAUSALITY_GRADIENTS, "pass"),
        (ATTENTION_MATRIX, "n/a"),
        (DECODING, "n/a"),
        (DECODING_STATE, "n/a"),
        (TIMING, "pass"),
    ]:
        (row,) = [line for line in lines if line.startswith(name)]
        assert row.split()[len(name.split())] == verdict, row
    assert "all 3 applicable checks passed (3 not applicable)" in proc.stdout


def test_mixers_of_the_users_own(tmp_path: Path) -> None:
    """A look-ahead fails causality at its position (exit 1); a recurrent step named by
    mixer.step is checked against the forward pass: exact passes (exit 0), wrong fails at
    its first wrong position (exit 1); bad input is one line and exit 2."""
    (tmp_path / "mixers.py").write_text(MIXERS)
    quiet = "timing.enabled=false"
    mean = ["mixer._target_=mixers.RunningMean", "mixer.step=step", quiet]
    leaky, exact, fixed, wrong, *bad = run_entry_point_cases(
        "attn_lightning.check",
        [
            ["mixer._target_=mixers.LookAhead", quiet],
            mean,
            ["mixer._target_=mixers.RunningMean", "mixer.dim_key=null", "+mixer.dim=32"],
            [*mean, f"+mixer.wrong_from={WRONG_FROM}"],
            [*mean, "mixer.step=nope"],
            [*mean, "+mixer.dim=32"],
            [*mean, "attention=gla"],
            [*mean, "attention.rope=true"],
            ["mixer._target_=no_such_module.Mixer", quiet],
            ["mixer._target_=mixers.RunningMean", "+mixer.heads=4", quiet],
        ],
        tmp_path,
        None,
    )
    assert leaky["code"] == 1, leaky
    assert "LookAhead returns a tuple of 2: the checks read its first element" in leaky["stdout"]
    for name in (CAUSALITY_OUTPUTS, CAUSALITY_GRADIENTS):
        assert (
            f"FAILED {name} at position {LEAK_AT}: query {LEAK_AT} reads later key"
            in (leaky["stdout"])
        )
    assert exact["code"] == 0, exact
    assert "all 4 applicable checks passed (1 not applicable)" in exact["stdout"]
    assert fixed["code"] == 0, fixed  # its width fixed by +mixer.dim: timing not applicable
    assert "mixers.RunningMean(dim=32)" in fixed["stdout"]
    assert (
        "timing                 n/a     not applicable: mixer.dim_key is null" in (fixed["stdout"])
    )
    assert wrong["code"] == 1, wrong
    assert f"FAILED {DECODING} at position {WRONG_FROM}:" in wrong["stdout"]
    says = [
        "mixer.step=nope: RunningMean has no method 'nope'",
        "mixer.dim is set by sizes.n_embd (mixer.dim_key=dim)",
        "mixer._target_ checks the mixer alone",
        "mixer._target_ checks the mixer alone",
        "mixer._target_=no_such_module.Mixer does not import",
        "mixer mixers.RunningMean(dim=32, heads=4) cannot be built (TypeError:",
    ]
    for case, message in zip(bad, says, strict=True):
        assert case["code"] == 2, case
        assert case["stderr"].startswith(f"error: {message}"), case["stderr"]
        assert case["stderr"].strip().count("\n") == 0


def test_a_mixer_that_is_our_attention_is_pointed_to_the_whole_contract() -> None:
    target = "attn_lightning.attention.vanilla.VanillaAttention"
    mixer = OmegaConf.create({"_target_": target, "dim_key": "n_embd", "step": None})
    with pytest.raises(ConfigError, match=f"check it with attention._target_={target}"):
        mixer_under_test(OmegaConf.merge(mixer, {"n_head": 4, "block_size": 8}), 32)


def test_code_defaults_mirror_conf_check_yaml() -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(Path(CONFIG_DIR) / "check.yaml"))
    assert cfg["mixer"] == {"_target_": None, "dim_key": "dim", "step": None}
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
