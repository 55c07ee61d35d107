"""Bad input to every entry point, as a user types it: one line `error: ...` that names the key
(or file) and says what to do, exit 2, no traceback. Hydra's own composition errors (a value of
the wrong type, an unknown key, an override it cannot parse) and constructors refusing their
config are turned into that line by attn_lightning/config/entry_point.py; the rest are the entry
points' own checks. All cases run in one interpreter (helpers.run_entry_points)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import GENERATED_TEXT, TINY, run_entry_points, tiny_lit_gpt

from attn_lightning.data.char_tokenizer import CharTokenizer

CKPT = "{ckpt}"  # replaced by a real (untrained) checkpoint of a 1-layer, block-32 model
TRAIN = [*TINY[1:], "debug=fast"]

# Training configs refused by the constructors' and training/validate.py's checks or the schema.
BAD_CONFIGS = [
    (["model.n_embd=33"], "not divisible by model.n_head"),
    (["attention=gqa", "attention.n_kv_head=3"], "must be positive and divide model.n_head"),
    (["data.block_size=0"], "data.block_size must be positive"),
    (["data.block_size=120000"], "too few for block_size 120000: lower data.block_size"),
    (["model.block_size=16"], "model.block_size=16 is shorter than the data's sequences"),
    (["model.n_layer=0"], "model.n_layer must be positive"),
    (["optim.lr=-1"], "optim.lr must be positive"),
    (["schedule.min_lr=0.5"], "schedule.min_lr=0.5 exceeds optim.lr"),
    (["optim.lr=four"], "optim.lr must be positive, got 'four'"),
    # the optimizer's arguments, checked against its class (SGD has no betas)
    (["optim=sgd", "+optim.betas=[0.9,0.99]"], "optim.betas is not an argument of torch.optim.SGD"),
    (
        ["optim._target_=torch.optim.Adamm"],
        "optim._target_='torch.optim.Adamm' is not an importable",
    ),
    (["optim=sgd", "optim.momentum=-1"], "torch.optim.SGD refuses its arguments"),
    (["data.batch_size=0"], "data.batch_size must be positive"),
    (["trainer.max_steps=0"], "trainer.max_steps must be positive"),
    (["attention=nope"], "Available options in 'attention'"),
    # the typed schema (attn_lightning/config/schema.py): wrong types and unknown option values
    (["model.n_layer=four"], "Value 'four' of type 'str' could not be converted to Integer"),
    (["model.pos_embedding=lerned"], "Invalid value 'lerned', expected one of [learned, none]"),
    (["on_nonfinite_loss=halt"], "Invalid value 'halt', expected one of [stop, skip]"),
    (["resume=yes"], "Invalid value 'yes', expected one of [auto]"),
    (["data.tokenizer=bytes"], "Invalid value 'bytes', expected one of [char, bpe]"),
    (["data.val_fraction=a_lot"], "could not be converted to Float"),
    (["data=nope"], "Available options in 'data'"),
    (["experiment=compare_atention"], "Could not find 'experiment/compare_atention'"),
    (["hparams_search=optuan"], "Could not find 'hparams_search/optuan'"),
    (["attention=performer", "attention.nb_features=0"], "nb_features must be >= 1"),
    (["attention=sliding_window", "attention.window=0"], "window must be >= 1"),
    (["attention=nystrom", "attention.num_landmarks=7"], "num_landmarks"),
    (["trainer=ddp"], "trainer=ddp_cpu"),
]


# (module, arguments, the message's words). Each message names what to change.
CASES: list[tuple[str, list[str], str]] = [
    # Hydra composition, now one line and exit 2
    ("train", ["callbacks.nope.x=1"], "Could not override 'callbacks.nope.x'"),
    ("train", ["logger=nope"], "Could not find 'logger/nope' Available options in 'logger': csv,"),
    ("train", ["prompt=é"], "LexerNoViableAltException"),
    # keys Hydra lets through with `+`, and constructors refusing their values
    ("train", ["+max_stpes=10"], "max_stpes: conf/train.yaml has no such key"),
    ("train", ["+trainer.foo=1"], "trainer (lightning.pytorch.trainer.trainer.Trainer) refused"),
    ("train", ["trainer.precision=17"], "Precision 17 is invalid"),
    ("train", ["attention=linear", "attention.chunk_size=abc"], "attention.chunk_size='abc' is no"),
    ("train", ["model.dropout=1.5"], "model.dropout must be in [0, 1), got 1.5"),
    ("train", ["seed=-1"], "seed must be in [0, 2**32), got -1"),
    ("train", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be >= 0"),
    ("train", ["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be"),
    ("train", ["callbacks.text_sample.temperature=-1"], "callbacks.text_sample: temperature mus"),
    ("train", ["trainer.log_every_n_steps=0"], "callbacks.throughput"),
    (
        "train",
        ["+callbacks/early_stopping=exact_match"],  # text logs no exact match
        "callbacks.early_stopping.monitor=val/exact_match is never logged with this data",
    ),
    # sampling
    ("sample", [], "ckpt_path is required (??? in the config): pass ckpt_path=<value>"),
    ("sample", [f"ckpt_path={CKPT}", "+temprature=0.5"], "temprature: conf/sample.yaml has no"),
    ("sample", [f"ckpt_path={CKPT}", "seed=abc"], "'abc' of type 'str' could not be converted"),
    ("sample", [f"ckpt_path={CKPT}", "prompt=\u00e9\u00e9"], "quote a value"),
    # loss against context length
    ("eval", [], "ckpts is required (??? in the config)"),
    ("eval", [f"ckpts=[{CKPT}]", "plot=maybe"], "'maybe' is not a valid bool"),
    ("eval", [f"ckpts=[{CKPT}]", "batch_tokens=-1"], "batch_tokens must be positive, got -1"),
    # analysis
    ("analyze", [f"ckpt_path={CKPT}", "text="], "text is empty"),
    ("analyze", [f"ckpt_path={CKPT}", "ablation.max_batches=0"], "ablation.max_batches must be"),
    ("analyze", [f"ckpt_path={CKPT}", "masks.n_head=3"], "masks.n_embd=64 is not divisible by"),
    ("analyze", [f"ckpt_path={CKPT}", "masks.seq_len=0"], "masks.seq_len must be >= 1, got 0"),
    ("analyze", [f"ckpt_path={CKPT}", "text=" + "a" * 40], "text has 40 tokens, more than"),
    ("analyze", [f"ckpt_path={CKPT}", "ablation.enabled=perhaps"], "'perhaps' is not a valid b"),
    # the attention contract: bad sizes are bad input (2), not a failed check (1)
    ("check", ["sizes.length=0"], "sizes.length must be positive, got 0"),
    ("check", ["sizes.n_head=3"], "sizes.n_embd=32 is not divisible by sizes.n_head=3"),
    ("check", ["sizes.batch_size=two"], "sizes.batch_size='two' is not int"),
    ("check", ["timing.lengths=[0]"], "timing.lengths must be positive, got 0"),
    ("check", ["timing.enabled=nah"], "timing.enabled='nah' is not true or false"),
    ("check", ["attention=linear", "attention.chunk_size=0"], "attention.chunk_size must be >="),
    *(("train", overrides, message) for overrides, message in BAD_CONFIGS),
]
IDS = [f"{module} {' '.join(args)}"[:60] for module, args, _ in CASES]


@pytest.fixture(scope="module")
def outcomes(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    cwd = tmp_path_factory.mktemp("bad_inputs")
    text = (data_dir / GENERATED_TEXT).read_text()
    module = tiny_lit_gpt(CharTokenizer.from_text(text).state_dict(), block_size=32)
    ckpt = cwd / "model.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    cases = []
    for name, args, _ in CASES:
        args = [a.replace(CKPT, str(ckpt)) for a in args]
        cases.append((f"attn_lightning.{name}", [*TRAIN, *args] if name == "train" else args))
    return run_entry_points(cases, cwd, data_dir)


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_bad_input_is_one_line_with_exit_2(outcomes: list[dict], case: int) -> None:
    outcome, (_, args, message) = outcomes[case], CASES[case]
    if args == ["trainer=ddp"] and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs trainer=ddp asks for")
    stderr = outcome["stderr"]
    assert "Traceback" not in stderr + outcome["stdout"], stderr[-3000:]
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    assert outcome["code"] == 2, stderr[-2000:]
    assert last.startswith("error: ") and message in last, stderr[-2000:]
    # Hydra's own lines are gone: the error is all the user reads
    assert "HYDRA_FULL_ERROR" not in stderr and "Error executing job" not in stderr
