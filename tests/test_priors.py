"""Priors as modules: the standard normal and the VampPrior (Tomczak & Welling 2018), checked against direct
computations with `torch.distributions`, and a VampPrior VAE's bounds."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from hf_vae import VAEConfig, VAEModel
from hf_vae.distributions import DiagonalGaussian
from hf_vae.estimators import chunked_log_weights, iwae_bound
from hf_vae.priors import StandardNormal


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def vamp_model(num_pseudo_inputs: int = 7, latent_dim: int = 3, **overrides) -> VAEModel:
    torch.manual_seed(0)
    config = VAEConfig(
        image_size=8, latent_dim=latent_dim, hidden_sizes=[16], dropout=0.0, prior="vamp",
        num_pseudo_inputs=num_pseudo_inputs, **overrides,
    )  # fmt: skip
    return VAEModel(config)


def test_standard_normal_log_prob_and_kl_match_torch_distributions():
    prior = StandardNormal(4)
    latents = torch.randn(5, 3, 4, generator=seeded(0))
    expected = Independent(Normal(torch.zeros(4), torch.ones(4)), 1).log_prob(latents)
    torch.testing.assert_close(prior.log_prob(latents), expected)
    posterior = DiagonalGaussian(torch.randn(3, 4, generator=seeded(1)), torch.randn(3, 4, generator=seeded(2)))
    q = Independent(Normal(posterior.mean, posterior.std), 1)
    p = Independent(Normal(torch.zeros(3, 4), torch.ones(3, 4)), 1)
    torch.testing.assert_close(prior.kl(posterior), torch.distributions.kl_divergence(q, p))


def test_vamp_log_prob_is_the_mixture_of_the_pseudo_input_posteriors():
    model = vamp_model().eval()
    prior = model.prior
    with torch.no_grad():
        mean, logvar = model.encoder(prior.pseudo_inputs.clamp(0, 1), None)
        latents = torch.randn(4, 6, 3, generator=seeded(3)) * 2
        components = Independent(Normal(mean, torch.exp(0.5 * logvar)), 1)
        direct = torch.logsumexp(components.log_prob(latents.unsqueeze(-2)), dim=-1) - math.log(7)
        torch.testing.assert_close(prior.log_prob(latents), direct, rtol=1e-5, atol=1e-5)


def test_vamp_monte_carlo_kl_approaches_the_exact_value():
    """With one pseudo-input the mixture is one Gaussian, whose KL to the posterior has a closed form: the Monte Carlo
    estimate's error shrinks as the draws grow, and with 200k draws it is within 4 standard errors."""
    model = vamp_model(num_pseudo_inputs=1).eval()
    posterior = DiagonalGaussian(torch.tensor([[0.3, -0.5, 1.0]]), torch.tensor([[-0.4, 0.2, -1.0]]))
    with torch.no_grad():
        exact = posterior.kl(model.prior.components()).item()
        errors = []
        for count in (100, 200_000):
            latents = posterior.sample(seeded(4), num_samples=count)
            estimates = model.prior.kl(posterior, latents)[:, 0]
            errors.append(abs(estimates.mean().item() - exact))
        standard_error = estimates.std().item() / math.sqrt(200_000)
    assert errors[1] < errors[0] and errors[1] < 4 * standard_error


def test_vamp_samples_come_from_the_mixture():
    model = vamp_model(num_pseudo_inputs=1).eval()
    with torch.no_grad():
        component = model.prior.components()
        draws = model.prior.sample(100_000, generator=seeded(5))
    torch.testing.assert_close(draws.mean(0), component.mean[0], atol=0.02, rtol=0)
    torch.testing.assert_close(draws.std(0), component.std[0], atol=0.02, rtol=0.02)
    images = model.sample(4, generator=seeded(6))
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()


def test_pseudo_inputs_neither_join_nor_move_the_batch_norm_statistics():
    model = vamp_model().train()
    norm = model.encoder.layers[1]
    before = norm.running_mean.clone()
    model.prior.log_prob(torch.zeros(2, 3))
    assert torch.equal(norm.running_mean, before) and norm.training


def test_vamp_training_reaches_the_pseudo_inputs_and_its_bounds_are_ordered():
    model = vamp_model()
    pixels = (torch.rand(16, 1, 8, 8, generator=seeded(7)) < 0.3).float()
    model(pixels, generator=seeded(8)).loss.backward()
    assert model.prior.pseudo_inputs.grad.abs().sum() > 0
    # log p(x, z_k) - log q(z_k|x) under the mixture prior: their log-mean-exp (IWAE) is at least their mean (ELBO)
    # for the same draws, and the model's estimate is that log-mean-exp.
    log_weights = chunked_log_weights(model, pixels, 50, generator=seeded(9)).double()
    assert (iwae_bound(log_weights) >= log_weights.mean(0)).all()
    estimate = model.log_likelihood(pixels, num_samples=50, generator=seeded(9))
    torch.testing.assert_close(estimate, iwae_bound(log_weights))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_classes": 10}, "does not apply to a conditional model"),
        ({"free_bits": 0.5}, "free_bits"),
        ({"num_pseudo_inputs": 0}, "num_pseudo_inputs"),
    ],
)
def test_vamp_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        VAEConfig(prior="vamp", **overrides)


def test_mixture_of_gaussians_log_prob_sampling_and_training():
    from torch.distributions import Categorical, MixtureSameFamily

    torch.manual_seed(0)
    model = VAEModel(VAEConfig(image_size=8, latent_dim=3, hidden_sizes=[16], prior="mog", num_pseudo_inputs=4))
    prior = model.prior
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([2.0, 0.0, -1.0, 0.5]))
        prior.logvars.uniform_(-1, 0.5)
    mixture = MixtureSameFamily(
        Categorical(logits=prior.logits.detach()),
        Independent(Normal(prior.means.detach(), prior.logvars.detach().mul(0.5).exp()), 1),
    )
    latents = torch.randn(5, 7, 3, generator=seeded(11)) * 2
    with torch.no_grad():
        torch.testing.assert_close(prior.log_prob(latents), mixture.log_prob(latents), rtol=1e-5, atol=1e-5)
        draws = prior.sample(50_000, generator=seeded(12))
    assert abs(draws.mean(0) - mixture.mean).max() < 0.05
    pixels = (torch.rand(6, 1, 8, 8, generator=seeded(13)) < 0.3).float()
    model(pixels, generator=seeded(14)).loss.backward()
    assert all(parameter.grad.abs().sum() > 0 for parameter in (prior.means, prior.logvars, prior.logits))
    # Independent of the encoder: a conditional model may use it.
    VAEConfig(prior="mog", num_classes=10)


def test_a_very_narrow_gaussian_scores_its_own_draws_finitely():
    """A hierarchical model's head can extrapolate to logvar < -88 from an outlying draw above it: 1/var then
    overflows float32, and an unstandardised residual made that IWAE weight NaN (seen in a K = 5000 evaluation)."""
    generator = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 8, generator=generator)
    logvar = torch.full((4, 8), -95.0)
    narrow = DiagonalGaussian(mean, logvar)
    draws = narrow.sample(generator)
    log_prob = narrow.log_prob(draws)
    expected = Independent(Normal(mean.double(), (0.5 * logvar.double()).exp()), 1).log_prob(draws.double())
    assert torch.isfinite(log_prob).all()
    assert torch.allclose(log_prob.double(), expected, rtol=1e-4)
