"""VAEConfig: validation of every field, presets, JSON round trip and Auto-class registration."""

from __future__ import annotations

import json
import math

import pytest
from transformers import AutoConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

import hf_vae
from hf_vae import PRESETS, VAEConfig

POSITIVE_INT = "positive integer"
HIDDEN = "non-empty list of positive integers"
PROBABILITY = "[0, 1)"
NON_NEGATIVE = ">= 0"
NUM_CLASSES = "integer >= 2"

# (field, bad value, what the message must say is allowed)
INVALID_FIELDS = [
    ("latent_dim", 0, POSITIVE_INT),
    ("latent_dim", -3, POSITIVE_INT),
    ("latent_dim", 2.0, POSITIVE_INT),
    ("latent_dim", True, POSITIVE_INT),
    ("hidden_sizes", [], HIDDEN),
    ("hidden_sizes", [256, "128"], HIDDEN),
    ("hidden_sizes", [256, 12.5], HIDDEN),
    ("hidden_sizes", [256, -128], HIDDEN),
    ("hidden_sizes", [256, 0], HIDDEN),
    ("hidden_sizes", 256, HIDDEN),
    ("dropout", -0.1, PROBABILITY),
    ("dropout", 1.0, PROBABILITY),
    ("dropout", math.nan, PROBABILITY),
    ("architecture", "transformer", "'mlp'"),
    ("likelihood", "gaussian", "'bernoulli'"),
    ("binarize", "otsu", "'dynamic'"),
    ("activation", "swish", "'relu'"),
    ("beta", -0.5, NON_NEGATIVE),
    ("beta", math.nan, NON_NEGATIVE),
    ("beta", math.inf, NON_NEGATIVE),
    ("free_bits", -1.0, NON_NEGATIVE),
    ("num_importance_samples", 0, POSITIVE_INT),
    ("num_importance_samples", 2.5, POSITIVE_INT),
    ("num_classes", 1, NUM_CLASSES),
    ("num_classes", 0, NUM_CLASSES),
    ("num_classes", 10.0, NUM_CLASSES),
    ("image_size", 0, POSITIVE_INT),
    ("num_channels", 0, POSITIVE_INT),
    ("use_batch_norm", "yes", "true or false"),
]


@pytest.mark.parametrize(("name", "value", "allowed"), INVALID_FIELDS, ids=lambda v: repr(v))
def test_invalid_field_raises_value_error_naming_field_value_and_allowed(name, value, allowed):
    with pytest.raises(ValueError) as error:
        VAEConfig(**{name: value})
    message = str(error.value)
    assert f"`{name}`" in message
    assert repr(value) in message
    assert allowed in message


@pytest.mark.parametrize(("name", "value", "allowed"), INVALID_FIELDS[:3])
def test_invalid_field_in_preset_override_raises(name, value, allowed):
    with pytest.raises(ValueError, match=f"`{name}`"):
        VAEConfig.from_preset("mnist-2d", **{name: value})


def test_free_bits_with_importance_weighted_loss_is_refused():
    with pytest.raises(ValueError, match="`free_bits`.*ELBO only.*num_importance_samples"):
        VAEConfig(free_bits=0.5, num_importance_samples=5)


def test_unknown_preset_lists_the_available_ones():
    with pytest.raises(ValueError) as error:
        VAEConfig.from_preset("mnist-3d")
    message = str(error.value)
    assert "preset" in message and "'mnist-3d'" in message
    for name in PRESETS:
        assert repr(name) in message


def test_invalid_config_json_is_rejected_on_load(tmp_path):
    config = VAEConfig().to_dict()
    config["latent_dim"] = 0
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="`latent_dim` must be a positive integer, got 0"):
        VAEConfig.from_pretrained(tmp_path)


def test_valid_edge_values_are_accepted():
    config = VAEConfig(dropout=0.0, beta=0, free_bits=0.0, num_classes=2, latent_dim=1, hidden_sizes=(64,))
    assert config.hidden_sizes == [64]
    assert config.num_classes == 2
    assert VAEConfig(num_classes=None).num_classes is None


def test_mnist_2d_preset_is_the_reference_architecture():
    config = VAEConfig.from_preset("mnist-2d")
    assert (config.architecture, config.image_size, config.num_channels) == ("mlp", 28, 1)
    assert config.num_pixels == 784
    assert config.latent_dim == 2
    assert config.hidden_sizes == [256, 128]
    assert config.use_batch_norm is True
    assert config.dropout == 0.2
    assert config.activation == "relu"
    assert config.beta == 1.0
    assert config.likelihood == "bernoulli"
    assert config.binarize == "none"
    assert config.free_bits == 0.0
    assert config.num_classes is None


def test_mnist_preset_has_a_larger_latent():
    config = VAEConfig.from_preset("mnist")
    assert config.latent_dim > VAEConfig.from_preset("mnist-2d").latent_dim
    assert config.image_size == 28 and config.num_channels == 1


def test_preset_overrides_apply_and_leave_the_preset_untouched():
    config = VAEConfig.from_preset("mnist-2d", latent_dim=10, beta=4.0)
    assert (config.latent_dim, config.beta, config.hidden_sizes) == (10, 4.0, [256, 128])
    config.hidden_sizes.append(64)
    assert PRESETS["mnist-2d"]["hidden_sizes"] == [256, 128]
    assert VAEConfig.from_preset("mnist-2d").hidden_sizes == [256, 128]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_json_round_trip(tmp_path, preset):
    config = VAEConfig.from_preset(preset, num_classes=10, free_bits=0.25, binarize="static")
    config.save_pretrained(tmp_path)
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk["model_type"] == "hf_vae"
    assert on_disk["hidden_sizes"] == config.hidden_sizes
    assert on_disk["num_classes"] == 10

    loaded = VAEConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, VAEConfig)
    assert loaded.to_dict() == config.to_dict()

    path = tmp_path / "direct.json"
    config.to_json_file(path)
    assert VAEConfig.from_json_file(path).to_dict() == config.to_dict()
    assert VAEConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_model_type_is_collision_proof():
    assert VAEConfig.model_type != "vae"
    assert VAEConfig.model_type not in CONFIG_MAPPING_NAMES


def test_auto_config_resolves_after_import(tmp_path):
    assert hf_vae.VAEConfig is VAEConfig
    assert isinstance(AutoConfig.for_model(VAEConfig.model_type), VAEConfig)
    VAEConfig.from_preset("mnist-2d", latent_dim=5).save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is VAEConfig
    assert loaded.latent_dim == 5


def test_missing_config_json_is_an_error(tmp_path):
    with pytest.raises(OSError, match="config.json"):
        VAEConfig.from_pretrained(tmp_path)
