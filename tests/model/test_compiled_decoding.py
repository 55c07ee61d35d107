"""Compiled incremental decoding (`IncrementalDecoder(model, compile=True)`): the fixed-shape
caches of `new_caches(static=True)` and the one-token step `one_token_logits` give the logits
of full recomputation at every position, eagerly (fast tests: the mask of unwritten slots,
positions as tensors) and compiled (slow: each variant compiles for seconds), and variants
without a fixed-shape cache say so in one line and decode eagerly."""

from __future__ import annotations

import string
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers import small_attention

import attn_lightning.model.decoding as decoding
from attn_lightning.bench import generation
from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.model.decoding import (
    IncrementalDecoder,
    StaticCacheError,
    compiled_one_token_logits,
    one_token_logits,
)
from attn_lightning.model.gpt import GPT
from attn_lightning.model.sampling import Sampler
from attn_lightning.sample import generate_text

BLOCK = 24
CHARS = string.ascii_letters + string.digits + " .,"  # 65: the test models' vocabulary
COMPILED = ["vanilla", "gqa", "rotary", "alibi", "linear", "performer"]


def gpt(variant: str, **overrides) -> GPT:
    torch.manual_seed(0)
    attention = small_attention(variant, {"chunk_size": 4, "window": 5}, **overrides)
    return GPT(65, 2, 4, 32, BLOCK, attention).eval()


@pytest.mark.parametrize("variant", COMPILED)
def test_static_caches_give_full_recomputation_logits(variant: str) -> None:
    """Eagerly: a prefill and a several-token extension through `extend` (positions from the
    caches' tensor counts) and single tokens through `one_token_logits` (positions as a
    tensor and the slots held given, the compiled step's own code), all on static caches:
    each position's logits equal full recomputation's (a step that missed its own key, one
    slot too few, would not)."""
    model = gpt(variant)
    sequence = torch.randint(65, (2, BLOCK - 2))
    with torch.inference_mode():
        full = model(sequence).logits  # (B, T, V)
        caches, slots = model.new_caches(static=True), torch.arange(BLOCK)
        prefill = model(sequence[:, :5], caches=caches).logits
        torch.testing.assert_close(prefill, full[:, :5], rtol=1e-4, atol=1e-5)
        for t in range(5, 12):
            logits = one_token_logits(model, sequence[:, t : t + 1].clone(), caches, slots[: t + 1])
            torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)
        chunk = model(sequence[:, 12:15], caches=caches).logits
        torch.testing.assert_close(chunk, full[:, 12:15], rtol=1e-4, atol=1e-5)
        for t in range(15, BLOCK - 2):
            logits = one_token_logits(model, sequence[:, t : t + 1].clone(), caches, slots[: t + 1])
            torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)
    assert all(cache.length == BLOCK - 2 for cache in caches)


def test_static_kv_cache_buffers_keep_their_shape() -> None:
    """The compiled step needs tensors of one shape at every position: the KV buffers hold
    block_size slots from the first write on, the tokens written at their positions."""
    model = gpt("vanilla")
    sequence = torch.randint(65, (1, 9))
    with torch.inference_mode():
        static, growing = model.new_caches(static=True), model.new_caches()
        model(sequence[:, :4], caches=static), model(sequence[:, :4], caches=growing)
        shape = static[0].k.shape
        for t in range(4, 9):
            one_token_logits(model, sequence[:, t : t + 1].clone(), static, torch.arange(t + 1))
            model(sequence[:, t : t + 1], caches=growing)
            assert static[0].k.shape == shape == (1, 4, BLOCK, 8)
    torch.testing.assert_close(static[0].k[:, :, :9], growing[0].k)
    torch.testing.assert_close(static[0].v[:, :, :9], growing[0].v)
    assert not static[0].k[:, :, 9:].any()  # nothing written past the sequence


