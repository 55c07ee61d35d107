"""`python -m attn_lightning.analyze ckpt_path=... text="To be, or not to be"`: look inside a
trained checkpoint.

Writes to `output_dir` (default `<run dir>/analysis`) and lists on the console:
- `attention_layer<l>.png`: every head's attention over `text`, characters on the axes;
- `head_entropy.png`, `head_distance.png`: entropy and mean distance per (layer, head) on `text`;
- `ablation.png`: validation-loss increase with each head, and each whole layer, zeroed;
- `attention_masks.png`: the (query, key) pairs each conf/attention variant can connect;
- `analysis.md`: the numbers behind the figures (statistics, most and least important heads).

Validation data comes from the run's own config (`<run dir>/.hydra/config.yaml`) when it sits
next to the checkpoint, else from the `data` options of conf/analyze.yaml.
"""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from attn_lightning.analysis.ablation import Ablation, ablation_study
from attn_lightning.analysis.masks import connectivity
from attn_lightning.analysis.plots import (
    ablation_figure,
    attention_heads,
    head_heatmap,
    mask_grid,
    save_png,
)
from attn_lightning.analysis.probe import probe
from attn_lightning.analysis.report import markdown_table, stats_table
from attn_lightning.analysis.stats import head_statistics
from attn_lightning.atomic import write_text
from attn_lightning.attention.registry import build_attention, variant_names
from attn_lightning.config.device import resolve_device
from attn_lightning.config.entry_point import hydra_entry_point
from attn_lightning.config.schema import AnalyzeConfig
from attn_lightning.errors import ConfigError
from attn_lightning.runs.checkpoint import load_checkpoint
from attn_lightning.runs.data_config import data_config
from attn_lightning.runs.paths import run_dir_of
from attn_lightning.training.lit_module import LitGPT

log = logging.getLogger(__name__)


def validation_batches(
    cfg: DictConfig, module: LitGPT, run_dir: Path, device: torch.device
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], str]:
    data_cfg, source = data_config(cfg, run_dir, module.model.block_size)
    datamodule = instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup("validate")
    if datamodule.tokenizer.state_dict() != module.tokenizer.state_dict():
        raise ConfigError(
            f"the validation data ({source}) has another vocabulary than the checkpoint: point "
            "the data options of conf/analyze.yaml at the data the model was trained on"
        )
    loader = datamodule.val_dataloader()
    batches = [(x.to(device), y.to(device)) for x, y in islice(loader, cfg.ablation.max_batches)]
    return batches, source


def variant_masks(cfg: DictConfig) -> dict[str, torch.Tensor]:
    """Connectivity of every conf/attention/*.yaml variant at T = masks.seq_len."""
    masks = {}
    shape = {
        "n_embd": cfg.masks.n_embd,
        "n_head": cfg.masks.n_head,
        "block_size": cfg.masks.seq_len,
    }
    for name in variant_names():
        torch.manual_seed(cfg.seed)
        try:
            attn = build_attention(name, **shape)
        except (ValueError, TypeError) as exc:  # a variant that cannot take this shape
            log.warning("mask of %s skipped: %s", name, exc)
            continue
        masks[name] = connectivity(attn, cfg.masks.seq_len, cfg.masks.n_embd, cfg.seed)
    return masks


def ablation_lines(study: Ablation, top_k: int) -> list[str]:
    ranked = study.ranked_heads()
    rows = [[f"layer {layer}, head {h}", f"{d:+.4f}"] for layer, h, d in ranked]
    lines = [f"Validation loss with nothing ablated: {study.base_loss:.4f}", ""]
    lines += ["Most important heads (largest loss increase when zeroed):", ""]
    lines += markdown_table(["head", "loss increase"], rows[:top_k])
    lines += ["", "Least important heads:", ""]
    lines += markdown_table(["head", "loss increase"], rows[::-1][:top_k])
    layer_rows = [
        [f"layer {layer}", f"{float(v) - study.base_loss:+.4f}"]
        for layer, v in enumerate(study.layer_loss)
    ]
    lines += ["", "Whole layers zeroed:", ""]
    lines += markdown_table(["layer", "loss increase"], layer_rows)
    return lines


