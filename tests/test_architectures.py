"""Convolutional architecture and likelihoods: every architecture x likelihood x conditioning combination trains,
round-trips through save/load and `trust_remote_code`; conv sizing; the discretised logistic's probabilities."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torch import nn

from hf_vae import VAEConfig, VAEModel
from hf_vae.layers import ConvTranspose2dSeparateBias, VAEDropout
from hf_vae.likelihoods import discretized_logistic_log_prob

ARCHITECTURES = {
    "mlp": {"architecture": "mlp", "hidden_sizes": [16, 8]},
    "conv": {"architecture": "conv", "conv_channels": [4, 8]},
    "conv-res": {"architecture": "conv", "conv_channels": [4, 8], "num_res_blocks": 1, "normalization": "group"},
}
LIKELIHOODS = ("bernoulli", "discretized_logistic")
COMBINATIONS = [
    (architecture, likelihood, conditional)
    for architecture in ARCHITECTURES
    for likelihood in LIKELIHOODS
    for conditional in (False, True)
]
NUM_CLASSES = 3


def combination_id(combination: tuple[str, str, bool]) -> str:
    architecture, likelihood, conditional = combination
    return f"{architecture}-{likelihood}-{'conditional' if conditional else 'unconditional'}"


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_config(architecture: str, likelihood: str, conditional: bool, **overrides) -> VAEConfig:
    values = {
        "image_size": 8,
        "num_channels": 3,
        "latent_dim": 3,
        "dropout": 0.1,
        "likelihood": likelihood,
        "num_classes": NUM_CLASSES if conditional else None,
        **ARCHITECTURES[architecture],
    }
    return VAEConfig(**(values | overrides))


def batch_for(config: VAEConfig, size: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """8-bit images (levels k / 255), as the data pipeline gives them, and labels for conditional models."""
    shape = (size, config.num_channels, config.image_size, config.image_size)
    pixels = torch.randint(0, 256, shape, generator=seeded(seed)).float() / 255
    labels = None if config.num_classes is None else torch.arange(size) % config.num_classes
    return pixels, labels


def build(config: VAEConfig, seed: int = 0) -> VAEModel:
    torch.manual_seed(seed)
    return VAEModel(config)


# ---------------------------------------------------------------------------------------------- one training step
@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_one_training_step(combination):
    config = tiny_config(*combination)
    model = build(config).train()
    pixels, labels = batch_for(config)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    out = model(pixels, labels=labels, generator=seeded(1))
    channels = config.num_channels * (2 if config.likelihood == "discretized_logistic" else 1)
    assert out.logits.shape == (6, channels, 8, 8)
    assert out.mean.shape == out.logvar.shape == out.latents.shape == (6, 3)
    assert torch.isfinite(out.loss) and out.reconstruction_loss > 0 and out.kl_loss >= 0
    torch.testing.assert_close(
        out.reconstruction_loss, model.reconstruction_nll(out.logits, pixels).mean(), rtol=1e-5, atol=1e-3
    )

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    out.loss.backward()
    no_gradient = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_gradient == []  # every weight, the first encoder layer and the last decoder layer included
    optimizer.step()
    changed = {name for name, tensor in model.state_dict().items() if not torch.equal(before[name], tensor)}
    assert {name for name, _ in model.named_parameters()} <= changed

    images = model.decode(out.latents.detach(), labels=labels).images
    assert images.shape == pixels.shape and images.min() >= 0 and images.max() <= 1


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_beta_kl_weight_and_free_bits(combination):
    """The KL controls live in `forward`, shared by every architecture: loss = reconstruction + beta * kl_weight *
    KL, with free bits (a floor on each latent dimension's batch-mean KL) in training mode only."""
    config = tiny_config(*combination, beta=2.5, free_bits=0.75)
    model = build(config)
    pixels, labels = batch_for(config)
    model.train()
    out = model(pixels, labels=labels, kl_weight=0.4, generator=seeded(2))
    per_dimension = model.kl_per_dimension(out.mean, out.logvar)
    torch.testing.assert_close(out.kl_loss, per_dimension.sum(1).mean())
    floored = per_dimension.mean(0).clamp(min=0.75).sum()
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 2.5 * 0.4 * floored)
    model.eval()
    out = model(pixels, labels=labels, kl_weight=0.4, sample_posterior=False)
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 2.5 * 0.4 * out.kl_loss)