@pytest.mark.parametrize("variant", ["vanilla", "gqa", "alibi"])
def test_a_step_reads_only_the_slots_it_holds(variant: str) -> None:
    """The KV views a step attends over end at the slots held: slots past them, poisoned with
    NaN, do not reach the logits (a mask alone would not keep them out: 0 * NaN is NaN), and
    the logits equal full recomputation's at each length."""
    model = gpt(variant)
    sequence = torch.randint(65, (2, 12))
    with torch.inference_mode():
        full = model(sequence).logits
        caches = model.new_caches(static=True)
        model(sequence[:, :3], caches=caches)
        for cache in caches:
            cache.k[:, :, 3:], cache.v[:, :, 3:] = float("nan"), float("nan")
        for t in range(3, 12):
            token = sequence[:, t : t + 1].clone()
            logits = one_token_logits(model, token, caches, torch.arange(t + 1))
            torch.testing.assert_close(logits, full[:, t], rtol=1e-4, atol=1e-5)
            assert caches[0].k[:, :, t + 1 :].isnan().all()  # nothing written past the token


@pytest.mark.parametrize(
    ("variant", "options", "named"),
    [
        ("sliding_window", {}, "SlidingWindowAttention"),
        ("vanilla", {"short_conv": 3}, "VanillaAttention, short_conv"),
        ("deltanet", {}, "DeltaNet"),
    ],
)
def test_a_variant_without_a_static_cache_warns_once_and_decodes_eagerly(
    variant: str, options: dict, named: str
) -> None:
    model = gpt(variant, **options)
    with pytest.raises(StaticCacheError, match=f"layer 0 \\({named}\\)"):
        model.new_caches(static=True)
    prompt = torch.randint(65, (1, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = model.generate(prompt, 8, temperature=0, compile=True)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    assert named in messages[0] and "decoding eagerly" in messages[0]
    assert torch.equal(tokens, model.generate(prompt, 8, temperature=0))


def _logits_side_by_side(model: GPT, prompt: torch.Tensor, steps: int) -> tuple[list, list]:
    """Greedy decoding driven by eager incremental logits, the compiled decoder fed the same
    sequence: both decoders' logits at every step."""
    eager, compiled = IncrementalDecoder(model), IncrementalDecoder(model, compile=True)
    eager_logits, compiled_logits = [], []
    idx = prompt
    with torch.inference_mode():
        for _ in range(steps):
            eager_logits.append(eager(idx))
            compiled_logits.append(compiled(idx))
            idx = torch.cat((idx, eager_logits[-1].argmax(-1, keepdim=True)), dim=1)
    return eager_logits, compiled_logits


@pytest.mark.slow  # compiles each variant (~10-90 s each on the 2-core CPU)
@pytest.mark.parametrize("variant", COMPILED)
def test_compiled_decoding_equals_eager_incremental(variant: str) -> None:
    """Greedy tokens identical and logits close at every step, across the block_size edge
    (where both decoders recompute the cropped window), and one compilation for all steps."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = gpt(variant)
    prompt = torch.randint(65, (1, 4))  # one sequence: its (1, 1) slices have odd strides
    eager, compiled = _logits_side_by_side(model, prompt, BLOCK + 3)
    for step, (a, b) in enumerate(zip(eager, compiled, strict=True)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"step {step}")
    new = BLOCK + 3
    fast = model.generate(prompt, new, temperature=0)
    assert torch.equal(model.generate(prompt, new, temperature=0, compile=True), fast)
    # one compiled graph served every one-token step of both generations
    stats = torch._dynamo.utils.counters["stats"]
    assert stats["unique_graphs"] == 1, dict(stats)
    assert compiled_one_token_logits() is compiled_one_token_logits()


@pytest.mark.slow  # compiles two variants
def test_decoders_of_several_models_stepping_in_turn_each_run_their_own_graph() -> None:
    """Steps after a decoder's first skip dynamo's guards but those telling graphs apart: two
    models of one architecture (other weights) and a linear-attention model, decoded in turn
    in one process, each give their eager logits at every step, from two graphs in all."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    models = [gpt("vanilla"), gpt("vanilla"), gpt("linear")]
    with torch.no_grad():
        for parameter in models[1].parameters():
            parameter.mul_(1.5)
    prompt = torch.randint(65, (1, 4))
    eager = [IncrementalDecoder(model) for model in models]
    compiled = [IncrementalDecoder(model, compile=True) for model in models]
    sequences = [prompt] * len(models)
    with torch.inference_mode():
        for step in range(12):
            for index in range(len(models)):
                expected = eager[index](sequences[index])
                logits = compiled[index](sequences[index])
                torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5, msg=f"{step}")
                next_id = expected.argmax(-1, keepdim=True)
                sequences[index] = torch.cat((sequences[index], next_id), dim=1)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2


@pytest.mark.slow  # compiles
def test_the_sample_entry_point_decodes_compiled_with_the_same_draws() -> None:
    """`sample compile=true` (generate_text's `compile`): the same seeded draws as eager."""
    torch._dynamo.reset()
    model = gpt("vanilla")
    module = SimpleNamespace(model=model, tokenizer=CharTokenizer(CHARS))
    texts = {}
    for compile in (False, True):
        generator = torch.Generator().manual_seed(0)
        sampler = Sampler(temperature=0.8, top_k=20)
        texts[compile] = generate_text(module, "ab", 16, sampler, 2, None, generator, None, compile)
    assert texts[True] == texts[False]


def test_past_dynamo_s_recompile_limit_the_decoder_warns_and_decodes_eagerly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A process that compiled more shapes than torch._dynamo allows: the step is refused
    before it runs, so the decoder goes on eagerly on the same caches, with one warning."""
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 0)
    model = gpt("vanilla")
    prompt = torch.randint(65, (1, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tokens = model.generate(prompt, 8, temperature=0, compile=True)
    assert [str(w.message).count("recompile limit") for w in caught] == [1]
    assert torch.equal(tokens, model.generate(prompt, 8, temperature=0))


@pytest.mark.slow  # compiles the default model
def test_the_generation_benchmark_adds_compiled_columns(capsys: pytest.CaptureFixture) -> None:
    """`bench generation --compile`: a compiled variant's row ends with its tokens/s, ratio,
    compile seconds and "yes" (its tokens equal eager incremental's); a variant without a
    fixed-shape cache says n/a."""
    torch._dynamo.reset()
    argv = ["--attention", "vanilla", "sliding_window", "--prompt-len", "4", "--new-tokens", "6"]
    generation.main([*argv, "--repeats", "1", "--block-size", "16", "--compile"])
    table = capsys.readouterr().out
    vanilla = next(line for line in table.splitlines() if line.startswith("| vanilla"))
    window = next(line for line in table.splitlines() if line.startswith("| sliding_window"))
    cells = [cell.strip() for cell in vanilla.split("|")[1:-1]]
    assert len(cells) == 10 and cells[5] == cells[9] == "yes", table
    assert cells[7].endswith("x") and float(cells[8]) > 0
    assert "n/a" in window


def test_on_a_torch_without_the_guard_skipping_stance_every_guard_is_checked(monkeypatch):
    """The floor is torch 2.4: set_stance (2.6) and its skip_guard_eval_unsafe (2.7) may be
    missing, and compiled decoding must then run with its guards, not fail."""

    def old_set_stance(stance: str = "default", *, force_backend: object = None) -> None:
        raise AssertionError("called with an argument this torch does not have")

    for set_stance in (old_set_stance, None):
        monkeypatch.setattr(torch.compiler, "set_stance", set_stance, raising=False)
        decoding._skips_guard_eval.cache_clear()
        with decoding.differentiating_guards_only() as entered:
            assert entered is None  # a null context, nothing asked of torch
    monkeypatch.undo()
    decoding._skips_guard_eval.cache_clear()
    assert decoding._skips_guard_eval()  # this torch (2.13) has it


def test_a_torch_without_the_recompile_limit_exception_catches_nothing(monkeypatch):
    monkeypatch.delattr(torch._dynamo.exc, "FailOnRecompileLimitHit", raising=False)
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("some other failure")
        except decoding.recompile_limit_hit():
            pass
