"""A few decoded task examples (prompt, expected, produced) at each validation, logged as a
markdown table (TensorBoard's Text tab, an MLflow artifact, a W&B table: training/loggers.py)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from attn_lightning.data.interface import IGNORE, LanguageModelData
from attn_lightning.training.answers import greedy_answers
from attn_lightning.training.loggers import log_text, media_loggers


def example_rows(
    module: L.LightningModule,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    teacher_forced: bool = False,
) -> list[tuple[str, str, str]]:
    """(prompt, expected, produced) for each row, as `val/exact_match` scores it: greedy
    decoding after the prompt, or with `teacher_forced` (answers scattered through the input,
    MQAR) the argmax at every answer position, the prompt then being the input up to the last
    answer."""
    decode = module.tokenizer.decode
    if teacher_forced:
        produced = module.model(inputs).logits.argmax(-1)
    else:
        produced = greedy_answers(module.model, inputs, targets)
    rows = []
    for x, y, p in zip(inputs.tolist(), targets.tolist(), produced.tolist(), strict=True):
        kept = [j for j, t in enumerate(y) if t != IGNORE]
        prompt = decode(x[: kept[-1 if teacher_forced else 0] + 1])
        rows.append((prompt, decode([y[j] for j in kept]), decode([p[j] for j in kept])))
    return rows


class TaskExamples(L.Callback):
    """Decodes the first `num_examples` validation examples greedily after each validation.
    Does nothing for datamodules without fixed task examples (language modelling)."""

    def __init__(self, num_examples: int = 8) -> None:
        self.num_examples = num_examples

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = trainer.datamodule
        answers = isinstance(datamodule, LanguageModelData) and datamodule.answer_metrics
        if trainer.sanity_checking or not answers or not media_loggers(trainer):
            return
        inputs, targets = datamodule.eval_set("val")[: self.num_examples]
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            rows = example_rows(
                pl_module,
                inputs.to(pl_module.device),
                targets.to(pl_module.device),
                teacher_forced=datamodule.teacher_forced_answers,
            )
        pl_module.train(was_training)
        lines = ["| prompt | expected | produced | |", "| --- | --- | --- | --- |"]
        for prompt, expected, produced in rows:
            mark = "ok" if produced == expected else "**wrong**"
            lines.append(f"| `{prompt}` | `{expected}` | `{produced}` | {mark} |")
        log_text(trainer, "samples/task_examples", "\n".join(lines), trainer.global_step)