# ---------------------------------------------------------------------------------------------- save / load
def train_a_little(model: VAEModel, steps: int = 2) -> VAEModel:
    """Adam steps, so that weights and normalisation statistics differ from their initial values."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        pixels, labels = batch_for(model.config, size=8, seed=10 + step)
        loss = model(pixels, labels=labels, generator=seeded(step)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory) -> dict[str, tuple[VAEModel, Path]]:
    """One trained model per combination, each saved in its own folder."""
    root = tmp_path_factory.mktemp("architectures")
    models = {}
    for index, combination in enumerate(COMBINATIONS):
        name = combination_id(combination)
        model = train_a_little(build(tiny_config(*combination), seed=index))
        model.save_pretrained(root / name)
        models[name] = (model, root / name)
    return models


def reference_outputs(model: VAEModel) -> dict[str, torch.Tensor]:
    pixels, labels = batch_for(model.config, size=4, seed=99)
    sample_labels = None if labels is None else torch.tensor(1)
    with torch.no_grad():
        out = model(pixels, labels=labels, sample_posterior=False)
    reference = {
        "pixels": pixels,
        "logits": out.logits.contiguous(),
        "loss": out.loss,
        "sample": model.sample(3, generator=seeded(5), labels=sample_labels),
        **{f"state.{key}": tensor for key, tensor in model.state_dict().items()},
    }
    if labels is not None:
        reference["labels"] = labels
    return reference


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_save_pretrained_round_trip_is_bit_exact(saved_models, combination):
    model, folder = saved_models[combination_id(combination)]
    on_disk = json.loads((folder / "config.json").read_text())
    assert on_disk["architecture"] == model.config.architecture
    assert on_disk["likelihood"] == model.config.likelihood

    loaded = VAEModel.from_pretrained(folder)
    assert loaded.config.to_dict() | {"_name_or_path": ""} == model.config.to_dict() | {"_name_or_path": ""}
    expected, actual = model.state_dict(), loaded.state_dict()
    assert set(actual) == set(expected)
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype and torch.equal(actual[key], tensor), key

    reference = reference_outputs(model)
    with torch.no_grad():
        out = loaded(reference["pixels"], labels=reference.get("labels"), sample_posterior=False)
    torch.testing.assert_close(out.logits, reference["logits"])
    torch.testing.assert_close(out.loss, reference["loss"])
    labels = None if model.config.num_classes is None else torch.tensor(1)
    torch.testing.assert_close(loaded.sample(3, generator=seeded(5), labels=labels), reference["sample"])


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    sys.modules["hf_vae"] = None  # as for a Hub user who never installed hf-vae
    try:
        import hf_vae  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_vae is importable in the child")

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModel

    close = lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-5)  # noqa: E731
    failures = []
    for folder in sorted(Path(sys.argv[1]).iterdir()):
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        reference = load_file(Path(sys.argv[2]) / f"{folder.name}.safetensors")
        state = model.state_dict()
        labels = reference.get("labels")
        out = model(reference["pixels"].clone(), labels=labels, sample_posterior=False)
        sample_labels = None if labels is None else 1
        sample = model.sample(3, generator=torch.Generator().manual_seed(5), labels=sample_labels)
        checks = {
            "weights": sorted(state) == sorted(key[6:] for key in reference if key.startswith("state."))
            and all(torch.equal(tensor, reference["state." + key]) for key, tensor in state.items()),
            "logits": close(out.logits, reference["logits"]),
            "loss": close(out.loss, reference["loss"]),
            "sample": close(sample, reference["sample"]),
            "remote class": not type(model).__module__.startswith("hf_vae")
            and "modeling_vae" in type(model).__module__,
        }
        failures += [f"{folder.name}: {name}" for name, ok in checks.items() if not ok]
        print(folder.name, type(model).__module__, model.config.architecture, model.config.likelihood)
    loaded = [name for name, module in sys.modules.items() if name.startswith("hf_vae") and module is not None]
    print("FAILURES", failures, "LOADED", loaded)
    raise SystemExit(1 if failures or loaded else 0)
    """
)


