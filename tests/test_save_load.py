"""save_pretrained / from_pretrained: files written, bit-exact round trip, Auto classes, remote code without hf-vae,
and clear errors (never a silently random model) for damaged folders."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel

from hf_vae import VAEConfig, VAEModel


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train_a_little(model: VAEModel, steps: int = 3) -> VAEModel:
    """A few Adam steps, so that weights and BatchNorm running statistics differ from their initial values."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(steps):
        pixels = torch.rand(32, model.config.num_pixels, generator=seeded(step))
        labels = None if model.config.num_classes is None else torch.arange(32) % model.config.num_classes
        loss = model(pixels, labels=labels, generator=seeded(100 + step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained() -> VAEModel:
    torch.manual_seed(0)
    return train_a_little(VAEModel(VAEConfig.from_preset("mnist-2d")))


@pytest.fixture(scope="module")
def saved(trained, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("mnist-2d")
    trained.save_pretrained(directory)
    return directory


@pytest.fixture
def copy_of_saved(saved, tmp_path) -> Path:
    """A private copy for tests that damage the folder."""
    return Path(shutil.copytree(saved, tmp_path / "model"))


class RecordWarnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_quietly(load, *args, **kwargs):
    """Call `load`, returning its result and every transformers log record at WARNING or above and every Python
    warning it emitted."""
    logger = logging.getLogger("transformers")
    handler = RecordWarnings()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = load(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)
    return result, handler.messages + [str(w.message) for w in caught]


def assert_same_state(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert set(actual_state) == set(expected_state)
    for key, tensor in expected_state.items():
        assert actual_state[key].dtype == tensor.dtype, key
        assert torch.equal(actual_state[key], tensor), key


# ---------------------------------------------------------------------------------------------- files
def test_save_pretrained_writes_config_safetensors_and_code(saved):
    names = {path.name for path in saved.iterdir()}
    # The weights, the config, the image processor, the generated card, and the model's and processor's code with
    # every sibling module it imports (what `trust_remote_code` needs).
    code = {"configuration_vae.py", "modeling_vae.py", "modeling_utils.py", "layers.py", "distributions.py"}
    code |= {"priors.py", "likelihoods.py", "estimators.py", "image_processing_vae.py", "configuration_utils.py"}
    assert names == {"config.json", "preprocessor_config.json", "model.safetensors", "README.md", *code}
    assert not [name for name in names if name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]

    config = json.loads((saved / "config.json").read_text())
    assert config["model_type"] == "hf_vae"
    assert config["architectures"] == ["VAEModel"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vae.VAEConfig",
        "AutoModel": "modeling_vae.VAEModel",
    }
    assert config["latent_dim"] == 2 and config["hidden_sizes"] == [256, 128]


def test_safetensors_holds_every_tensor_bit_exactly(trained, saved):
    tensors = load_file(saved / "model.safetensors")
    state = trained.state_dict()
    assert set(tensors) == set(state)
    for key, tensor in state.items():
        assert torch.equal(tensors[key], tensor), key


# ---------------------------------------------------------------------------------------------- round trip
def test_from_pretrained_restores_every_tensor_bit_exactly_without_warnings(trained, saved):
    norm = trained.encoder.layers[1]
    assert norm.num_batches_tracked.item() == 3
    assert norm.running_mean.abs().sum() > 0 and not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))

    loaded, messages = load_quietly(VAEModel.from_pretrained, saved)
    assert messages == []
    assert type(loaded) is VAEModel
    assert not loaded.training
    assert loaded.config.to_dict() | {"_name_or_path": ""} == trained.config.to_dict() | {"_name_or_path": ""}
    assert_same_state(trained, loaded)

    pixels = torch.rand(5, 1, 28, 28, generator=seeded(9))
    expected = trained(pixels, generator=seeded(1))
    actual = loaded(pixels, generator=seeded(1))
    # The weights are bit-exact (above); outputs are only compared closely, as kernels may take other code paths for
    # differently aligned (memory-mapped) weights.
    torch.testing.assert_close(actual.loss, expected.loss)
    torch.testing.assert_close(actual.logits, expected.logits)
    torch.testing.assert_close(loaded.sample(4, generator=seeded(2)), trained.sample(4, generator=seeded(2)))


def test_auto_model_loads_after_import(trained, saved):
    loaded, messages = load_quietly(AutoModel.from_pretrained, saved)
    assert messages == []
    assert type(loaded) is VAEModel
    assert_same_state(trained, loaded)
    assert type(AutoConfig.from_pretrained(saved)) is VAEConfig


def test_output_loading_info_still_works(saved):
    model, info = VAEModel.from_pretrained(saved, output_loading_info=True)
    assert isinstance(model, VAEModel)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def test_dropout_override_keeps_the_weights(trained, saved, tmp_path):
    """Dropout has no weights: loading with another dropout (e.g. 0 for fine-tuning) must not move any."""
    without, messages = load_quietly(VAEModel.from_pretrained, saved, dropout=0.0)
    assert messages == [] and without.config.dropout == 0.0
    assert_same_state(trained, without)

    without.save_pretrained(tmp_path)
    with_dropout = VAEModel.from_pretrained(tmp_path, dropout=0.3)
    assert with_dropout.encoder.layers[3].p == 0.3
    assert_same_state(trained, with_dropout)


def test_bfloat16_round_trip(trained, tmp_path):
    model = VAEModel(trained.config)
    model.load_state_dict(trained.state_dict())
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    loaded = VAEModel.from_pretrained(tmp_path)
    assert loaded.dtype == torch.bfloat16
    assert_same_state(model, loaded)


def test_conditional_model_round_trip(tmp_path):
    torch.manual_seed(1)
    model = train_a_little(VAEModel(VAEConfig.from_preset("mnist-2d", num_classes=10, latent_dim=4)), steps=1)
    model.save_pretrained(tmp_path)
    loaded = VAEModel.from_pretrained(tmp_path)
    assert loaded.config.num_classes == 10
    assert_same_state(model, loaded)


# ---------------------------------------------------------------------------------------------- remote code
CHILD = textwrap.dedent(
    """
    import sys

    sys.modules["hf_vae"] = None  # as for a Hub user who never installed hf-vae
    try:
        import hf_vae  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_vae is importable in the child")

    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    model_dir, reference_path = sys.argv[1:]
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=True)
    reference = load_file(reference_path)
    state = model.state_dict()
    # Weights must be bit-exact; outputs only close, since kernels may take other paths for other memory alignments.
    out = model(reference["pixels"].clone(), sample_posterior=False)
    sample = model.sample(4, generator=torch.Generator().manual_seed(0))
    close = lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-5)  # noqa: E731
    checks = {
        "weights": sorted(state) == sorted(key[6:] for key in reference if key.startswith("state."))
        and all(torch.equal(tensor, reference["state." + key]) for key, tensor in state.items()),
        "logits": close(out.logits, reference["logits"]),
        "loss": close(out.loss, reference["loss"]),
        "sample": close(sample, reference["sample"]),
        "eval": not model.training,
        "latent_dim": config.latent_dim == 2,
    }
    loaded = [name for name, module in sys.modules.items() if name.startswith("hf_vae") and module is not None]
    print(type(model).__module__, type(model).__name__, type(config).__name__, loaded, checks)
    raise SystemExit(0 if all(checks.values()) and not loaded else 1)
    """
)


def test_trust_remote_code_loads_without_hf_vae(trained, saved, tmp_path):
    pixels = torch.rand(3, 1, 28, 28, generator=seeded(4))
    with torch.no_grad():
        out = trained(pixels, sample_posterior=False)
    reference = {
        "pixels": pixels,
        "logits": out.logits.contiguous(),
        "loss": out.loss,
        "sample": trained.sample(4, generator=seeded(0)),
        **{f"state.{key}": tensor for key, tensor in trained.state_dict().items()},
    }
    save_file(reference, tmp_path / "reference.safetensors")
    script = tmp_path / "child.py"
    script.write_text(CHILD)

    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "modules"),
        HF_HUB_OFFLINE="1",
    )
    result = subprocess.run(
        [sys.executable, str(script), str(saved), str(tmp_path / "reference.safetensors")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    module, model_class, config_class, *_ = result.stdout.split()
    assert not module.startswith("hf_vae") and "modeling_vae" in module
    assert (model_class, config_class) == ("VAEModel", "VAEConfig")


# ---------------------------------------------------------------------------------------------- damaged folders
def test_corrupt_safetensors_is_a_clear_error(copy_of_saved):
    weights = copy_of_saved / "model.safetensors"
    weights.write_bytes(random.Random(0).randbytes(weights.stat().st_size))  # seeded: the same bytes every run
    with pytest.raises(OSError, match=r"model\.safetensors\) are not a valid safetensors file, probably corrupt"):
        VAEModel.from_pretrained(copy_of_saved)


@pytest.mark.parametrize("keep", [0.5, 0.999, 100], ids=["half", "last-byte", "inside-header"])
def test_truncated_safetensors_is_a_clear_error(copy_of_saved, keep):
    weights = copy_of_saved / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(OSError, match="corrupt or truncated"):
        VAEModel.from_pretrained(copy_of_saved)


def test_missing_weights_file_is_a_clear_error(copy_of_saved):
    (copy_of_saved / "model.safetensors").unlink()
    with pytest.raises(OSError, match="no file named model.safetensors"):
        VAEModel.from_pretrained(copy_of_saved)


def test_missing_config_is_a_clear_error(copy_of_saved):
    (copy_of_saved / "config.json").unlink()
    # transformers alone would build the default config, which has the same shapes as mnist-2d, and load silently.
    with pytest.raises(OSError, match="has no config.json"):
        VAEModel.from_pretrained(copy_of_saved)
    with pytest.raises((OSError, ValueError), match="config.json"):
        AutoModel.from_pretrained(copy_of_saved)


def test_missing_config_can_be_passed_explicitly(trained, copy_of_saved):
    (copy_of_saved / "config.json").unlink()
    loaded = VAEModel.from_pretrained(copy_of_saved, config=VAEConfig.from_preset("mnist-2d"))
    assert_same_state(trained, loaded)


def test_config_that_is_not_json_is_a_clear_error(copy_of_saved):
    (copy_of_saved / "config.json").write_text("{latent_dim: 2")
    with pytest.raises(OSError, match="not a valid JSON file"):
        VAEModel.from_pretrained(copy_of_saved)


def test_weights_of_the_wrong_shape_are_a_clear_error(copy_of_saved):
    path = copy_of_saved / "config.json"
    config = json.loads(path.read_text())
    config["latent_dim"] = 3
    path.write_text(json.dumps(config))
    with pytest.raises(RuntimeError) as error:
        VAEModel.from_pretrained(copy_of_saved)
    message = str(error.value)
    assert "do not fit the architecture" in message and "latent_dim=3" in message
    assert "encoder.fc_mu.weight: checkpoint (2, 128), model (3, 128)" in message
    assert "decoder.layers.0.weight: checkpoint (128, 2), model (128, 3)" in message
    with pytest.raises(RuntimeError, match="encoder.fc_mu.weight: checkpoint"):
        AutoModel.from_pretrained(copy_of_saved)


def test_config_override_of_the_wrong_shape_is_a_clear_error(saved):
    with pytest.raises(RuntimeError, match=r"hidden_sizes=\[256, 64\].*\n.*checkpoint"):
        VAEModel.from_pretrained(saved, hidden_sizes=[256, 64])


def test_missing_and_unexpected_weights_are_a_clear_error(copy_of_saved):
    weights = copy_of_saved / "model.safetensors"
    tensors = load_file(weights)
    tensors.pop("encoder.fc_logvar.bias")
    tensors["encoder.extra.weight"] = torch.zeros(2)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(RuntimeError) as error:
        VAEModel.from_pretrained(copy_of_saved)
    message = str(error.value)
    assert "encoder.fc_logvar.bias: missing from the checkpoint" in message
    assert "encoder.extra.weight: in the checkpoint, not in the model" in message


def test_ignore_mismatched_sizes_keeps_transformers_lenient_behaviour(copy_of_saved):
    path = copy_of_saved / "config.json"
    config = json.loads(path.read_text())
    config["latent_dim"] = 3
    path.write_text(json.dumps(config))
    model = VAEModel.from_pretrained(copy_of_saved, ignore_mismatched_sizes=True)
    assert model.encoder.fc_mu.weight.shape == (3, 128)
