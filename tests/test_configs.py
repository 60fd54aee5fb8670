"""One policy for configurations read back from config.json, over every configuration class."""

import pytest

from conftest import tiny_config
from mlx_imgen.autoencoders.kl import KLConfig
from mlx_imgen.autoencoders.vq import VQConfig
from mlx_imgen.backbone import BackboneConfig

CONFIGS = {"backbone": tiny_config(), "vq": VQConfig(ch_mult=(1, 2)), "kl": KLConfig()}


@pytest.mark.parametrize("name", CONFIGS)
def test_a_config_round_trips_through_its_dict(name):
    config = CONFIGS[name]
    assert type(config).from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", CONFIGS)
def test_an_unknown_key_is_refused_naming_it_and_the_class(name):
    config = CONFIGS[name]
    values = {**config.to_dict(), "bogus_width": 3}
    with pytest.raises(ValueError, match=rf"{type(config).__name__} has no field 'bogus_width'"):
        type(config).from_dict(values)


@pytest.mark.parametrize("name, newer_key", [("backbone", "timestep_freq_shift"),
                                             ("kl", "shift_factor"), ("vq", "norm_eps")])
def test_a_folder_written_before_a_key_existed_takes_its_default(name, newer_key):
    config = CONFIGS[name]
    values = config.to_dict()
    del values[newer_key]
    assert type(config).from_dict(values) == config


def test_a_missing_required_key_is_named():
    values = tiny_config().to_dict()
    del values["heads"]
    with pytest.raises(ValueError, match="BackboneConfig lacks 'heads'"):
        BackboneConfig.from_dict(values)