def test_trust_remote_code_loads_every_combination_without_hf_vae(saved_models, tmp_path):
    """One child process (imports are the slow part) loads every saved folder with `AutoModel` and
    `trust_remote_code=True`, without hf_vae importable, and compares weights and outputs with references."""
    references = tmp_path / "references"
    references.mkdir()
    folders = tmp_path / "models"
    folders.mkdir()
    for name, (model, folder) in saved_models.items():
        save_file(reference_outputs(model), references / f"{name}.safetensors")
        (folders / name).symlink_to(folder, target_is_directory=True)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(script), str(folders), str(references)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len([line for line in result.stdout.splitlines() if "modeling_vae" in line]) == len(COMBINATIONS)


# ---------------------------------------------------------------------------------------------- conv sizing
@pytest.mark.parametrize("num_channels", [1, 3])
@pytest.mark.parametrize(("image_size", "conv_channels"), [(28, [4, 8]), (32, [4, 8, 8]), (64, [4, 8, 8])])
def test_conv_is_sized_from_the_config(image_size, conv_channels, num_channels):
    config = VAEConfig(
        architecture="conv",
        image_size=image_size,
        num_channels=num_channels,
        conv_channels=conv_channels,
        num_res_blocks=1,
        latent_dim=5,
    )
    model = build(config).eval()
    smallest = image_size // 2 ** len(conv_channels)
    assert model.encoder.fc_mu.in_features == conv_channels[-1] * smallest**2
    assert model.decoder.fc.out_features == conv_channels[-1] * smallest**2
    assert [conv.out_channels for conv in model.encoder.downsample] == conv_channels
    assert len(model.decoder.upsample) == len(conv_channels)

    pixels = torch.rand(2, num_channels, image_size, image_size, generator=seeded(0))
    out = model(pixels, sample_posterior=False)
    assert out.logits.shape == pixels.shape and out.mean.shape == (2, 5)
    assert model.sample(3, generator=seeded(0)).shape == (3, num_channels, image_size, image_size)
    assert model.reconstruct(pixels.flatten(1)).shape == pixels.shape


def test_dropout_drops_the_rounded_fraction_and_keeps_the_expectation():
    layer = VAEDropout(0.2).train()
    hidden = torch.rand(600, 1000, generator=torch.Generator().manual_seed(0)) + 0.5
    torch.manual_seed(0)
    out = layer(hidden)
    dropped = out == 0
    # p is drawn in steps of 1/65536: 0.2 drops with probability 13107/65536; kept units are scaled by its inverse.
    drop_probability = 13107 / 65536
    standard_error = math.sqrt(drop_probability * (1 - drop_probability) / hidden.numel())
    assert abs(dropped.float().mean().item() - drop_probability) < 5 * standard_error
    torch.testing.assert_close(out[~dropped], hidden[~dropped] * 65536 / (65536 - 13107))
    # Each column's kept fraction is uniform too (the four 16-bit draws of a 64-bit word are all used).
    by_position = dropped.view(-1, 4).float().mean(0)
    assert (by_position - drop_probability).abs().max() < 5 * standard_error * 2
    torch.manual_seed(0)
    assert torch.equal(layer(hidden), out)  # the global generator decides the mask
    assert torch.equal(layer.eval()(hidden), hidden)
    assert layer.train()(hidden.bfloat16()).dtype == torch.bfloat16
    assert torch.equal(VAEDropout(1e-6).train()(hidden), hidden)  # rounds to no level dropped


