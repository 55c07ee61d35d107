"""The house's import rules, read from the source with `ast` (nothing is imported):

- the packages of attn_lightning import each other without a cycle;
- no command (train, sample, eval, analyze, check, compare) imports another command;
- nothing below the training layer knows Lightning or Hydra: `attention/` and `model/` import
  neither, `analysis/` and `comparison/` import nothing from `training/`, `runs/`,
  `callbacks/` or Lightning.

An import inside a function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attn_lightning"
COMMANDS = ("train", "sample", "eval", "analyze", "check", "compare")
FORBIDDEN = {
    "attention": ("lightning", "hydra", "omegaconf", "attn_lightning.training"),
    "model": ("lightning", "hydra", "omegaconf", "attn_lightning.training"),
    "analysis": (
        "lightning",
        "attn_lightning.training",
        "attn_lightning.runs",
        "attn_lightning.callbacks",
    ),
    "comparison": ("lightning", "attn_lightning.training", "attn_lightning.callbacks"),
}
# The one module of attention/ that reads the Hydra configs: variants by name.
HYDRA_ALLOWED = {"attn_lightning.attention.registry"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path) -> Iterator[str]:
    """Every module `path` imports, absolute (relative imports resolved)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def unit(module: str) -> str | None:
    """The part of the house a module belongs to: its subpackage, or itself for a top-level
    module (a command, errors, atomic); None outside attn_lightning."""
    parts = module.split(".")
    if parts[0] != "attn_lightning" or len(parts) < 2:
        return None
    return parts[1]


def import_graph(root: Path) -> dict[str, set[str]]:
    """{module: the attn_lightning modules and third-party modules it imports}."""
    return {
        module_name(path, root): set(imported(path, root)) for path in sorted(root.rglob("*.py"))
    }


def unit_graph(graph: dict[str, set[str]], root: Path) -> dict[str, set[str]]:
    units = {
        p.stem if p.is_file() else p.name
        for p in root.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    edges: dict[str, set[str]] = {u: set() for u in units}
    for module, targets in graph.items():
        source = unit(module)
        for target in targets:
            dest = unit(target)
            if source and dest in units and dest != source:
                edges[source].add(dest)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def violations(root: Path) -> list[str]:
    graph = import_graph(root)
    found = []
    if cycle := find_cycle(unit_graph(graph, root)):
        found.append("import cycle between packages: " + " -> ".join(cycle))
    for module, targets in sorted(graph.items()):
        source = unit(module)
        for target in sorted(targets):
            if source in COMMANDS and unit(target) in COMMANDS and unit(target) != source:
                found.append(f"command {module} imports command {target}")
            for prefix in FORBIDDEN.get(source or "", ()):
                hydra = prefix in ("hydra", "omegaconf") and module in HYDRA_ALLOWED
                if (target == prefix or target.startswith(prefix + ".")) and not hydra:
                    found.append(f"{module} imports {target}: {source}/ must not import {prefix}")
    return found


def test_the_house_keeps_its_import_rules() -> None:
    assert violations(PACKAGE) == []


def write(root: Path, files: dict[str, str]) -> Path:
    package = root / "attn_lightning"
    for name, text in files.items():
        path = package / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {
                "analysis/__init__.py": "",
                "analysis/a.py": "from attn_lightning.model.gpt import GPT\n",
                "model/__init__.py": "",
                "model/gpt.py": "def f():\n    from ..analysis import a\n",
            },
            "import cycle between packages: analysis -> model -> analysis",
        ),
        (
            {"eval.py": "from attn_lightning.analyze import run_dir_of\n", "analyze.py": ""},
            "command attn_lightning.eval imports command attn_lightning.analyze",
        ),
        (
            {"comparison/__init__.py": "", "comparison/x.py": "import lightning.pytorch as pl\n"},
            "attn_lightning.comparison.x imports lightning.pytorch: comparison/ must not "
            "import lightning",
        ),
        (
            {
                "analysis/__init__.py": "",
                "analysis/x.py": "from attn_lightning.training import lit_module\n",
                "training/__init__.py": "",
            },
            "attn_lightning.analysis.x imports attn_lightning.training: analysis/ must not "
            "import attn_lightning.training",
        ),
    ],
)
def test_a_broken_rule_is_named(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    assert expected in violations(write(tmp_path, files))


def test_a_layered_house_passes(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "__init__.py": "",
            "train.py": "from attn_lightning.training.builders import build\n",
            "training/__init__.py": "",
            "training/builders.py": "from .lit import M\nfrom attn_lightning.model import gpt\n",
            "training/lit.py": "import lightning\n",
            "model/__init__.py": "",
            "model/gpt.py": "import torch\n",
        },
    )
    assert violations(package) == []


def test_analysis_and_comparison_load_no_lightning_even_indirectly() -> None:
    """Importing every module of analysis/ and comparison/ in a fresh interpreter loads neither
    Lightning nor the training package, through any chain of imports."""
    modules = [
        module_name(path, PACKAGE)
        for part in ("analysis", "comparison")
        for path in sorted((PACKAGE / part).rglob("*.py"))
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('lightning')}"
        " | {m for m in sys.modules if m.startswith('attn_lightning.training')}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
