"""Sampling: the filters against hand-computed sets, top-p -> 0 as greedy, stop strings,
several samples, streaming, and bad settings refused in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import run_entry_point_cases

from attn_lightning.attention.vanilla import VanillaAttention
from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.errors import ConfigError
from attn_lightning.model.gpt import GPT
from attn_lightning.model.sampling import Sampler
from attn_lightning.sample import generate_text, stable_text

PROBS = torch.tensor([[0.5, 0.25, 0.125, 0.125]])
LOGITS = PROBS.log()
CHARS = "\n abcdefghij"


def kept(sampler: Sampler) -> list[int]:
    return torch.isfinite(sampler.filter(LOGITS))[0].nonzero().flatten().tolist()


def test_top_p_keeps_the_smallest_set_reaching_p():
    assert kept(Sampler(top_p=0.4)) == [0]  # 0.5 reaches 0.4 alone
    assert kept(Sampler(top_p=0.74)) == [0, 1]  # 0.5 + 0.25: the token that crosses p stays
    assert kept(Sampler(top_p=0.76)) == [0, 1, 2]
    assert kept(Sampler(top_p=1.0)) == [0, 1, 2, 3]
    assert kept(Sampler(top_p=1e-9)) == [0]


def test_min_p_keeps_tokens_at_least_min_p_times_the_likeliest():
    assert kept(Sampler(min_p=0.4)) == [0, 1]  # 0.4 * 0.5 = 0.2: 0.25 stays, 0.125 goes
    assert kept(Sampler(min_p=0.2)) == [0, 1, 2, 3]  # 0.1: all stay
    assert kept(Sampler(min_p=0.0)) == [0, 1, 2, 3]


def test_filters_compose_after_the_temperature():
    # top-k 2 first: 0.5 / 0.75 = 0.67 of what is left reaches top_p 0.6 alone
    assert kept(Sampler(top_k=2, top_p=0.6)) == [0]
    assert kept(Sampler(top_p=0.6)) == [0, 1]  # without top-k, 0.5 does not
    # temperature 2 flattens to p ∝ sqrt(PROBS) = 0.71, 0.5, 0.35, 0.35: min_p 0.6 keeps two
    # (0.5 >= 0.6 * 0.71 = 0.42 > 0.35), where at temperature 1 it keeps one (0.25 < 0.3)
    assert kept(Sampler(temperature=2.0, min_p=0.6)) == [0, 1]
    assert kept(Sampler(min_p=0.6)) == [0]
    probs = torch.softmax(Sampler(temperature=2.0).filter(LOGITS), -1)
    assert torch.allclose(probs, PROBS.sqrt() / PROBS.sqrt().sum())


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"min_p": 1.0}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
    ],
)
def test_bad_settings_name_their_key(settings, key):
    with pytest.raises(ConfigError, match=rf"^{key} must be"):
        Sampler(**settings)


def tiny_module(seed: int = 0) -> SimpleNamespace:
    torch.manual_seed(seed)
    model = GPT(len(CHARS), 1, 2, 16, 64, attention=VanillaAttention).eval()
    return SimpleNamespace(model=model, tokenizer=CharTokenizer(CHARS))


def test_top_p_towards_zero_is_greedy_decoding():
    module = tiny_module()
    prompt = torch.tensor([[1, 2, 3]])
    greedy = module.model.generate(prompt, 30, temperature=0)
    generator = torch.Generator().manual_seed(0)
    nucleus = module.model.generate(prompt, 30, temperature=1.5, top_p=1e-6, generator=generator)
    assert torch.equal(nucleus, greedy)
    # and p = 1 is not: at temperature 1.5 the samples leave the greedy path
    generator = torch.Generator().manual_seed(0)
    sampled = module.model.generate(prompt, 30, temperature=1.5, top_p=1.0, generator=generator)
    assert not torch.equal(sampled, greedy)


def test_a_stop_string_ends_the_sample_before_it():
    module = tiny_module()
    (full,) = generate_text(module, "ab", 40, Sampler(temperature=0))
    assert len(full) == 40
    stop = full[10:13]  # a string the greedy text reaches; it may also occur earlier
    first = full.index(stop)
    (cut,) = generate_text(module, "ab", 40, Sampler(temperature=0), stop=stop)
    assert cut == full[:first] and stop not in cut
    # streamed: the pieces are the text, and no piece ever showed the start of the stop string
    pieces: list[str] = []
    (streamed,) = generate_text(
        module, "ab", 40, Sampler(temperature=0), stop=stop, on_text=pieces.append
    )
    assert "".join(pieces) == streamed == cut


def test_stable_text_holds_back_a_possible_start_of_the_stop_string():
    assert stable_text("hello wor", "world") == "hello "
    assert stable_text("hello w", None) == "hello w"
    assert stable_text("caf\ufffd", None) == "caf"  # a partial character is not shown yet


def test_several_samples_are_drawn_in_one_batch():
    module = tiny_module()
    greedy = generate_text(module, "a", 20, Sampler(temperature=0), num_samples=3)
    assert len(greedy) == 3 and greedy[0] == greedy[1] == greedy[2]
    generator = torch.Generator().manual_seed(0)
    sampled = generate_text(module, "a", 20, Sampler(temperature=2.0), 3, generator=generator)
    assert len(set(sampled)) == 3  # independent rows, not one sample repeated


def test_a_prompt_outside_the_vocabulary_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^prompt: .*not in this tokenizer"):
        generate_text(tiny_module(), "xyz", 5, Sampler())


BAD_SAMPLE_ARGS = [
    (["max_new_tokens=-1"], "max_new_tokens must be >= 0"),
    (["max_new_tokens=many"], "Value 'many' of type 'str' could not be converted to Integer"),
    (["top_p=0"], "top_p must be in (0, 1]"),
    (["min_p=1"], "min_p must be in [0, 1)"),
    (["num_samples=0"], "num_samples must be >= 1"),
    (["stream=true", "num_samples=2"], "stream=true prints one sample"),
    (["prompt_file=/nonexistent/prompt.txt"], "prompt_file=/nonexistent/prompt.txt does not exist"),
    (["temperature=hot"], "could not be converted to Float"),
]


@pytest.fixture(scope="module")
def bad_sample_outcomes(tmp_path_factory) -> list[dict]:
    cwd = tmp_path_factory.mktemp("sample")
    cases = [[f"ckpt_path={cwd / 'missing.ckpt'}", *args] for args, _ in BAD_SAMPLE_ARGS]
    if not torch.cuda.is_available():
        cases.append([f"ckpt_path={cwd / 'missing.ckpt'}", "device=cuda"])
    cases.append([f"ckpt_path={cwd / 'missing.ckpt'}"])
    return run_entry_point_cases("attn_lightning.sample", cases, cwd, None)


@pytest.mark.parametrize(
    "case", range(len(BAD_SAMPLE_ARGS)), ids=[" ".join(a) for a, _ in BAD_SAMPLE_ARGS]
)
def test_bad_sampling_input_is_one_line_before_the_checkpoint_is_read(bad_sample_outcomes, case):
    """Each setting is checked before the (here missing) checkpoint is opened."""
    outcome, (_, message) = bad_sample_outcomes[case], BAD_SAMPLE_ARGS[case]
    assert outcome["code"] != 0 and message in outcome["stderr"], outcome["stderr"][-1500:]
    assert "Traceback" not in outcome["stderr"] + outcome["stdout"]
    if "could not be converted" not in message:  # ours: `error: ...` and exit 2
        (line,) = outcome["stderr"].strip().splitlines()
        assert outcome["code"] == 2 and line.startswith(f"error: {message}")


def test_a_missing_gpu_and_a_missing_checkpoint_are_one_line(bad_sample_outcomes):
    *_, no_gpu, missing = bad_sample_outcomes
    if not torch.cuda.is_available():
        assert no_gpu["code"] == 2 and "no CUDA GPU: use device=cpu" in no_gpu["stderr"]
    assert missing["code"] == 2 and "missing.ckpt" in missing["stderr"]
    assert "Traceback" not in missing["stderr"]
