"""VAEModel: architecture, loss, gradients, sampling, modes, dtypes, input checks and likelihood estimates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_vae import VAEConfig, VAEModel, VAEOutput


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(batch: int, config: VAEConfig, seed: int = 0) -> torch.Tensor:
    shape = (batch, config.num_channels, config.image_size, config.image_size)
    return torch.rand(shape, generator=seeded(seed))


def build(config: VAEConfig, seed: int = 0) -> VAEModel:
    torch.manual_seed(seed)
    return VAEModel(config)


@pytest.fixture(scope="module")
def mnist_2d() -> VAEModel:
    return build(VAEConfig.from_preset("mnist-2d")).eval()


@pytest.fixture
def small_config() -> VAEConfig:
    return VAEConfig(image_size=8, num_channels=1, latent_dim=3, hidden_sizes=[32, 16], dropout=0.2)


def with_nontrivial_batch_norm(model: VAEModel, seed: int = 1) -> VAEModel:
    """Random running statistics and affine parameters, so that eval-mode BatchNorm is not the identity."""
    generator = seeded(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
    return model


# ---------------------------------------------------------------------------------------------- architecture
def test_mnist_2d_has_exactly_the_reference_parameter_count(mnist_2d):
    assert sum(p.numel() for p in mnist_2d.parameters()) == 470_804
    assert mnist_2d.num_parameters() == 470_804


def describe(module: nn.Module) -> tuple:
    if isinstance(module, nn.Linear):
        return ("Linear", module.in_features, module.out_features)
    if isinstance(module, nn.BatchNorm1d):
        return ("BatchNorm1d", module.num_features)
    if isinstance(module, nn.Dropout):
        return ("Dropout", module.p)
    return (type(module).__name__,)


def test_mnist_2d_has_the_reference_layer_sequence(mnist_2d):
    block = [("ReLU",), ("Dropout", 0.2)]
    assert [describe(m) for m in mnist_2d.encoder.layers] == [
        ("Linear", 784, 256),
        ("BatchNorm1d", 256),
        *block,
        ("Linear", 256, 128),
        ("BatchNorm1d", 128),
        *block,
    ]
    assert describe(mnist_2d.encoder.fc_mu) == ("Linear", 128, 2)
    assert describe(mnist_2d.encoder.fc_logvar) == ("Linear", 128, 2)
    # The reference ends in Sigmoid; we keep its logits for a stable BCE and apply the sigmoid in `decode`.
    assert [describe(m) for m in mnist_2d.decoder.layers] == [
        ("Linear", 2, 128),
        ("BatchNorm1d", 128),
        *block,
        ("Linear", 128, 256),
        ("BatchNorm1d", 256),
        *block,
        ("Linear", 256, 784),
    ]


def test_mnist_2d_state_dict_maps_one_to_one_onto_the_reference_checkpoint(mnist_2d):
    """The reference's keys (REFERENCE.md) are ours with `encoder.N` -> `encoder.layers.N` and the heads moved under
    `encoder.`; a converter relies on that."""
    reference = {
        f"{part}.{index}.{name}"
        for part, linears, norms in (("encoder", (0, 4), (1, 5)), ("decoder", (0, 4, 8), (1, 5)))
        for index, names in [(i, ("weight", "bias")) for i in linears]
        + [(i, ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")) for i in norms]
        for name in names
    } | {f"{head}.{name}" for head in ("fc_mu", "fc_logvar") for name in ("weight", "bias")}
    ours = set(mnist_2d.state_dict())
    renamed = {
        key.replace("encoder.layers.", "encoder.").replace("decoder.layers.", "decoder.").replace("encoder.fc_", "fc_")
        for key in ours
    }
    assert renamed == reference
    for key, tensor in mnist_2d.state_dict().items():
        expected = torch.int64 if key.endswith("num_batches_tracked") else torch.float32
        assert tensor.dtype == expected, key


def test_fresh_weights_follow_pytorch_default_init():
    """Linear layers start like plain PyTorch (uniform within 1/sqrt(fan_in), nonzero bias), not transformers'
    normal(0, 0.02) with zero bias; BatchNorm starts as the identity."""
    model = build(VAEConfig.from_preset("mnist-2d"))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            bound = 1 / math.sqrt(module.in_features)
            assert module.weight.abs().max() <= bound
            assert module.weight.abs().max() > 0.9 * bound
            assert module.bias.abs().max() <= bound and module.bias.abs().max() > 0
        if isinstance(module, nn.BatchNorm1d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
            assert torch.all(module.running_mean == 0) and torch.all(module.running_var == 1)


def test_zero_dropout_keeps_the_layer_names():
    with_dropout = VAEModel(VAEConfig.from_preset("mnist-2d"))
    without = VAEModel(VAEConfig.from_preset("mnist-2d", dropout=0.0))
    assert not any(isinstance(m, nn.Dropout) for m in without.modules())
    shapes = {k: v.shape for k, v in with_dropout.state_dict().items()}
    assert shapes == {k: v.shape for k, v in without.state_dict().items()}


# ---------------------------------------------------------------------------------------------- the loss
def tiny_model(**overrides) -> VAEModel:
    config = VAEConfig(image_size=2, num_channels=1, latent_dim=2, hidden_sizes=[3], dropout=0.2, beta=1.5, **overrides)
    return with_nontrivial_batch_norm(build(config)).double().eval()


TINY_PIXELS = torch.tensor([[0.0, 0.25, 0.5, 1.0], [1.0, 0.75, 0.1, 0.0], [0.3, 0.3, 0.9, 0.6]], dtype=torch.float64)


def bce_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    probabilities = torch.sigmoid(logits)
    return -(targets * torch.log(probabilities) + (1 - targets) * torch.log1p(-probabilities)).sum()


def kl_sum(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).sum()


def test_loss_equals_hand_computation_from_returned_tensors():
    model = tiny_model()
    pixels = TINY_PIXELS.view(3, 1, 2, 2)
    out = model(pixels, generator=seeded(7))
    batch = pixels.shape[0]

    eps = torch.randn((batch, 2), generator=seeded(7), dtype=torch.float64)
    torch.testing.assert_close(out.latents, out.mean + torch.exp(0.5 * out.logvar) * eps)
    torch.testing.assert_close(out.logits, model.decode(out.latents).logits)

    reconstruction = bce_sum(out.logits, pixels) / batch
    kl = kl_sum(out.mean, out.logvar) / batch
    torch.testing.assert_close(out.reconstruction_loss, reconstruction)
    torch.testing.assert_close(out.kl_loss, kl)
    torch.testing.assert_close(out.loss, reconstruction + 1.5 * kl)
    assert out.loss.shape == ()


def test_loss_at_posterior_mean_equals_hand_computation_from_the_weights():
    """Re-derive the whole eval-mode forward pass (Linear, BatchNorm with running stats, ReLU) from the weights."""
    model = tiny_model()
    w = model.state_dict()
    x = TINY_PIXELS

    def linear(h, name):
        return h @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def batch_norm(h, name):
        normalised = (h - w[f"{name}.running_mean"]) / torch.sqrt(w[f"{name}.running_var"] + 1e-5)
        return normalised * w[f"{name}.weight"] + w[f"{name}.bias"]

    hidden = torch.relu(batch_norm(linear(x, "encoder.layers.0"), "encoder.layers.1"))
    mean, logvar = linear(hidden, "encoder.fc_mu"), linear(hidden, "encoder.fc_logvar")
    hidden = torch.relu(batch_norm(linear(mean, "decoder.layers.0"), "decoder.layers.1"))
    logits = linear(hidden, "decoder.layers.4")
    expected = (bce_sum(logits, x) + 1.5 * kl_sum(mean, logvar)) / x.shape[0]

    out = model(x.view(3, 1, 2, 2), sample_posterior=False)
    torch.testing.assert_close(out.mean, mean)
    torch.testing.assert_close(out.logvar, logvar)
    torch.testing.assert_close(out.latents, mean)
    torch.testing.assert_close(out.logits, logits.view(3, 1, 2, 2))
    torch.testing.assert_close(out.loss, expected)


def test_beta_and_kl_weight_scale_the_kl_term():
    model = tiny_model()
    pixels = TINY_PIXELS.view(3, 1, 2, 2)
    base = model(pixels, sample_posterior=False)
    assert base.kl_loss > 0
    for beta, kl_weight in [(0.0, 1.0), (1.5, 0.5), (4.0, 1.0), (4.0, 0.0), (2.0, 0.25)]:
        model.config.beta = beta
        out = model(pixels, sample_posterior=False, kl_weight=kl_weight)
        torch.testing.assert_close(out.reconstruction_loss, base.reconstruction_loss)
        torch.testing.assert_close(out.kl_loss, base.kl_loss)
        torch.testing.assert_close(out.loss, base.reconstruction_loss + beta * kl_weight * base.kl_loss)


def test_free_bits_apply_in_training_only_and_leave_kl_loss_true():
    free_bits = 0.5
    config = VAEConfig(image_size=4, latent_dim=4, hidden_sizes=[16], dropout=0.0, beta=2.0, free_bits=free_bits)
    model = build(config)
    pixels = images(16, config)

    model.train()
    out = model(pixels, generator=seeded(3))
    per_dimension = 0.5 * (out.mean.pow(2) + out.logvar.exp() - 1 - out.logvar)
    torch.testing.assert_close(out.kl_loss, per_dimension.sum(1).mean())
    clamped = per_dimension.mean(0).clamp(min=free_bits).sum()
    assert clamped > out.kl_loss  # the floor is active for this untrained model
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 2.0 * clamped)

    model.eval()
    out = model(pixels, generator=seeded(3))
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 2.0 * out.kl_loss)


def test_return_dict_false_gives_the_tuple(mnist_2d):
    pixels = images(4, mnist_2d.config)
    out = mnist_2d(pixels, sample_posterior=False)
    assert isinstance(out, VAEOutput)
    as_tuple = mnist_2d(pixels, sample_posterior=False, return_dict=False)
    # hf-vae 0.1's seven fields first, in their order; `loss_terms` and `latent_dist` after them.
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 9
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[3], out.logits)
    assert as_tuple[7] == out.loss_terms and set(out.loss_terms) == {"recon_loss", "kl_loss"}


# ---------------------------------------------------------------------------------------------- gradients
def test_gradients_reach_the_encoder_through_the_reparameterisation():
    model = build(VAEConfig.from_preset("mnist-2d")).train()
    pixels = images(16, model.config)

    # The reconstruction term alone depends on logvar only through z = mean + exp(logvar / 2) * eps.
    model(pixels, generator=seeded(0)).reconstruction_loss.backward()
    for name in ("encoder.layers.0.weight", "encoder.fc_mu.weight", "encoder.fc_logvar.weight"):
        gradient = model.get_parameter(name).grad
        assert gradient is not None and gradient.abs().sum() > 0, name

    model.zero_grad(set_to_none=True)
    model(pixels, sample_posterior=False).reconstruction_loss.backward()
    assert model.encoder.fc_logvar.weight.grad is None or not model.encoder.fc_logvar.weight.grad.any()

    model.zero_grad(set_to_none=True)
    model(pixels, generator=seeded(0)).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# ---------------------------------------------------------------------------------------------- generation
def test_sample_is_reproducible_with_a_seeded_generator(mnist_2d):
    first = mnist_2d.sample(6, generator=seeded(42))
    assert first.shape == (6, 1, 28, 28)
    assert torch.equal(first, mnist_2d.sample(6, generator=seeded(42)))
    assert not torch.equal(first, mnist_2d.sample(6, generator=seeded(43)))
    assert first.min() >= 0 and first.max() <= 1


def test_sample_in_training_mode_works_for_one_image_and_changes_nothing():
    model = build(VAEConfig.from_preset("mnist-2d")).train()
    model.decoder.layers[1].eval()  # a module the caller froze keeps its own mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one = model.sample(1, generator=seeded(0))
    assert one.shape == (1, 1, 28, 28)
    assert torch.equal(model.sample(4, generator=seeded(1)), model.sample(4, generator=seeded(1)))
    model.reconstruct(images(1, model.config))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model.encoder.layers[1].training and not model.decoder.layers[1].training


def test_decode_gives_sigmoid_of_logits_as_images():
    config = VAEConfig(image_size=8, num_channels=3, latent_dim=4, hidden_sizes=[32])
    model = build(config).eval()
    latents = torch.randn(5, 4, generator=seeded(0)) * 3
    out = model.decode(latents)
    assert out.logits.shape == out.images.shape == (5, 3, 8, 8)
    torch.testing.assert_close(out.images, torch.sigmoid(out.logits))
    assert out.images.min() >= 0 and out.images.max() <= 1


def test_encode_returns_the_posterior(mnist_2d):
    pixels = images(3, mnist_2d.config)
    posterior = mnist_2d.encode(pixels)
    out = mnist_2d(pixels, sample_posterior=False)
    assert posterior.mean.shape == posterior.logvar.shape == (3, 2)
    torch.testing.assert_close(posterior.mean, out.mean)
    torch.testing.assert_close(posterior.logvar, out.logvar)


def test_reconstruct_decodes_the_posterior_mean(mnist_2d):
    pixels = images(3, mnist_2d.config)
    reconstruction = mnist_2d.reconstruct(pixels)
    assert reconstruction.shape == (3, 1, 28, 28)
    torch.testing.assert_close(reconstruction, mnist_2d.decode(mnist_2d.encode(pixels).mean).images)
    torch.testing.assert_close(reconstruction, torch.sigmoid(mnist_2d(pixels, sample_posterior=False).logits))


def test_interpolate_shapes_and_end_points(mnist_2d):
    pixels = images(4, mnist_2d.config)
    start, end = pixels[:2], pixels[2:]
    path = mnist_2d.interpolate(start, end, steps=5)
    assert path.shape == (2, 5, 1, 28, 28)
    torch.testing.assert_close(path[:, 0], mnist_2d.reconstruct(start))
    torch.testing.assert_close(path[:, -1], mnist_2d.reconstruct(end))
    assert not torch.allclose(path[:, 2], path[:, 0])

    single = mnist_2d.interpolate(pixels[0], pixels[3], steps=8)
    assert single.shape == (8, 1, 28, 28)
    torch.testing.assert_close(single[0], mnist_2d.reconstruct(pixels[:1])[0])
    torch.testing.assert_close(single[-1], mnist_2d.reconstruct(pixels[3:])[0])

    with pytest.raises(ValueError, match="steps must be at least 2"):
        mnist_2d.interpolate(pixels[0], pixels[1], steps=1)


# ---------------------------------------------------------------------------------------------- modes and dtypes
def test_eval_is_deterministic_and_training_is_not(small_config):
    model = build(small_config)
    pixels = images(8, small_config)
    model.eval()
    first = model(pixels, sample_posterior=False)
    second = model(pixels, sample_posterior=False)
    assert torch.equal(first.loss, second.loss) and torch.equal(first.logits, second.logits)

    model.train()
    running_mean = model.encoder.layers[1].running_mean.clone()
    first = model(pixels, sample_posterior=False)
    second = model(pixels, sample_posterior=False)
    assert not torch.equal(first.logits, second.logits)  # dropout
    assert not torch.equal(model.encoder.layers[1].running_mean, running_mean)  # BatchNorm statistics move


def test_forward_under_no_grad(mnist_2d):
    with torch.no_grad():
        out = mnist_2d(images(4, mnist_2d.config))
    assert not out.loss.requires_grad
    assert torch.isfinite(out.loss)


def test_bfloat16_on_cpu():
    model = build(VAEConfig.from_preset("mnist-2d")).to(torch.bfloat16)
    pixels = images(8, model.config)  # float32 input into a bfloat16 model
    model.train()
    out = model(pixels, generator=seeded(0))
    assert out.logits.dtype == torch.bfloat16
    assert out.loss.dtype == torch.float32  # the densities are float32 even for a bf16 model
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.encoder.layers[0].weight.grad.dtype == torch.bfloat16
    assert model.encoder.layers[0].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        evaluated = model(pixels, sample_posterior=False)
    reference = build(VAEConfig.from_preset("mnist-2d")).eval()(pixels, sample_posterior=False)
    assert abs(evaluated.loss.float().item() - reference.loss.item()) < 0.02 * reference.loss.item()
    samples = model.sample(4, generator=seeded(0))
    assert samples.dtype == torch.bfloat16 and samples.min() >= 0 and samples.max() <= 1
    assert model.reconstruct(pixels).dtype == torch.bfloat16
    assert torch.isfinite(model.log_likelihood(pixels, num_samples=4, generator=seeded(0))).all()


def test_flat_and_channel_less_inputs_are_accepted(mnist_2d):
    pixels = images(3, mnist_2d.config)
    full = mnist_2d(pixels, sample_posterior=False)
    flat = mnist_2d(pixels.view(3, 784), sample_posterior=False)
    channel_less = mnist_2d(pixels.view(3, 28, 28), sample_posterior=False)
    for out in (flat, channel_less):
        assert out.logits.shape == (3, 1, 28, 28)
        torch.testing.assert_close(out.loss, full.loss)


# ---------------------------------------------------------------------------------------------- bad input
SHAPE_MESSAGE = r"pixel_values must have shape \(batch, 1, 28, 28\) \(or flat \(batch, 784\)\)"


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (torch.rand(2, 1, 28, 27), SHAPE_MESSAGE + r", got \(2, 1, 28, 27\)"),
        (torch.rand(2, 3, 28, 28), SHAPE_MESSAGE),
        (torch.rand(2, 783), SHAPE_MESSAGE + r", got \(2, 783\)"),
        (torch.rand(784), SHAPE_MESSAGE),
        (torch.rand(2, 1, 1, 28, 28), SHAPE_MESSAGE),
        (torch.rand(2, 1, 28, 28) * 255, r"must lie in \[0, 1\].*images.float\(\) / 255"),
        (torch.rand(2, 1, 28, 28) - 0.5, r"must lie in \[0, 1\], got values in \[-0\.\d+"),
        (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
        (torch.rand(2, 1, 28, 28).index_put_((torch.tensor(0),), torch.tensor(float("nan"))), "NaN"),
        (torch.randint(0, 255, (2, 1, 28, 28), dtype=torch.uint8), "float tensor.*got dtype torch.uint8"),
        (torch.randint(0, 2, (2, 1, 28, 28)), "float tensor.*got dtype torch.int64"),
    ],
    ids=["width", "channels", "flat", "unbatched", "5d", "0-255", "negative", "nan", "one-nan", "uint8", "int64"],
)
def test_bad_pixel_values_raise_value_error(mnist_2d, pixels, message):
    for call in (mnist_2d, mnist_2d.encode, mnist_2d.reconstruct, mnist_2d.negative_elbo):
        with pytest.raises(ValueError, match=message):
            call(pixels)


def test_non_tensor_input_raises_type_error(mnist_2d):
    with pytest.raises(TypeError, match="torch.Tensor"):
        mnist_2d([[0.0] * 784])


@pytest.mark.parametrize("shape", [(4, 3), (4,), (4, 2, 1)])
def test_wrong_latent_shape_raises_value_error(mnist_2d, shape):
    with pytest.raises(ValueError, match=r"latents must have shape \(batch, 2\)"):
        mnist_2d.decode(torch.zeros(shape))


# ---------------------------------------------------------------------------------------------- conditional
@pytest.fixture(scope="module")
def conditional() -> VAEModel:
    return build(VAEConfig.from_preset("mnist-2d", num_classes=10)).eval()


def test_conditional_model_uses_labels(conditional):
    pixels = images(4, conditional.config)
    labels = torch.tensor([0, 3, 7, 9])
    out = conditional(pixels, labels=labels, sample_posterior=False)
    assert out.logits.shape == (4, 1, 28, 28)
    other = conditional(pixels, labels=torch.tensor([1, 4, 8, 2]), sample_posterior=False)
    assert not torch.allclose(out.logits, other.logits)
    assert conditional.sample(3, generator=seeded(0), labels=5).shape == (3, 1, 28, 28)
    assert conditional.sample(3, generator=seeded(0), labels=torch.tensor([1, 2, 3])).shape == (3, 1, 28, 28)
    assert conditional.reconstruct(pixels, labels).shape == (4, 1, 28, 28)
    path = conditional.interpolate(pixels[0], pixels[1], steps=4, labels=torch.tensor([3]))
    assert path.shape == (4, 1, 28, 28)


def test_conditional_model_without_labels_raises(conditional):
    pixels = images(2, conditional.config)
    for call in (conditional, conditional.encode, conditional.reconstruct):
        with pytest.raises(ValueError, match=r"conditional \(num_classes=10\): pass `labels`"):
            call(pixels)
    with pytest.raises(ValueError, match="pass `labels`"):
        conditional.sample(2)
    with pytest.raises(ValueError, match="pass `labels`"):
        conditional.decode(torch.zeros(2, 2))


@pytest.mark.parametrize("labels", [torch.tensor([0, 10]), torch.tensor([-1, 3])])
def test_conditional_labels_out_of_range_raise(conditional, labels):
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\)"):
        conditional(images(2, conditional.config), labels=labels)


def test_conditional_wrong_number_of_labels_raises(conditional):
    with pytest.raises(ValueError, match="Got 3 labels for a batch of 2"):
        conditional(images(2, conditional.config), labels=torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------------------------------------- likelihoods
@pytest.fixture(scope="module")
def binary_batch() -> torch.Tensor:
    return (torch.rand(200, 1, 28, 28, generator=seeded(5)) < 0.2).float()


def test_iwae_estimate_tightens_with_more_samples(mnist_2d, binary_batch):
    estimates = [
        mnist_2d.log_likelihood(binary_batch, num_samples=k, generator=seeded(0)).mean().item() for k in (1, 10, 50)
    ]
    assert estimates[0] < estimates[1] < estimates[2]
    elbo = -mnist_2d.negative_elbo(binary_batch, num_samples=10, generator=seeded(0)).mean().item()
    assert estimates[2] >= elbo


def test_one_sample_iwae_is_an_elbo_estimate(mnist_2d, binary_batch):
    """With K=1 the IWAE estimate is a single-sample ELBO: same expectation as `-negative_elbo` (which uses the
    exact KL), so only their means over many images are compared."""
    iwae = mnist_2d.log_likelihood(binary_batch, num_samples=1, generator=seeded(1)).double()
    elbo = -mnist_2d.negative_elbo(binary_batch, num_samples=1, generator=seeded(1)).double()
    assert iwae.shape == elbo.shape == (200,)
    difference = iwae - elbo
    assert abs(difference.mean().item()) < 4 * difference.std().item() / math.sqrt(len(difference)) + 1e-6


def test_likelihood_estimates_are_reproducible_and_chunked(mnist_2d, binary_batch):
    pixels = binary_batch[:8]
    first = mnist_2d.log_likelihood(pixels, num_samples=20, generator=seeded(2))
    assert first.shape == (8,) and torch.isfinite(first).all()
    assert torch.equal(first, mnist_2d.log_likelihood(pixels, num_samples=20, generator=seeded(2)))
    chunked = mnist_2d.log_likelihood(pixels, num_samples=20, generator=seeded(2), max_batch_elements=3 * 8 * 784)
    torch.testing.assert_close(chunked, first)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        mnist_2d.log_likelihood(pixels, num_samples=0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        mnist_2d.negative_elbo(pixels, num_samples=0)


def test_negative_elbo_matches_forward_loss_in_expectation(mnist_2d, binary_batch):
    """forward's loss (beta = 1) is the batch mean of the negative ELBO, both in nats per image."""
    pixels = binary_batch[:32]
    many = mnist_2d.negative_elbo(pixels, num_samples=50, generator=seeded(3)).mean().item()
    losses = [mnist_2d(pixels, generator=seeded(seed)).loss.item() for seed in range(10)]
    assert abs(many - sum(losses) / len(losses)) < 0.01 * many


