"""No variant, with any positional option, lets a position see the future: neither through
the forward output nor through gradients."""

from __future__ import annotations

import pytest
import torch
from helpers import ATTENTION_SHAPE as SHAPE
from helpers import small_attention

from attn_lightning.attention.registry import variant_names
from attn_lightning.model.gpt import GPT

T = SHAPE["block_size"]
CUTS = [0, 6, 7, 8, 15, 16, 24]  # chunk / segment / block boundaries are multiples of 8
OPTIONS = [(v, rope) for v in variant_names() for rope in (False, True)]


@pytest.mark.parametrize(("variant", "rope"), OPTIONS)
def test_attention_is_causal(variant: str, rope: bool) -> None:
    torch.manual_seed(0)
    attn = small_attention(variant, rope=rope)(**SHAPE).eval()
    x = torch.randn(2, T, SHAPE["n_embd"], requires_grad=True)
    y, _ = attn(x)
    for t in CUTS:
        x2 = x.detach().clone()
        x2[:, t + 1 :] += torch.randn_like(x2[:, t + 1 :])
        y2, _ = attn(x2)
        torch.testing.assert_close(y2[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(y2[:, t + 1 :], y[:, t + 1 :])  # the probe can fail
        (grad,) = torch.autograd.grad(y[:, t].sum(), x, retain_graph=True)
        assert grad[:, t + 1 :].abs().max() == 0, f"gradient leaks from after {t}"
        assert grad[:, t].abs().max() > 0


@pytest.mark.parametrize("pos_embedding", ["learned", "none"])
def test_gpt_is_causal(variant: str, pos_embedding: str) -> None:
    torch.manual_seed(0)
    model = GPT(65, 2, attention=small_attention(variant), pos_embedding=pos_embedding, **SHAPE)
    idx = torch.randint(65, (2, T))
    logits = model.eval()(idx).logits
    for t in (7, 8, 20):
        idx2 = idx.clone()
        idx2[:, t + 1 :] = (idx2[:, t + 1 :] + 1) % 65
        torch.testing.assert_close(model(idx2).logits[:, : t + 1], logits[:, : t + 1])
