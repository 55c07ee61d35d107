"""`python -m attn_lightning.eval`: loss against context length. At the training length it
reproduces the run's own test loss; every length scores the same targets; a length shorter or
longer than training gives the loss computed by hand; lengths no model of the checkpoint can
take are refused before any work, in one line with exit 2."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import SMALL_OPTIONS, TINY, quiet_trainer, run_cli, run_dirs, run_module
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from attn_lightning.attention.alibi import ALiBiAttention
from attn_lightning.attention.registry import variant_config, variant_names, variant_options
from attn_lightning.config import CONFIG_DIR
from attn_lightning.data.char_tokenizer import CharTokenizer
from attn_lightning.data.shakespeare import ShakespeareDataModule
from attn_lightning.errors import ConfigError, exit_on_user_error
from attn_lightning.eval import evaluate, model_at_length
from attn_lightning.model.gpt import GPT
from attn_lightning.runs.checkpoint import load_checkpoint
from attn_lightning.runs.paths import best_checkpoint
from attn_lightning.training.lit_module import LitGPT

BLOCK = 16
WORDS = ["the", "king", "queen", "of", "and", "to", "my", "lord", "thou", "art", "is", "a"]


def generated_text(num_chars: int, seed: int = 0) -> str:
    """Words from a small vocabulary, a line break now and then: structure a model learns fast."""
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < num_chars:
        word = WORDS[rng.integers(len(WORDS))] + ("\n" if rng.random() < 0.1 else " ")
        out.append(word)
        size += len(word)
    return "".join(out)[:num_chars]


def data_options(tmp: Path, text_file: Path) -> dict:
    return {
        "_target_": "attn_lightning.data.shakespeare.ShakespeareDataModule",
        "data_dir": str(tmp / "data"),
        "url": "unused",
        "sha256": "unused",
        "path": str(text_file),
        "block_size": BLOCK,
        "batch_size": 8,
        "val_fraction": 0.1,
        "val_windows": 8,
        "eval_batch_size": 32,
        "seed": 0,
        "tokenizer": "char",
    }


def module_for(text: str, attention: str, pos_embedding: str, **options) -> LitGPT:
    model = {
        "_target_": "attn_lightning.model.gpt.GPT",
        "n_layer": 1,
        "n_head": 2,
        "n_embd": 16,
        "block_size": BLOCK,
        "pos_embedding": pos_embedding,
    }
    target = {
        "alibi": "attn_lightning.attention.alibi.ALiBiAttention",
        "vanilla": "attn_lightning.attention.vanilla.VanillaAttention",
        "linformer": "attn_lightning.attention.linformer.LinformerAttention",
        "nystrom": "attn_lightning.attention.nystrom.NystromAttention",
    }[attention]
    optim = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-3}
    optim |= {"betas": [0.9, 0.99], "weight_decay": 0.0}
    schedule = {"min_lr": 3e-4, "warmup_steps": 0, "decay_steps": 30}
    tokenizer = CharTokenizer.from_text(text).state_dict()
    attention_config = {"_target_": target, "_partial_": True, **options}
    return LitGPT(model, attention_config, optim, tokenizer, schedule=schedule)


def save_untrained(path: Path, module: LitGPT) -> Path:
    """A checkpoint file as Lightning writes one (state_dict + hyper_parameters)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("eval_corpus")
    text = generated_text(12_000)
    (tmp / "text.txt").write_text(text)
    return tmp / "text.txt", text


