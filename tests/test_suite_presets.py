"""The synthetic-suite presets sweep what their papers (and the suite score) need: experiment=mad
MAD's six tasks over its learning-rate x weight-decay grid with its training recipe,
experiment=suite_cpu a slice of it, experiment=mqar_figure2 Zoology's Figure 2 (each point a run
of its own, trained and tested on it), experiment=mqar_figure2_cpu a slice of that,
experiment=state_tracking parity and S5 tested past the training length, and
experiment=state_tracking_cpu a slice of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from attn_lightning.attention.registry import variant_names
from attn_lightning.config import CONFIG_DIR

MAD_TASKS = {
    "mad_in_context_recall",
    "mad_fuzzy_recall",
    "mad_noisy_recall",
    "mad_selective_copying",
    "mad_compression",
    "mad_memorization",
}
# Zoology's Figure 2: (length, key-value pairs, batch size); 64 epochs of 100,000 examples
ZOOLOGY_POINTS = {"L64_kv4": (64, 4, 512), "L128_kv8": (128, 8, 512), "L256_kv16": (256, 16, 256)}


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", ["paths.output_dir=.", *overrides], return_hydra_config=True)


def sweep_params(experiment: str) -> dict[str, list[str]]:
    params = compose_train([f"experiment={experiment}"]).hydra.sweeper.params
    return {key: [v.strip() for v in str(value).split(",")] for key, value in params.items()}


def data_options() -> set[str]:
    return {path.stem for path in (Path(CONFIG_DIR) / "data").glob("*.yaml")}


def test_mad_sweeps_its_six_tasks_its_grid_and_three_seeds():
    params = sweep_params("mad")
    assert set(params["data"]) == MAD_TASKS <= data_options()
    assert sorted(float(r) for r in params["optim.lr"]) == [1e-4, 5e-4, 1e-3]
    assert sorted(float(w) for w in params["optim.weight_decay"]) == [0.0, 0.1]
    assert len(set(params["seed"])) == 3
    assert set(params["attention"]) <= set(variant_names())
    cfg = compose_train(["experiment=mad"])
    # 200 epochs of 12,800 examples at batch 128, cosine to 1e-6 with no warm-up
    assert cfg.trainer.max_steps == 200 * 12_800 // 128 == 20_000
    assert cfg.data.batch_size == 128 and cfg.data.train_size == 12_800
    assert cfg.schedule.min_lr == 1e-6 and cfg.schedule.warmup_steps == 0
    assert cfg.optim._target_ == "torch.optim.AdamW"
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.mlp) == (2, 128, True)
    for task in MAD_TASKS:  # every task composes with the preset, at MAD's batch
        assert compose_train(["experiment=mad", f"data={task}"]).data.batch_size == 128


def test_suite_cpu_is_a_slice_of_mad():
    params = sweep_params("suite_cpu")
    assert set(params["data"]) <= MAD_TASKS and len(params["data"]) >= 2
    assert "vanilla" in params["attention"] and set(params["attention"]) <= set(variant_names())
    assert len(set(params["seed"])) == 3 and len(set(params["optim.lr"])) == 2
    jobs = np.prod([len(set(values)) for values in params.values()])
    assert jobs <= 48  # two at a time within about half an hour on a 2-core CPU
    cfg = compose_train(["experiment=suite_cpu"])
    assert cfg.hydra.callbacks.sweep_report.every_job is False  # the suite once, at the end
    assert cfg.trainer.max_steps < 20_000


def test_mqar_figure2_is_zoologys_sweep():
    params = sweep_params("mqar_figure2")
    assert set(params["data/mqar_point"]) == set(ZOOLOGY_POINTS)
    assert [int(w) for w in params["model.n_embd"]] == [64, 128, 256, 512]
    rates = [float(r) for r in params["optim.lr"]]
    np.testing.assert_allclose(rates, np.logspace(-4, -2, 4), rtol=1e-4)
    assert set(params["attention"]) <= set(variant_names())
    for point, (length, pairs, batch) in ZOOLOGY_POINTS.items():
        cfg = compose_train(["experiment=mqar_figure2", f"data/mqar_point={point}"])
        setting = [{"seq_len": length, "num_kv_pairs": pairs}]
        assert OmegaConf.to_container(cfg.data.train_settings) == setting
        assert OmegaConf.to_container(cfg.data.test_settings) == setting
        assert cfg.data.block_size == cfg.model.block_size == length
        assert cfg.data.batch_size == batch
        assert cfg.trainer.max_steps == 64 * 100_000 // batch
        assert (cfg.data.vocab_size, cfg.data.train_size, cfg.data.test_size) == (
            8192,
            100_000,
            3000,
        )
        assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.mlp) == (2, 1, False)
        assert cfg.hydra.runtime.choices["data"] == "mqar"  # the task the suite reads


def test_mqar_figure2_cpu_is_a_slice_of_it():
    full, cpu = sweep_params("mqar_figure2"), sweep_params("mqar_figure2_cpu")
    assert [int(w) for w in cpu["model.n_embd"]] == [64, 128]
    assert set(cpu["data/mqar_point"]) < set(full["data/mqar_point"])
    assert set(cpu["attention"]) <= set(full["attention"])
    assert {float(r) for r in cpu["optim.lr"]} <= {float(r) for r in full["optim.lr"]}
    cfg = compose_train(["experiment=mqar_figure2_cpu"])
    assert cfg.model.mlp is False and cfg.trainer.max_steps < 12_500


def test_state_tracking_tests_past_the_training_length_without_positions():
    params = sweep_params("state_tracking")
    assert set(params["data"]) == {"parity", "s5"}
    assert "rotary" in params["attention"] and set(params["attention"]) <= set(variant_names())
    for task in params["data"]:
        cfg = compose_train(["experiment=state_tracking", f"data={task}"])
        trained = max(s["seq_len"] for s in cfg.data.train_settings)
        assert max(s["seq_len"] for s in cfg.data.test_settings) > trained
        assert cfg.model.pos_embedding == "none"  # untrained positions would be measured
    # The second sweep (its YAML's command): Hydra composes the primary config with the
    # non-sweep overrides first, on the default attention, then each job on its variant.
    neg = ["experiment=state_tracking", "++attention.allow_neg_eigval=true"]
    compose_train(neg)
    for variant in ("deltanet", "gated_deltaproduct"):
        assert compose_train([*neg, f"attention={variant}"]).attention.allow_neg_eigval is True
    text = (Path(CONFIG_DIR) / "experiment" / "state_tracking.yaml").read_text()
    assert " ++attention.allow_neg_eigval=true" in text


def test_state_tracking_cpu_is_a_slice_of_it():
    full, cpu = sweep_params("state_tracking"), sweep_params("state_tracking_cpu")
    assert set(cpu["data"]) == set(full["data"]) and set(cpu["attention"]) <= set(full["attention"])
    assert {float(r) for r in cpu["optim.lr"]} <= {float(r) for r in full["optim.lr"]}
    assert len(set(cpu["seed"])) == 3
    cfg = compose_train(["experiment=state_tracking_cpu"])
    assert cfg.hydra.callbacks.sweep_report.every_job is False
    assert cfg.trainer.max_steps < compose_train(["experiment=state_tracking"]).trainer.max_steps