def check_settings(cfg: DictConfig) -> None:
    """The settings' own ranges, before the checkpoint is read."""
    if not cfg.text:
        raise ConfigError("text is empty: pass text='\"some characters\"'")
    counts = {
        "ablation.max_batches": cfg.ablation.max_batches,
        "ablation.top_k": cfg.ablation.top_k,
        "masks.seq_len": cfg.masks.seq_len,
        "masks.n_embd": cfg.masks.n_embd,
        "masks.n_head": cfg.masks.n_head,
    }
    for key, value in counts.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    if cfg.masks.n_embd % cfg.masks.n_head:
        raise ConfigError(
            f"masks.n_embd={cfg.masks.n_embd} is not divisible by masks.n_head="
            f"{cfg.masks.n_head}: the masks' model needs whole heads"
        )


def analyze(cfg: DictConfig) -> dict[str, Path]:
    """Run every analysis; returns {description: file written}."""
    check_settings(cfg)
    device = resolve_device(cfg.device)
    ckpt_path = Path(cfg.ckpt_path).expanduser()
    module = load_checkpoint(ckpt_path, map_location=device, trusted=cfg.trust_targets)
    model, tokenizer = module.model, module.tokenizer
    run_dir = run_dir_of(ckpt_path)
    out = Path(cfg.output_dir).expanduser() if cfg.output_dir else run_dir / "analysis"
    idx = tokenizer.encode(cfg.text)[None].to(device)
    if idx.size(1) > model.block_size:
        raise ConfigError(
            f"text has {idx.size(1)} tokens, more than the model's block_size "
            f"{model.block_size}: shorten it"
        )
    files: dict[str, Path] = {}
    summary = [f"# Analysis of {ckpt_path}", "", f"Text: `{cfg.text!r}`", ""]

    tokens = [tokenizer.decode([i]) for i in idx[0].tolist()]
    layers = probe(model, idx)
    for layer, attention in enumerate(layers):
        fig = attention_heads(attention.applied[0].cpu(), tokens, f"Layer {layer}: {cfg.text!r}")
        files[f"attention of layer {layer}"] = save_png(fig, out / f"attention_layer{layer}.png")
    stats = [head_statistics(a.applied, a.exact) for a in layers]
    for name, label, cmap in (
        ("entropy", "nats (mean over queries)", "magma"),
        ("distance", "positions back (mean over queries)", "viridis"),
    ):
        values = torch.stack([s[name] for s in stats]).cpu()
        fig = head_heatmap(values, f"Attention {name} per head on the text", label, cmap)
        files[f"{name} per head"] = save_png(fig, out / f"head_{name}.png")
    summary += ["## Attention statistics on the text", "", *stats_table(stats), ""]

    if cfg.ablation.enabled:
        batches, source = validation_batches(cfg, module, run_dir, device)
        study = ablation_study(model, batches)
        windows = sum(len(x) for x, _ in batches)
        fig = ablation_figure(
            study.head_loss - study.base_loss, study.layer_loss - study.base_loss, study.base_loss
        )
        files["ablation heatmap"] = save_png(fig, out / "ablation.png")
        summary += [
            "## Head and layer ablation",
            "",
            f"{windows} validation windows from {source}.",
            "",
        ]
        summary += [*ablation_lines(study, cfg.ablation.top_k), ""]

    if cfg.masks.enabled:
        masks = variant_masks(cfg)
        title = f"Which (query, key) pairs each variant connects, T = {cfg.masks.seq_len}"
        files["variant masks"] = save_png(mask_grid(masks, title), out / "attention_masks.png")

    summary += ["## Files", ""] + [f"- {k}: [{p.name}]({p.name})" for k, p in files.items()]
    files["summary"] = write_text(out / "analysis.md", "\n".join(summary) + "\n")
    return files


@hydra_entry_point("analyze", schema=AnalyzeConfig)
def main(cfg: DictConfig) -> None:
    files = analyze(cfg)
    summary = files["summary"].read_text(encoding="utf-8")
    print(summary.split("## Files")[0].rstrip())
    print("\nWritten:")
    for description, path in files.items():
        print(f"  {path}  ({description})")


if __name__ == "__main__":
    main()
