"""The typed schemas check the configs without being options a user can pick."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException

from attn_lightning.config import CONFIG_DIR


@pytest.fixture
def loader():
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


@pytest.mark.parametrize("group", ["model", "data", "attention", "trainer", "optim"])
def test_help_lists_no_schema_as_an_option(loader, group: str) -> None:
    """`--help` lists a group's options from the config loader: no `*_schema` among them."""
    options = loader.get_group_options(group)
    assert options, f"group {group} has no options"
    assert [o for o in options if "schema" in o] == []


def test_data_and_model_options_are_still_typed(loader) -> None:
    """The schemas still apply to the options that extend them: a string for an integer
    key is refused at composition, naming the key."""
    for override in ("model.n_layer=abc", "data.block_size=abc"):
        with pytest.raises(ConfigCompositionException, match=override.split("=")[0]):
            compose("train", overrides=[override])
    for data in ("mqar", "copy"):
        with pytest.raises(ConfigCompositionException, match=r"data\.vocab_size"):
            compose("train", overrides=[f"data={data}", "data.vocab_size=abc"])