@pytest.fixture(scope="module")
def trained_run(corpus, tmp_path_factory) -> tuple[Path, float]:
    """A run dir as training leaves it (checkpoints/, .hydra/config.yaml with the data), with
    the test loss its test after fit logged (on the best checkpoint): an ALiBi model without
    position embeddings, trained 30 steps at block 16."""
    text_file, text = corpus
    run_dir = tmp_path_factory.mktemp("eval_run")
    data = data_options(run_dir, text_file)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create({"data": data}), run_dir / ".hydra" / "config.yaml")
    datamodule = ShakespeareDataModule(**{k: v for k, v in data.items() if k != "_target_"})
    torch.manual_seed(0)
    module = module_for(text, "alibi", "none")
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="step{step:06d}-val_loss{val/loss:.4f}",
        auto_insert_metric_name=False,
        monitor="val/loss",
        save_top_k=1,
        save_last=True,
    )
    trainer = quiet_trainer(
        max_steps=30, val_check_interval=10, callbacks=[checkpoint], num_sanity_val_steps=0
    )
    trainer.fit(module, datamodule=datamodule)
    (tested,) = trainer.test(module, datamodule=datamodule, ckpt_path="best", verbose=False)
    return run_dir, tested["test/loss"]


def eval_config(tmp: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        # no plot (matplotlib is slow) unless a test asks for it
        options = [f"output_dir='{tmp}'", "device=cpu", "plot=false"]
        return compose("eval", overrides=[*options, *overrides])


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def held_out(text: str) -> torch.Tensor:
    """The test split by hand: the last 10% of the characters, as ids."""
    tokenizer = CharTokenizer.from_text(text)
    ids = tokenizer.encode(text)
    return ids[int(len(ids) * 0.9) :]


def test_training_length_reproduces_the_runs_test_loss(trained_run, tmp_path) -> None:
    run_dir, test_loss = trained_run
    results, files = evaluate(eval_config(tmp_path, f"ckpts=['{run_dir}']"))  # lengths: default
    ((label, (result,)),) = results.items()
    assert result.length == BLOCK
    assert result.loss == pytest.approx(test_loss, rel=1e-5)
    (row,) = read_rows(files["csv"])
    assert float(row["loss"]) == pytest.approx(test_loss, rel=1e-5)
    assert label.startswith("ALiBiAttention, pos none")


def test_every_length_scores_the_same_targets(trained_run, corpus, tmp_path) -> None:
    run_dir, _ = trained_run
    lengths = [4, 8, 16, 32, 64]
    _, files = evaluate(
        eval_config(tmp_path, f"ckpts=['{run_dir}']", "lengths=[64,8,4,32,16]", "plot=true")
    )
    rows = read_rows(files["csv"])
    assert [int(r["length"]) for r in rows] == lengths  # one row per length, in order
    targets = (len(held_out(corpus[1])) - 1) // 64 * 64  # the largest multiple of every length
    assert {int(r["tokens"]) for r in rows} == {targets}
    assert [int(r["windows"]) for r in rows] == [targets // n for n in lengths]
    for r in rows:
        assert float(r["ppl"]) == pytest.approx(math.exp(float(r["loss"])), rel=1e-6)
        assert float(r["bpc"]) == pytest.approx(float(r["loss"]) / math.log(2), rel=1e-6)
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| ALiBiAttention, pos none | 32 |" in files["table"].read_text()


def test_several_checkpoints_share_one_table(trained_run, tmp_path) -> None:
    """A run dir and its best checkpoint file are the same model: two labelled rows per
    length with equal losses; max_tokens caps the targets (to a multiple of every length)."""
    run_dir, _ = trained_run
    ckpts = f"ckpts=['{run_dir}','{best_checkpoint(run_dir)}']"
    results, files = evaluate(eval_config(tmp_path, ckpts, "lengths=[8,32]", "max_tokens=200"))
    first, second = results
    assert second == f"{first} (2)"
    assert results[first] == results[second]
    rows = read_rows(files["csv"])
    assert [(r["model"], int(r["length"])) for r in rows] == [
        (first, 8),
        (first, 32),
        (second, 8),
        (second, 32),
    ]
    assert {int(r["tokens"]) for r in rows} == {192}  # 200 // 32 * 32


def test_shorter_and_longer_lengths_match_the_loss_by_hand(trained_run, corpus, tmp_path) -> None:
    """At 8 (shorter than training): non-overlapping windows through the trained model's own
    forward, by hand. At 32 (longer): ALiBi is causal and relative, so the first 16 logits of
    each 32-window equal the trained model's on those 16 tokens; the rest, by hand through a
    GPT built at block 32 with the trained weights."""
    run_dir, _ = trained_run
    results, _ = evaluate(eval_config(tmp_path, f"ckpts=['{run_dir}']", "lengths=[8,32]"))
    (short, long) = next(iter(results.values()))
    module = load_checkpoint(best_checkpoint(run_dir))
    tokens = held_out(corpus[1])
    span = (len(tokens) - 1) // 32 * 32
    for length, result in ((8, short), (32, long)):
        if length <= BLOCK:
            forward = module.model
        else:
            sizes = {k: v for k, v in module.hparams["model"].items() if k != "_target_"}
            sizes |= {"block_size": length, "vocab_size": module.model.vocab_size}
            forward = GPT(**sizes, attention=ALiBiAttention).eval()
            forward.load_state_dict(module.model.state_dict())
        x = tokens[:span].view(-1, length)  # (windows, length): consecutive, non-overlapping
        y = tokens[1 : span + 1].view(-1, length)
        with torch.no_grad():
            logits = forward(x).logits
            if length > BLOCK:
                prefix = module.model(x[:, :BLOCK]).logits
                torch.testing.assert_close(logits[:, :BLOCK], prefix, atol=1e-5, rtol=1e-5)
        nats = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        assert result.loss == pytest.approx(nats / span, rel=1e-5)
        assert result.tokens == span


def test_every_variant_extends_past_training_or_is_refused() -> None:
    """Past the training length (pos none), each conf/attention variant's rebuilt model gives
    the trained model's logits on the first 32 positions (causal: a longer context changes no
    earlier logit), or is refused: Linformer (compressions sized by block_size) and
    Nyströmformer (segments of block_size / num_landmarks) alone."""
    tokenizer = CharTokenizer("abcdefgh").state_dict()
    optim = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
    optim |= {"betas": [0.9, 0.99], "weight_decay": 0.0}
    model = {"_target_": "attn_lightning.model.gpt.GPT", "n_layer": 1, "n_head": 4}
    model |= {"n_embd": 32, "block_size": 32, "pos_embedding": "none"}
    x = torch.randint(0, 8, (2, 96), generator=torch.Generator().manual_seed(0))
    refused = set()
    for name in variant_names():
        options = variant_options(name)
        attention = dict(variant_config(name)) | {
            k: v for k, v in SMALL_OPTIONS.items() if k in options
        }
        torch.manual_seed(0)
        module = LitGPT(model, attention, optim, tokenizer).eval()
        try:
            longer = model_at_length(module, 96, "lengths")
        except ConfigError as error:
            assert str(error).startswith("lengths=96: ") and "evaluate lengths <= 32" in str(error)
            refused.add(name)
            continue
        with torch.no_grad():
            logits, trained = longer(x).logits[:, :32], module.model(x[:, :32]).logits
        torch.testing.assert_close(logits, trained, atol=1e-5, rtol=1e-4, msg=name)
    assert refused == {"linformer", "nystrom"}


def refusal(cfg: DictConfig, capsys: pytest.CaptureFixture) -> str:
    """The one-line message and exit status 2 of the entry point's error handling."""
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(evaluate)(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_learned_positions_past_their_size_are_refused_before_any_work(
    corpus, tmp_path, capsys
) -> None:
    ckpt = save_untrained(tmp_path / "learned.ckpt", module_for(corpus[1], "vanilla", "learned"))
    out = tmp_path / "out"
    # no data anywhere: the refusal comes before the data would be read
    cfg = eval_config(out, f"ckpts=['{ckpt}']", "lengths=[16,32]", "data.path=/nonexistent")
    err = refusal(cfg, capsys)
    assert "lengths=32" in err and "model.pos_embedding=learned has 16 position embeddings" in err
    assert "evaluate lengths <= 16" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("attention", "options", "says"),
    [
        ("linformer", {"num_segments": 4}, "blocks.0.attn.key_compression is sized by block_size"),
        ("nystrom", {"num_landmarks": 4}, "layer 0's attention (NystromAttention) built for"),
    ],
)
def test_variants_sized_by_block_size_are_refused_past_it(
    corpus, tmp_path, capsys, attention, options, says
) -> None:
    module = module_for(corpus[1], attention, "none", **options)
    ckpt = save_untrained(tmp_path / f"{attention}.ckpt", module)
    cfg = eval_config(tmp_path / "out", f"ckpts=['{ckpt}']", "lengths=[32]")
    err = refusal(cfg, capsys)
    assert "lengths=32" in err and says in err and "evaluate lengths <= 16" in err
    module_at_8 = model_at_length(module, 8, "lengths")  # shorter: the trained model itself
    assert module_at_8 is module.model


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("lengths=[]", "lengths=[] is empty"),
        ("lengths=[0,16]", "lengths: 0 is not a positive number"),
        ("split=val", "split='val' does not exist: choose one of test, train"),
        ("ckpts=['{tmp}/missing.ckpt']", "no checkpoint at"),
        ("ckpts=['{tmp}/corrupt.ckpt']", "is truncated or corrupted"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(corpus, tmp_path, capsys, override, says) -> None:
    ckpt = save_untrained(tmp_path / "ok.ckpt", module_for(corpus[1], "vanilla", "learned"))
    (tmp_path / "corrupt.ckpt").write_bytes(ckpt.read_bytes()[:100])
    cfg = eval_config(tmp_path / "out", f"ckpts=['{ckpt}']", override.format(tmp=tmp_path))
    assert says in refusal(cfg, capsys)


@pytest.mark.slow  # a subprocess, paying every import
def test_the_cli_refuses_in_one_line(corpus, tmp_path) -> None:
    ckpt = save_untrained(tmp_path / "learned.ckpt", module_for(corpus[1], "vanilla", "learned"))
    proc = run_module("attn_lightning.eval", [f"ckpts=[{ckpt}]", "lengths=[64]"], tmp_path, None)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: lengths=64: model.pos_embedding=learned has 16")
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow  # two subprocesses: a training run of the CLI, then the eval CLI
def test_the_cli_reproduces_the_recorded_test_loss(corpus, tmp_path) -> None:
    """As a user runs it: train (TINY, pos none + ALiBi), then `attn_lightning.eval` on the run
    dir at the default length: the loss equals summary.json's test/loss."""
    text_file, _ = corpus
    train = [*TINY, f"data.path={text_file}", "attention=alibi", "model.pos_embedding=none"]
    run_cli("attn_lightning", train, tmp_path, tmp_path / "data")
    (run_dir,) = run_dirs(tmp_path / "outputs")
    recorded = json.loads((run_dir / "summary.json").read_text())["metrics"]["test/loss"]
    args = [f"ckpts=[{run_dir}]", f"output_dir={tmp_path / 'eval'}"]
    proc = run_cli("attn_lightning.eval", args, tmp_path, tmp_path / "data")
    (row,) = read_rows(tmp_path / "eval" / "context_length.csv")
    assert int(row["length"]) == 32  # TINY's data.block_size
    assert float(row["loss"]) == pytest.approx(recorded, rel=1e-5)
    assert "loss_vs_length.png" in proc.stdout


def test_command_line_data_keys_apply_over_the_runs_saved_data(trained_run, tmp_path) -> None:
    """A run dir's data config is used, except what the command line sets (a moved corpus:
    data.path=...); with no data.* given it is the run's own, untouched."""
    from hydra.core.hydra_config import HydraConfig

    from attn_lightning.runs.data_config import data_config

    run_dir, _ = trained_run
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml").data
    moved = tmp_path / "moved.txt"
    for overrides, path in (([], saved.path), ([f"data.path={moved}"], str(moved))):
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("eval", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            data, source = data_config(cfg, run_dir, BLOCK)
        finally:
            HydraConfig.instance().cfg = None
        assert data["path"] == path and data["block_size"] == saved.block_size
        assert ("data.path from the command line" in source) == bool(overrides)
