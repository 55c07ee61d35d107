"""Where the Hydra configs live, and how a resolved config is shown."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from attn_lightning.config.schema import register_schemas


def _find_config_dir() -> Path:
    """`conf/` ships inside the wheel as attn_lightning/conf; in a source checkout (or an
    editable install) it sits next to the package at the top of the repository."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"attn_lightning's configs are missing: neither {package / 'conf'} nor "
        f"{package.parent / 'conf'} holds train.yaml; reinstall the package"
    )


CONFIG_DIR = str(_find_config_dir())
register_schemas()  # before any entry point composes a config that names them


@rank_zero_only
def print_config(cfg: DictConfig, title: str = "config") -> None:
    """Print the resolved config as a rich tree, one branch per top-level group."""
    import rich
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree(title, guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(Syntax(text.rstrip(), "yaml", background_color="default"))
    rich.print(tree)