def test_transposed_convolution_with_its_bias_added_after_equals_torchs():
    torch.manual_seed(0)
    reference = nn.ConvTranspose2d(8, 4, kernel_size=4, stride=2, padding=1)
    layer = ConvTranspose2dSeparateBias(8, 4, kernel_size=4, stride=2, padding=1)
    layer.load_state_dict(reference.state_dict())  # strict: the same names and shapes
    assert list(layer.state_dict()) == list(reference.state_dict())
    inputs = torch.randn(3, 8, 7, 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
    expected, output = reference(inputs), layer(inputs)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-6)
    upstream = torch.randn(expected.shape, generator=torch.Generator().manual_seed(2))
    expected_grads = torch.autograd.grad(expected, [inputs, reference.weight, reference.bias], upstream)
    grads = torch.autograd.grad(output, [inputs, layer.weight, layer.bias], upstream)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-4)
    channels_last = inputs.detach().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(layer(channels_last).float(), expected.detach(), rtol=0.02, atol=0.05)
    torch.testing.assert_close(layer(inputs, output_size=[14, 14]), expected)  # the parent's path


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_the_training_forward_compiles_to_one_graph(architecture):
    # The eager range check of the pixels reads values back; under torch.compile it is skipped, so that dynamo does
    # not split the forward into six graphs (each a cache lookup, and no fusion across them).
    torch.manual_seed(0)
    model = VAEModel(VAEConfig(**ARCHITECTURES[architecture], latent_dim=2)).train()
    pixels = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(model)(pixels)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        model(pixels * 2)  # eager calls still check


def test_conv_layers_follow_normalization_and_residual_options():
    def layer_types(**overrides) -> set[type]:
        config = VAEConfig(architecture="conv", conv_channels=[4, 8], latent_dim=2, **overrides)
        return {type(module) for module in VAEModel(config).modules()}

    assert nn.BatchNorm2d in layer_types()
    assert not {nn.BatchNorm2d, nn.GroupNorm} & layer_types(use_batch_norm=False)
    assert not {nn.BatchNorm2d, nn.GroupNorm} & layer_types(normalization="none")
    grouped = layer_types(normalization="group", num_res_blocks=2, dropout=0.3)
    assert (
        nn.GroupNorm in grouped
        and nn.BatchNorm2d not in grouped
        and any(issubclass(kind, nn.Dropout) for kind in grouped)
    )
    assert not any("Residual" in kind.__name__ for kind in layer_types())
    assert sum(isinstance(m, nn.Conv2d) for m in VAEModel(VAEConfig(architecture="conv", num_res_blocks=2)).modules())
    mlp = {type(m) for m in VAEModel(VAEConfig(normalization="group", hidden_sizes=[12])).modules()}
    assert nn.GroupNorm in mlp and nn.BatchNorm1d not in mlp


def test_residual_blocks_are_at_every_resolution_but_the_decoders_full_one():
    config = VAEConfig(architecture="conv", conv_channels=[4, 8, 16], image_size=32, num_res_blocks=2, latent_dim=2)
    model = VAEModel(config)

    def residual_count(module: nn.Module) -> int:
        return sum(type(m).__name__ == "ResidualBlock" for m in module.modules())

    assert [residual_count(block) for block in model.encoder.blocks] == [2, 2, 2]
    assert residual_count(model.decoder.input_block) == 2
    assert [residual_count(block) for block in model.decoder.blocks] == [2, 2, 0]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 30}, r"`image_size` 30 must be divisible by 2 \*\* len\(conv_channels\) = 4"),
        ({"image_size": 28, "conv_channels": [4, 8, 16]}, r"divisible by 8 .*at most 2 entries in conv_channels"),
        ({"image_size": 27}, r"divisible by 4 \(e\.g\. \[28, 32, 64\]\)"),
        ({"conv_channels": []}, r"`conv_channels` must be a non-empty list of positive integers, got \[\]"),
        ({"conv_channels": [8, 0]}, r"`conv_channels` must be a non-empty list of positive integers"),
        ({"conv_channels": 8}, r"`conv_channels` must be a non-empty list"),
        ({"num_res_blocks": -1}, r"`num_res_blocks` must be an integer >= 0, got -1"),
        ({"num_res_blocks": 1.5}, r"`num_res_blocks` must be an integer >= 0"),
        ({"normalization": "layer"}, r"`normalization` must be one of \['batch', 'group', 'none'\], got 'layer'"),
        ({"likelihood": "gaussian"}, r"`likelihood` must be one of \['bernoulli', 'discretized_logistic'\]"),
    ],
)
def test_invalid_conv_configs_raise_clear_value_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(**({"architecture": "conv"} | overrides))


def test_mlp_ignores_conv_geometry():
    assert VAEConfig(image_size=30, conv_channels=[4, 8, 16]).architecture == "mlp"


