"""A non-editable install carries the configs and finds them from any working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("hatchling", reason="building the wheel needs hatchling (dev extra)")
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (built,) = out.glob("attn_lightning-*.whl")
    return built


def test_wheel_ships_every_config(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for config in (REPO_ROOT / "conf").rglob("*.yaml"):
        assert f"attn_lightning/conf/{config.relative_to(REPO_ROOT / 'conf')}" in names
    assert not any(n.startswith(("tests/", "outputs/")) for n in names)


def test_installed_package_finds_its_configs_from_elsewhere(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    proc = subprocess.run(
        [sys.executable, "-m", "attn_lightning", "--cfg", "job", "attention=vanilla"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "n_layer: 4" in proc.stdout
    config_dir = subprocess.run(
        [sys.executable, "-c", "import attn_lightning.config as c; print(c.CONFIG_DIR)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(config_dir).is_relative_to(target)


SCRIPTS = {  # every `python -m` entry point's console script, by the module it stands for
    "attn-lightning": "attn_lightning.train",  # what attn_lightning/__main__.py runs
    "attn-sample": "attn_lightning.sample",
    "attn-eval": "attn_lightning.eval",
    "attn-analyze": "attn_lightning.analyze",
    "attn-check": "attn_lightning.check",
    "attn-compare": "attn_lightning.compare",
    "attn-bench": "attn_lightning.bench.__main__",
}


def test_every_entry_point_has_a_console_script(wheel: Path):
    """The wheel declares a script per entry point, each naming a callable of that module."""
    import importlib

    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        lines = archive.read(name).decode().splitlines()
    declared = dict(line.replace(" ", "").split("=") for line in lines if "=" in line)
    assert set(declared) == set(SCRIPTS)
    for script, module in SCRIPTS.items():
        target, function = declared[script].split(":")
        assert target == module, script
        assert callable(getattr(importlib.import_module(target), function)), script