def test_anomaly_score(mnist_2d, binary_batch):
    pixels = binary_batch[:4]
    elbo = mnist_2d.anomaly_score(pixels, num_samples=3, generator=seeded(0))
    torch.testing.assert_close(elbo, mnist_2d.negative_elbo(pixels, num_samples=3, generator=seeded(0)))
    iwae = mnist_2d.anomaly_score(pixels, method="iwae", num_samples=3, generator=seeded(0))
    torch.testing.assert_close(iwae, -mnist_2d.log_likelihood(pixels, num_samples=3, generator=seeded(0)))
    with pytest.raises(ValueError, match=r"method must be one of \['elbo', 'iwae'\], got 'psnr'"):
        mnist_2d.anomaly_score(pixels, method="psnr")
    # Without a generator the draws are seeded: the same images get the same scores on every call.
    assert torch.equal(mnist_2d.anomaly_score(pixels), mnist_2d.anomaly_score(pixels))


def test_bernoulli_loss_matches_torch_bce_on_probabilities(mnist_2d):
    """The reference computes BCE on sigmoid outputs; ours on logits must agree where both are stable."""
    pixels = images(4, mnist_2d.config)
    out = mnist_2d(pixels, generator=seeded(0))
    reference = F.binary_cross_entropy(torch.sigmoid(out.logits), pixels, reduction="sum") / 4
    torch.testing.assert_close(out.reconstruction_loss, reference, rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------------------------- IWAE training loss
def test_importance_weighted_loss_is_minus_the_iwae_estimate_with_the_same_draws(binary_batch):
    """The training loss with K samples is the IWAE bound that `log_likelihood` estimates: with the same generator
    both draw the same K x B latents, so they agree to float precision (beta = 1, kl_weight = 1)."""
    config = VAEConfig.from_preset("mnist", latent_dim=4, hidden_sizes=[32, 16], num_importance_samples=7)
    model = with_nontrivial_batch_norm(build(config)).eval()
    pixels = binary_batch[:16]
    out = model(pixels, generator=seeded(4))
    iwae = model.log_likelihood(pixels, num_samples=7, generator=seeded(4))
    torch.testing.assert_close(out.loss.double(), -iwae.mean(), rtol=1e-5, atol=1e-4)
    assert out.logits.shape == pixels.shape and out.latents.shape == (16, 4)
    assert torch.equal(out.kl_loss, model(pixels, sample_posterior=False).kl_loss)


def test_importance_weighted_loss_is_tighter_than_the_elbo_and_trains_every_weight(binary_batch):
    config = VAEConfig.from_preset("mnist", latent_dim=4, hidden_sizes=[32, 16])
    elbo_model = with_nontrivial_batch_norm(build(config)).eval()
    iwae_config = VAEConfig.from_preset("mnist", latent_dim=4, hidden_sizes=[32, 16], num_importance_samples=20)
    iwae_model = with_nontrivial_batch_norm(build(iwae_config)).eval()
    pixels = binary_batch[:64]
    elbo_losses = torch.stack([elbo_model(pixels, generator=seeded(seed)).loss for seed in range(5)])
    iwae_losses = torch.stack([iwae_model(pixels, generator=seeded(seed)).loss for seed in range(5)])
    assert iwae_losses.mean() < elbo_losses.mean()
    # Reported terms keep the ELBO's meaning: reconstruction averaged over the K samples, the exact KL.
    out = iwae_model(pixels, generator=seeded(0))
    assert out.reconstruction_loss + out.kl_loss > out.loss

    iwae_model.train()
    out = iwae_model(pixels, generator=seeded(0), kl_weight=0.5)
    out.loss.backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in iwae_model.parameters())