def test_override_breaking_the_conv_geometry_fails_on_load(tmp_path):
    VAEModel(VAEConfig(architecture="conv", conv_channels=[4, 8], latent_dim=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="`image_size` 30 must be divisible"):
        VAEModel.from_pretrained(tmp_path, image_size=30)


def test_config_json_written_before_the_conv_fields_loads_with_their_defaults(tmp_path):
    config = VAEConfig.from_preset("mnist-2d", use_batch_norm=False).to_dict()
    for new_field in ("conv_channels", "num_res_blocks", "normalization"):
        config.pop(new_field)
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = VAEConfig.from_pretrained(tmp_path)
    assert (loaded.conv_channels, loaded.num_res_blocks, loaded.normalization) == ([32, 64], 0, None)
    assert loaded.resolved_normalization == "none"
    assert not any(isinstance(m, nn.BatchNorm1d) for m in VAEModel(loaded).modules())


@pytest.mark.parametrize("preset", ["mnist-conv", "rgb32-conv"])
def test_conv_presets_build(preset):
    config = VAEConfig.from_preset(preset, conv_channels=[4, 8, 8] if preset == "rgb32-conv" else [4, 8])
    model = VAEModel(config).eval()
    pixels = torch.rand(2, config.num_channels, config.image_size, config.image_size, generator=seeded(0))
    assert torch.isfinite(model(pixels).loss)


# ---------------------------------------------------------------------------------------------- discretised logistic
LEVELS = torch.arange(256, dtype=torch.float64) / 255


@pytest.mark.parametrize(
    ("location", "log_scale"),
    [(0.52, -3.0), (0.2, -8.0), (0.0, -6.0), (1.0, -6.0), (1.4, 0.0), (-2.0, -1.0), (0.37, 7.0), (0.6, -20.0)],
)
def test_discretized_logistic_probabilities_over_the_256_levels_sum_to_one(location, log_scale):
    log_p = discretized_logistic_log_prob(
        LEVELS, torch.full((256,), location, dtype=torch.float64), torch.full((256,), log_scale, dtype=torch.float64)
    )
    assert torch.isfinite(log_p).all() and (log_p <= 0).all()
    assert abs(log_p.exp().sum().item() - 1.0) < 1e-9
    float32 = discretized_logistic_log_prob(LEVELS.float(), torch.tensor(location), torch.tensor(log_scale))
    assert abs(float32.double().exp().sum().item() - 1.0) < 1e-4
    if log_scale <= 0:  # the most likely level is the location's (a flatter logistic puts most mass on the edges)
        assert torch.argmax(log_p).item() == min(255, max(0, round(location * 255)))


def test_discretized_logistic_reads_pixels_as_8_bit_levels_and_is_stable():
    location, log_scale = torch.tensor([0.3, 0.3]), torch.tensor([-4.0, -4.0])
    nearby = discretized_logistic_log_prob(torch.tensor([77 / 255, 77 / 255 + 0.4 / 255]), location, log_scale)
    assert nearby[0] == nearby[1]
    # A confident, right location gives almost all the mass to its level; a confident, wrong one a huge but finite NLL.
    right = discretized_logistic_log_prob(torch.tensor([77 / 255]), torch.tensor([77 / 255]), torch.tensor([-8.0]))
    assert -0.01 < right.item() <= 0
    wrong = discretized_logistic_log_prob(
        torch.tensor([0.0, 1.0, 0.5]), torch.tensor([1.0, 0.0, 0.0]), torch.tensor(-8.0)
    )
    assert torch.isfinite(wrong).all() and (wrong < -1000).all()


def test_discretized_logistic_nll_images_and_bits_per_dimension():
    config = tiny_config("conv", "discretized_logistic", False)
    model = build(config).eval()
    pixels, _ = batch_for(config, size=5)
    logits = torch.randn(5, 6, 8, 8, generator=seeded(3)) * 4
    nll = model.reconstruction_nll(logits, pixels)
    assert nll.shape == (5,) and (nll >= 0).all()
    location, log_scale = logits.chunk(2, dim=1)
    torch.testing.assert_close(nll, -discretized_logistic_log_prob(pixels, location, log_scale).flatten(1).sum(1))
    images = model.logits_to_images(logits)
    assert images.shape == pixels.shape and images.min() == 0 and images.max() == 1
    torch.testing.assert_close(images, location.clamp(0, 1))

    # A mass over 8-bit images: a uniform distribution over the 256 levels would cost exactly 8 bits per dimension,
    # and the untrained model's NLL, in bits per dimension, is a finite positive number on that scale.
    bits_per_dim = model(pixels, sample_posterior=False).reconstruction_loss / (config.num_pixels * math.log(2))
    assert 0 < bits_per_dim.item() < 64
    samples = model.sample(4, generator=seeded(0))
    assert samples.shape == (4, 3, 8, 8) and samples.min() >= 0 and samples.max() <= 1


def test_discretized_logistic_model_in_bfloat16_keeps_a_float32_nll():
    config = tiny_config("conv", "discretized_logistic", True)
    model = build(config).to(torch.bfloat16).train()
    pixels, labels = batch_for(config)
    out = model(pixels, labels=labels, generator=seeded(0))
    assert out.logits.dtype == torch.bfloat16 and out.reconstruction_loss.dtype == torch.float32
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.decoder.conv_out.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- any image dataset
def coloured_shapes(count: int, size: int, seed: int) -> datasets.Dataset:
    """RGB images of a filled square (label 0) or disc (label 1) in a random colour on a random background."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for index in range(count):
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
        left, top = (int(v) for v in rng.integers(0, size // 2, 2))
        extent = int(rng.integers(size // 4, size // 2))
        box = (left, top, left + extent, top + extent)
        draw = ImageDraw.Draw(image)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.rectangle if index % 2 == 0 else draw.ellipse)(box, fill=colour)
        images.append(image)
        labels.append(index % 2)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["square", "disc"])})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


def run_cli(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(cwd / "hf_home"))
    command = [sys.executable, "-m", "hf_vae.cli", *arguments]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_rgb_dataset_trains_end_to_end_with_image_shape_from_the_data(tmp_path):
    """The MNIST command (`--architecture conv --num_classes N`) on a 32x32 RGB `save_to_disk` folder: the new
    model takes the data's size and channels, trains, and writes its weights and pictures. Continuing from it on
    greyscale 28x28 images is refused with a message naming both shapes."""
    rgb = tmp_path / "shapes"
    datasets.DatasetDict(
        {"train": coloured_shapes(96, 32, seed=0), "test": coloured_shapes(24, 32, seed=1)}
    ).save_to_disk(rgb)
    output = tmp_path / "model"
    common = ["--max_steps", "3", "--per_device_train_batch_size", "16", "--logging_steps", "1", "--use_cpu", "true"]
    result = run_cli(
        "train",
        "--dataset_name",
        str(rgb),
        "--architecture",
        "conv",
        "--conv_channels",
        "4",
        "8",
        "--latent_dim",
        "4",
        "--num_classes",
        "2",
        "--likelihood",
        "discretized_logistic",
        "--binarize",
        "none",
        "--output_dir",
        str(output),
        *common,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    config = json.loads((output / "config.json").read_text())
    assert (config["architecture"], config["image_size"], config["num_channels"]) == ("conv", 32, 3)
    assert (config["likelihood"], config["num_classes"]) == ("discretized_logistic", 2)
    model = VAEModel.from_pretrained(output)
    assert model.sample(2, labels=1).shape == (2, 3, 32, 32)
    for picture in ("samples.png", "reconstructions.png", "interpolation.png"):
        with Image.open(output / picture) as image:
            assert image.mode in ("RGB", "RGBA") and image.width > 32, picture

    grey = tmp_path / "grey"
    digits = coloured_shapes(12, 28, seed=2).map(lambda row: {"image": row["image"].convert("L")})
    datasets.DatasetDict({"train": digits}).save_to_disk(grey)
    refused = run_cli(
        "train",
        "--dataset_name",
        str(grey),
        "--model_name_or_path",
        str(output),
        "--output_dir",
        str(tmp_path / "continued"),
        *common,
        cwd=tmp_path,
    )
    assert refused.returncode != 0
    assert "1x28x28" in refused.stderr and "3x32x32" in refused.stderr, refused.stderr
