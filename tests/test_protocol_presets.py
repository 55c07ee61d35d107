"""The protocol presets sweep what the protocol needs: 3 seeds, 2 learning rates and the
variants (every conf/attention option, or the CPU preset's few)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir

from attn_lightning.attention.registry import variant_names
from attn_lightning.config import CONFIG_DIR


def sweep_params(experiment: str) -> dict[str, str]:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", [f"experiment={experiment}"], return_hydra_config=True)
    return {key: str(value) for key, value in cfg.hydra.sweeper.params.items()}


def test_protocol_presets_sweep_three_seeds_two_rates_and_their_variants():
    full, cpu = sweep_params("compare_attention"), sweep_params("compare_attention_cpu")
    for params in (full, cpu):
        assert len(set(params["seed"].split(","))) == 3
        rates = [float(r) for r in params["optim.lr"].split(",")]
        assert len(set(rates)) == 2 and all(0 < r < 0.1 for r in rates)
    assert full["attention"] == "glob(*)"  # every conf/attention option
    variants = cpu["attention"].split(",")
    assert len(set(variants)) == len(variants) <= 5  # CPU-sized: at most 30 jobs
    assert "vanilla" in variants  # the comparison's reference arm
    assert set(variants) <= set(variant_names())