def test_importance_weighted_kl_weight_scales_the_prior_ratio():
    """kl_weight = 0 leaves only the likelihoods: loss = -log mean_k p(x|z_k)."""
    config = VAEConfig(image_size=4, latent_dim=3, hidden_sizes=[8], dropout=0.0, num_importance_samples=4)
    model = build(config).double().eval()
    pixels = images(5, config).double()
    out = model(pixels, generator=seeded(2), kl_weight=0.0)
    eps = torch.randn((4, 5, 3), generator=seeded(2), dtype=torch.float64)
    latents = out.mean + torch.exp(0.5 * out.logvar) * eps
    logits = model.decode(latents.reshape(20, 3)).logits
    nll = F.binary_cross_entropy_with_logits(logits, pixels.repeat(4, 1, 1, 1), reduction="none").flatten(1).sum(1)
    expected = -(torch.logsumexp(-nll.view(4, 5), 0) - math.log(4)).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.reconstruction_loss, nll.mean())
    tuple_out = model(pixels, generator=seeded(2), kl_weight=0.0, return_dict=False)
    torch.testing.assert_close(tuple_out[0], expected)


@pytest.mark.parametrize("method", ["interpolate", "log_likelihood", "negative_elbo", "sample", "reconstruct"])
def test_estimates_and_pictures_run_in_eval_mode_and_restore_training_mode(binary_batch, method):
    model = build(VAEConfig.from_preset("mnist-2d")).train()
    calls = {
        "interpolate": lambda: model.interpolate(binary_batch[0], binary_batch[1], steps=3),
        "log_likelihood": lambda: model.log_likelihood(binary_batch, num_samples=4),
        "negative_elbo": lambda: model.negative_elbo(binary_batch, num_samples=2),
        "sample": lambda: model.sample(2),
        "reconstruct": lambda: model.reconstruct(binary_batch),
    }
    running_mean = model.encoder.layers[1].running_mean.clone()
    first, second = calls[method](), calls[method]() if method in ("interpolate", "reconstruct") else None
    if second is not None:
        assert torch.equal(first, second), "dropout was active: the method did not run in eval mode"
    assert all(module.training for module in model.modules())
    assert torch.equal(model.encoder.layers[1].running_mean, running_mean)
