"""The GPT network on its own: initial loss, generation limits, causality, API shape."""

from __future__ import annotations

import math

import pytest
import torch

from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.model import GPT


def tiny_gpt(**overrides) -> GPT:
    kwargs = dict(vocab_size=65, n_layer=2, n_head=4, n_embd=64, block_size=32)
    kwargs.update(overrides)
    return GPT(attention=VanillaAttention, **kwargs)


def test_initial_loss_is_close_to_uniform_guess():
    torch.manual_seed(0)
    model = GPT(65, 4, 4, 128, 64, attention=VanillaAttention)
    idx = torch.randint(0, 65, (8, 64))
    targets = torch.randint(0, 65, (8, 64))
    loss = model(idx, targets).loss.item()
    assert abs(loss - math.log(65)) < 0.1


def test_default_preset_has_nanogpt_cpu_recipe_size():
    model = GPT(65, 4, 4, 128, 64, attention=VanillaAttention)
    assert model.num_params() == pytest.approx(0.80e6, rel=0.01)
    assert model.lm_head.weight is model.tok_emb.weight  # tied


def test_ignored_targets_do_not_count():
    torch.manual_seed(0)
    model = tiny_gpt()
    idx = torch.randint(0, 65, (2, 16))
    targets = torch.randint(0, 65, (2, 16))
    masked = targets.clone()
    masked[:, :8] = -100
    full_logits = model(idx).logits
    expected = torch.nn.functional.cross_entropy(
        full_logits[:, 8:].flatten(0, 1), targets[:, 8:].flatten()
    )
    assert torch.allclose(model(idx, masked).loss, expected)


def test_generation_crops_context_to_block_size():
    torch.manual_seed(0)
    model = tiny_gpt(block_size=8).eval()
    seen_lengths: list[int] = []
    hook = model.tok_emb.register_forward_hook(lambda m, inp, out: seen_lengths.append(out.size(1)))
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=20, top_k=5)
    hook.remove()
    assert out.shape == (1, 23)
    assert max(seen_lengths) <= 8
    assert seen_lengths[-1] == 8  # the long context was cropped, not refused


def test_greedy_generation_is_deterministic_and_top_k_restricts_choice():
    torch.manual_seed(0)
    model = tiny_gpt().eval()
    prompt = torch.randint(0, 65, (1, 5))
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, 10, temperature=0))
    next_logits = model(prompt).logits[0, -1]
    g = torch.Generator().manual_seed(1)
    top1 = model.generate(prompt, 1, temperature=1.0, top_k=1, generator=g)
    assert top1[0, -1] == next_logits.argmax()


def test_vanilla_is_causal():
    """Changing tokens after position t leaves every output at positions <= t unchanged."""
    torch.manual_seed(0)
    model = tiny_gpt().eval()
    idx = torch.randint(0, 65, (2, 32))
    base = model(idx).logits
    for t in (0, 7, 30):
        perturbed = idx.clone()
        perturbed[:, t + 1 :] = torch.randint(0, 65, perturbed[:, t + 1 :].shape)
        logits = model(perturbed).logits
        assert torch.allclose(logits[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not torch.allclose(logits[:, t + 1 :], base[:, t + 1 :])


def test_return_attn_gives_causal_row_stochastic_weights_that_match_fast_path():
    torch.manual_seed(0)
    model = tiny_gpt().eval()
    idx = torch.randint(0, 65, (2, 20))
    out = model(idx, return_attn=True)
    assert out.attentions is not None and len(out.attentions) == 2
    for att in out.attentions:
        assert att.shape == (2, 4, 20, 20)
        assert torch.allclose(att.sum(-1), torch.ones(2, 4, 20))
        assert att.triu(1).abs().max() == 0
    assert torch.allclose(out.logits, model(idx).logits, atol=1e-5)
    assert model(idx).attentions is None


def test_bad_shapes_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="divisible"):
        tiny_gpt(n_embd=50, n_head=4)
    with pytest.raises(ValueError, match="block_size"):
        tiny_gpt()(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="pos_embedding"):
        tiny_gpt(pos_embedding="sinusoidal")
