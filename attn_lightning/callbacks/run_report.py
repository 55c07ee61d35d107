"""report.md in the run dir at the end of fit (and again at the end of test): configuration,
final metrics, loss curves, attention patterns, entropy and distance per head, a text sample.
What only this report computes (attention pattern, statistics, layer-0 mask) goes into the run's
record too, for the sweep comparison's figures (runs/record.py); train() records the rest.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.utilities import rank_zero_only

from attn_lightning.analysis.masks import connectivity
from attn_lightning.analysis.plots import attention_patterns, head_heatmap, loss_curves, save_png
from attn_lightning.analysis.probe import probe
from attn_lightning.analysis.report import render_report
from attn_lightning.analysis.stats import LOCAL_WINDOW, head_statistics
from attn_lightning.atomic import write_text
from attn_lightning.callbacks.validation_probe import first_validation_inputs
from attn_lightning.runs.record import (
    attention_layout,
    layout_label,
    update_record,
    variant_name,
)

log = logging.getLogger(__name__)

FIGURES = {
    "loss_curves": "loss_curves.png",
    "patterns": "attention_patterns.png",
    "entropy": "attention_entropy.png",
    "distance": "attention_distance.png",
}


class RunReport(L.Callback):
    """Writes `<output_dir>/report.md` and its PNGs (atomically) on rank 0.

    Loss curves come from `train/loss` (every `trainer.log_every_n_steps`) and `val/loss` (every
    validation) as the callback saw them; they are kept in checkpoints so a resumed run's report
    covers the whole run. The attention figures use the first `num_sequences` validation
    windows (the pattern grid shows the first of them, up to `max_tokens` tokens).
    """

    def __init__(
        self,
        output_dir: str,
        num_sequences: int = 8,
        max_tokens: int | None = 32,
        local_window: int = LOCAL_WINDOW,
        sample_prompt: str = "\n",
        sample_tokens: int = 300,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int = 1337,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.num_sequences = num_sequences
        self.max_tokens = max_tokens
        self.local_window = local_window
        self.sample_prompt = sample_prompt
        self.sample_tokens = sample_tokens
        self.temperature = temperature
        self.top_k = top_k
        self.seed = seed
        self.curves: dict[str, list[tuple[int, float]]] = {"train/loss": [], "val/loss": []}
        self._probe: torch.Tensor | None = None
        self.metrics: dict[str, float] = {}  # last value of every metric, fit then test
        self._mask: list[str] | None = None  # layer 0's (query, key) connectivity, '0'/'1' rows

    def _record(self, trainer: L.Trainer, name: str) -> None:
        value = trainer.callback_metrics.get(name)
        if value is not None:
            self.curves[name].append((trainer.global_step, float(value)))

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.is_global_zero and trainer.global_step % trainer.log_every_n_steps == 0:
            self._record(trainer, "train/loss")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            self._record(trainer, "val/loss")
            if self._probe is None:
                self._probe = first_validation_inputs(trainer, self.num_sequences)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module, "the weights at the end of training")

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.write(trainer, pl_module, "the weights evaluated on the test split")

    def state_dict(self) -> dict[str, Any]:
        return {"curves": {k: [list(p) for p in v] for k, v in self.curves.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curves = {k: [tuple(p) for p in v] for k, v in state_dict["curves"].items()}

    def config(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        hparams = pl_module.hparams
        config: dict[str, Any] = {}
        overrides = self.output_dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            typed = yaml.safe_load(overrides.read_text()) or []
            config["overrides"] = " ".join(typed) or "(none)"
        config["model"] = {k: v for k, v in hparams["model"].items() if k != "_target_"}
        config["model"]["parameters"] = pl_module.model.num_params()
        config["attention"] = {k: v for k, v in hparams["attention"].items() if k != "_partial_"}
        if hparams.get("layer_attention"):  # a hybrid stack: each layer's variant
            config["attention_layout"] = attention_layout(pl_module)
        config["optim"] = {k: v for k, v in hparams["optim"].items() if k != "_partial_"}
        if hparams.get("schedule"):
            config["schedule"] = dict(hparams["schedule"])
        config["trainer"] = {
            "max_steps": trainer.max_steps,
            "precision": trainer.precision,
            "devices": trainer.world_size,
        }
        return config

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule, weights: str) -> Path:
        out = self.output_dir
        # trainer.test() starts callback_metrics afresh: keep the fit's values next to the test's
        self.metrics.update(
            (k, float(v))
            for k, v in trainer.callback_metrics.items()
            if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)
        )
        figures = []
        curves = {k: ([s for s, _ in v], [y for _, y in v]) for k, v in self.curves.items()}
        save_png(loss_curves(curves), out / FIGURES["loss_curves"])
        figures.append(("Loss curves", FIGURES["loss_curves"]))
        stats = None
        recorded: dict[str, Any] = {}  # the record's fields only this report computes
        if self._probe is None:
            self._probe = first_validation_inputs(trainer, self.num_sequences)
        if self._probe is not None:
            idx = self._probe.to(pl_module.device)
            layers = probe(pl_module.model, idx)
            stats = [head_statistics(a.applied, a.exact, self.local_window) for a in layers]
            shown = idx[0, : self.max_tokens]
            tokens = [pl_module.tokenizer.decode([i]) for i in shown.tolist()]
            T = len(tokens)
            grid = [a.applied[0, :, :T, :T].cpu() for a in layers]
            pattern = torch.stack(grid).float().mean(dim=(0, 1))  # (T, T): layers and heads
            recorded["attention_pattern"] = [[round(v, 5) for v in row] for row in pattern.tolist()]
            recorded["attention_stats"] = {
                name: [s[name].tolist() for s in stats] for name in ("entropy", "distance")
            }
            title = f"Attention on the first {T} tokens of a validation window"
            save_png(attention_patterns(grid, tokens, title), out / FIGURES["patterns"])
            entropy = torch.stack([s["entropy"] for s in stats]).cpu()
            distance = torch.stack([s["distance"] for s in stats]).cpu()
            save_png(
                head_heatmap(entropy, "Attention entropy per head", "nats (mean over queries)"),
                out / FIGURES["entropy"],
            )
            save_png(
                head_heatmap(
                    distance, "Mean attention distance per head", "positions back", cmap="viridis"
                ),
                out / FIGURES["distance"],
            )
            figures += [
                ("Attention patterns", FIGURES["patterns"]),
                ("Attention entropy per head", FIGURES["entropy"]),
                ("Attention distance per head", FIGURES["distance"]),
            ]
        report = render_report(
            title=f"Run report: {self.attention_label(pl_module)}",
            config=self.config(trainer, pl_module),
            metrics=self.metrics,
            figures=figures,
            attention_stats=stats,
            sample=self.sample(pl_module),
            notes=[f"Step {trainer.global_step}; attention figures and sample from {weights}."],
        )
        path = write_text(out / "report.md", report)
        update_record(out, attention_mask=self.mask(pl_module), **recorded)
        log.info("report written to %s", path)
        return path

    @staticmethod
    def attention_label(pl_module: L.LightningModule) -> str:
        """The variant, with a hybrid stack's other layers (`gla+vanilla@1`)."""
        main = variant_name(pl_module.hparams["attention"])
        return layout_label(main, attention_layout(pl_module))

    def mask(self, pl_module: L.LightningModule) -> list[str]:
        """Which (query, key) pairs layer 0 connects at T = max_tokens, as rows of '0'/'1'
        (a CPU float32 copy: the trained layer, wherever and however it runs)."""
        if self._mask is None:
            model = pl_module.model
            T = min(self.max_tokens or model.block_size, model.block_size)
            with torch.inference_mode(False), torch.enable_grad():
                attn = copy.deepcopy(model.blocks[0].attn).float().cpu()
                mask = connectivity(attn, T, pl_module.hparams["model"]["n_embd"])
            self._mask = ["".join("1" if c else "0" for c in row) for row in mask.tolist()]
        return self._mask

    def sample(self, pl_module: L.LightningModule) -> str:
        tokenizer = pl_module.tokenizer
        idx = tokenizer.encode(self.sample_prompt)[None].to(pl_module.device)
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        was_training = pl_module.training
        pl_module.eval()
        out = pl_module.model.generate(
            idx, self.sample_tokens, self.temperature, self.top_k, generator=generator
        )
        pl_module.train(was_training)
        return tokenizer.decode(out[0].tolist())
