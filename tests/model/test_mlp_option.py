"""`model.mlp=false`: blocks of attention alone (Zoology's Figure 2). The block holds no MLP
parameters and computes x + attn(ln(x)); the option composes from the command line, and its
checkpoint and incremental decoding work as the default model's do."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.config import CONFIG_DIR
from attn_lightning.model.gpt import GPT, Block
from attn_lightning.runs.checkpoint import load_checkpoint
from attn_lightning.training.builders import build_module

SHAPE = {"n_head": 2, "n_embd": 16, "block_size": 24}


def test_a_block_without_mlp_has_no_mlp_parameters():
    with_mlp = Block(VanillaAttention(**SHAPE, dropout=0.0, bias=False), 16, 0.0, False)
    without = Block(VanillaAttention(**SHAPE, dropout=0.0, bias=False), 16, 0.0, False, mlp=False)
    names = {name for name, _ in without.named_parameters()}
    assert names and all(name.startswith(("ln_1.", "attn.")) for name in names)
    assert {n for n, _ in with_mlp.named_parameters()} - names == {
        "ln_2.weight", "mlp.fc.weight", "mlp.proj.weight"
    }  # fmt: skip
    model = GPT(11, 2, **SHAPE, attention=VanillaAttention, mlp=False)
    assert not any(".mlp." in n or ".ln_2." in n for n, _ in model.named_parameters())
    mlp_params = 2 * (16 * 64 + 64 * 16 + 16)  # fc, proj and ln_2's weight in each of 2 blocks
    full = GPT(11, 2, **SHAPE, attention=VanillaAttention)
    assert full.num_params() - model.num_params() == mlp_params


def test_a_block_without_mlp_computes_x_plus_attention_of_its_norm():
    torch.manual_seed(0)
    block = Block(VanillaAttention(**SHAPE, dropout=0.0, bias=False), 16, 0.0, False, mlp=False)
    with torch.no_grad():
        block.ln_1.weight.uniform_(0.5, 1.5)  # a norm that is not the identity's
    x = torch.randn(3, 10, 16)
    # attention by hand: layer norm, q/k/v projection, causal softmax per head, output projection
    attn = block.attn
    h = F.layer_norm(x, (16,), block.ln_1.weight, None, 1e-5)
    q, k, v = (h @ w.T for w in attn.qkv.weight.split(16, dim=0))
    heads = [(t.view(3, 10, 2, 8).transpose(1, 2)) for t in (q, k, v)]  # (B, H, T, D)
    scores = heads[0] @ heads[1].transpose(-1, -2) / 8**0.5
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    weights = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    mixed = (weights @ heads[2]).transpose(1, 2).reshape(3, 10, 16)
    expected = x + mixed @ attn.proj.weight.T
    out, _ = block(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_incremental_decoding_without_mlp_equals_full_recomputation():
    torch.manual_seed(0)
    model = GPT(11, 2, **SHAPE, attention=VanillaAttention, mlp=False).eval()
    idx = torch.randint(11, (2, 4))
    incremental = model.generate(idx, 12, temperature=0.0)
    full = model.generate(idx, 12, temperature=0.0, incremental=False)
    assert torch.equal(incremental, full)


def test_the_option_composes_and_its_checkpoint_rebuilds_the_model(tmp_path: Path):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", ["paths.output_dir=.", "experiment=mqar", "model.mlp=false"])
        default = compose("train", ["paths.output_dir=.", "experiment=mqar"])
    assert cfg.model.mlp is False and default.model.mlp is True
    tokenizer = instantiate(cfg.data).tokenizer.state_dict()
    module = build_module(cfg, tokenizer)
    assert all(block.mlp is None for block in module.model.blocks)
    path = tmp_path / "mlp_false.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    loaded = load_checkpoint(path)
    assert all(block.mlp is None and block.ln_2 is None for block in loaded.model.blocks)
    idx = torch.randint(cfg.data.vocab_size, (1, 16))
    torch.testing.assert_close(loaded.model(idx).logits, module.model.eval()(idx).logits)
