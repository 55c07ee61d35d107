"""Every variant learns a play-shaped text (tests/corpus.py): a tiny GPT, 40 AdamW steps, the
loss falls and stays finite. (A leaking variant would fall far faster; see test_causality.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import GENERATED_TEXT, small_attention

from attn_lightning.model.gpt import GPT

STEPS, BATCH, BLOCK = 40, 8, 32


@pytest.fixture(scope="module")
def data(data_dir: Path) -> torch.Tensor:
    text = (data_dir / GENERATED_TEXT).read_text()
    vocab = {c: i for i, c in enumerate(sorted(set(text)))}
    return torch.tensor([vocab[c] for c in text[:50_000]])


def test_variant_trains(data: torch.Tensor, variant: str) -> None:
    torch.manual_seed(0)
    model = GPT(65, 2, 4, 32, BLOCK, small_attention(variant)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(STEPS):
        starts = torch.randint(len(data) - BLOCK - 1, (BATCH,), generator=generator)
        x = torch.stack([data[s : s + BLOCK] for s in starts])
        y = torch.stack([data[s + 1 : s + BLOCK + 1] for s in starts])
        loss = model(x, y).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    losses = torch.tensor(losses)
    assert torch.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean() - 0.5, losses
