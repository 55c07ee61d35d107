"""Ablating a head changes the model only through that head's slice of the attention output,
and leaves the model exactly as it was afterwards."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from attn_lightning.analysis.ablation import ablate, ablation_study, mean_loss
from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.model.gpt import GPT

T, H, C = 16, 4, 32
ATTENTIONS = {
    "vanilla": VanillaAttention,
    "gqa": partial(VanillaAttention, n_kv_head=2),
}


def make_model(name: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(65, 3, H, C, T, attention=ATTENTIONS[name], bias=True).eval()
    with torch.no_grad():  # a trained-looking model: no near-zero residual projections
        for block in model.blocks:
            block.attn.proj.weight.normal_(0, 0.2)
            block.attn.proj.bias.normal_(0, 0.2)
    return model


@torch.no_grad()
def manual_logits(model: GPT, idx: torch.Tensor, layer: int, heads: list[int]) -> torch.Tensor:
    """The forward pass written out, with the outputs of `heads` of `layer` set to zero."""
    x = model.tok_emb(idx) + model.pos_emb(torch.arange(idx.size(1)))
    for i, block in enumerate(model.blocks):
        if i != layer:
            x = block(x)[0]
            continue
        attn = block.attn
        q, k, v = attn.core_inputs(*attn.split_heads(block.ln_1(x)))  # (B, H, T, D)
        att = attn.attention_matrix(q, k)  # (B, H, T, T)
        y = att @ v  # (B, H, T, D)
        y[:, heads] = 0.0
        x = x + attn.proj(y.transpose(1, 2).reshape(*idx.shape, C))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


@pytest.mark.parametrize("name", sorted(ATTENTIONS))
def test_ablating_a_head_equals_the_manual_computation(name: str) -> None:
    model = make_model(name)
    idx = torch.randint(65, (2, T))
    original = model(idx).logits
    torch.testing.assert_close(manual_logits(model, idx, 1, []), original)  # the manual pass
    for heads in ([2], [0, 3]):
        with ablate(model, 1, heads):
            ablated = model(idx).logits
        torch.testing.assert_close(ablated, manual_logits(model, idx, 1, heads))
        assert (ablated - original).abs().max() > 1e-3  # the ablation does something
    # every layer before the ablated one is untouched: the first layer's hidden state agrees
    hidden = {}
    hook = model.blocks[0].register_forward_hook(lambda m, a, out: hidden.update(h=out[0]))
    with ablate(model, 2, [1]):
        model(idx)
    ablated_first = hidden["h"]
    model(idx)
    hook.remove()
    torch.testing.assert_close(ablated_first, hidden["h"], rtol=0, atol=0)


def test_ablation_restores_the_model_even_after_an_error() -> None:
    model = make_model("vanilla")
    idx = torch.randint(65, (2, T))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    original = model(idx).logits
    with pytest.raises(RuntimeError), ablate(model, 0, [1]):
        raise RuntimeError("boom")
    assert all(len(b.attn.proj._forward_pre_hooks) == 0 for b in model.blocks)
    torch.testing.assert_close(model(idx).logits, original, rtol=0, atol=0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match=r"heads 0\.\.3"), ablate(model, 0, [4]):
        pass


def test_ablation_study_matches_single_ablations() -> None:
    model = make_model("vanilla").train()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(65, (3, T), generator=g), torch.randint(65, (3, T), generator=g))]
    batches[0][1][0, :5] = -100  # ignored targets do not count
    study = ablation_study(model, batches)
    assert model.training
    model.eval()
    x, y = batches[0]
    assert study.base_loss == pytest.approx(float(model(x, y).loss.detach()))
    for layer, head in ((0, 0), (2, 3)):
        logits = manual_logits(model, x, layer, [head])
        manual = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
        assert float(study.head_loss[layer, head]) == pytest.approx(float(manual), rel=1e-5)
    logits = manual_logits(model, x, 1, list(range(H)))
    manual = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    assert float(study.layer_loss[1]) == pytest.approx(float(manual), rel=1e-5)
    ranked = study.ranked_heads()
    assert len(ranked) == 3 * H
    increases = [r[2] for r in ranked]
    assert increases == sorted(increases, reverse=True)
    layer, head, top = ranked[0]
    assert top == pytest.approx(float(study.head_loss[layer, head]) - study.base_loss)
    assert mean_loss(model, batches) == pytest.approx(study.base_loss)
