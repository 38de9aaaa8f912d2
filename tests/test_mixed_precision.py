"""bf16 autocast (`--mixed_precision bf16`): the layers run in bf16, the densities in float32. A bf16 log-density of a
784-pixel image is rounded to the nearest half nat, and the mixture prior's expanded squared distances cancel, so
without this the IWAE weights that training follows would be noise."""

from __future__ import annotations

import pytest
import torch

from hf_vae.configuration_hvae import HVAEConfig
from hf_vae.distributions import DiagonalGaussian
from hf_vae.likelihoods import BernoulliLikelihood
from hf_vae.modeling_hvae import HVAEModel
from hf_vae.priors import MixtureOfGaussians
from hf_vae.quantization import VectorQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_a_gaussian_built_from_bf16_heads_holds_float32():
    mean = torch.randn(3, 4, generator=seeded(0)).bfloat16()
    posterior = DiagonalGaussian(mean, torch.zeros(3, 4, dtype=torch.bfloat16))
    assert posterior.mean.dtype == posterior.logvar.dtype == torch.float32
    assert DiagonalGaussian(mean.double(), mean.double()).mean.dtype == torch.float64


def test_the_bernoulli_likelihood_of_many_samples_is_float32_under_autocast():
    logits = torch.randn(5, 3, 1, 28, 28, generator=seeded(1)) * 4
    pixels = (torch.rand(3, 1, 28, 28, generator=seeded(2)) < 0.3).float()
    expected = BernoulliLikelihood().nll(logits, pixels)
    with bf16_autocast():
        nll = BernoulliLikelihood().nll(logits, pixels)
    assert nll.dtype == torch.float32
    torch.testing.assert_close(nll, expected, rtol=0, atol=1e-3)


def test_the_mixture_prior_log_prob_is_float32_under_autocast():
    torch.manual_seed(0)
    prior = MixtureOfGaussians(latent_dim=32, num_components=50)
    latents = torch.randn(4, 64, 32, generator=seeded(3)) * 2
    expected = prior.log_prob(latents)
    with bf16_autocast():
        log_prob = prior.log_prob(latents)
    assert log_prob.dtype == torch.float32
    torch.testing.assert_close(log_prob, expected, rtol=0, atol=1e-3)


def test_the_quantiser_picks_the_float32_nearest_codes_under_autocast():
    """Codes packed close together, as a trained codebook's are: bf16 distances would settle near-ties by rounding.
    The encoder's output is bf16 under autocast; its values are scored against the codebook in float32."""
    quantizer = VectorQuantizer(256, 16).eval()
    quantizer.embedding.copy_(3.0 + 0.05 * torch.randn(256, 16, generator=seeded(6)))
    vectors = (3.0 + 0.05 * torch.randn(500, 16, generator=seeded(7))).bfloat16()
    expected = quantizer(vectors.float())
    with bf16_autocast():
        quantized = quantizer(vectors)
    assert torch.equal(quantized.indices, expected.indices)
    assert quantized.commitment.dtype == torch.float32


def test_a_bf16_forward_gives_the_float32_loss_to_within_its_layers_rounding():
    """The same model, draws and images: only the layers' bf16 rounding differs, a small fraction of a nat."""
    torch.manual_seed(0)
    config = HVAEConfig(image_size=28, latent_dims=[16, 8], hidden_sizes=[64], prior="vamp", num_pseudo_inputs=10)
    model = HVAEModel(config).eval()
    pixels = (torch.rand(32, 1, 28, 28, generator=seeded(4)) < 0.3).float()
    with torch.no_grad():
        expected = model(pixels, generator=seeded(5)).loss
        with bf16_autocast():
            output = model(pixels, generator=seeded(5))
    assert output.loss.dtype == torch.float32
    assert abs(output.loss.item() - expected.item()) < 0.5, (output.loss.item(), expected.item())
