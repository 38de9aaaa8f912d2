"""Priors p(z) as modules, chosen by a config's `prior` field. Everything that needs log p(z), a KL to the prior
or a draw from it asks the model's prior, so a learned prior is one new class here.

Interface: `log_prob(latents)` summed over the last dimension, `sample(num_samples, generator=, like=)`, and
`kl(posterior, latents)`, per image: in closed form where the prior has one, else the one-sample Monte Carlo
estimate log q(z|x) - log p(z) at the given `latents` (drawn from the posterior).

Copied next to the weights for `trust_remote_code`: imports only torch and its siblings.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .distributions import DiagonalGaussian, standard_normal

_LOG_2PI = math.log(2 * math.pi)
_NORMALIZATION_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d)


class StandardNormal(nn.Module):
    """p(z) = N(0, I): no parameters, a closed-form KL to a diagonal Gaussian posterior."""

    has_closed_form_kl = True

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        return -0.5 * (latents.pow(2) + _LOG_2PI).sum(-1)

    def sample(
        self, num_samples: int, generator: torch.Generator | None = None, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(num_samples, latent_dim) draws in `like`'s dtype and on its device (default float32 on the CPU)."""
        like = like if like is not None else torch.empty(0)
        return standard_normal((num_samples, self.latent_dim), like, generator)

    def kl_per_dimension(self, posterior: DiagonalGaussian) -> torch.Tensor:
        return posterior.kl_per_dimension()

    def kl(self, posterior: DiagonalGaussian, latents: torch.Tensor | None = None) -> torch.Tensor:
        return posterior.kl()


class GaussianMixturePrior(nn.Module):
    """A prior that is a mixture of K diagonal Gaussians: `components()` gives them, `log_mixture_weights()` their log
    weights (uniform unless a subclass learns them). There is no closed-form KL to a Gaussian posterior; it is
    estimated as log q(z|x) - log p(z) at posterior draws."""

    has_closed_form_kl = False
    latent_dim: int

    def components(self) -> DiagonalGaussian:
        raise NotImplementedError

    def log_mixture_weights(self, count: int, like: torch.Tensor) -> torch.Tensor:
        return torch.full((count,), -math.log(count), dtype=like.dtype, device=like.device)

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """log sum_k w_k N(z; mean_k, var_k), over the last dimension. The squared distances are expanded into matrix
        products, so that memory grows as latents x K, not latents x K x latent_dim. The expansion cancels terms, so it
        runs in float32 at least, outside autocast (in bf16 its error would be whole nats)."""
        components = self.components()
        flat = latents.reshape(-1, latents.shape[-1]).to(components.mean.dtype)
        inverse_var = torch.exp(-components.logvar)  # (K, D)
        with torch.autocast(flat.device.type, enabled=False):
            quadratic = (
                flat.pow(2) @ inverse_var.T
                - 2 * flat @ (components.mean * inverse_var).T
                + (components.mean.pow(2) * inverse_var).sum(-1)
            )
        log_components = -0.5 * (quadratic + components.logvar.sum(-1) + latents.shape[-1] * _LOG_2PI)
        log_weights = self.log_mixture_weights(len(components.mean), log_components)
        return torch.logsumexp(log_components + log_weights, dim=-1).view(latents.shape[:-1])

    def _choose(self, count: int, num_samples: int, generator: torch.Generator | None, device: torch.device):
        return torch.randint(count, (num_samples,), generator=generator, device=device)

    def sample(
        self, num_samples: int, generator: torch.Generator | None = None, like: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A component chosen by its weight for each draw, then a draw from it."""
        components = self.components()
        device = generator.device if generator is not None else components.mean.device
        chosen = self._choose(len(components.mean), num_samples, generator, device).to(components.mean.device)
        noise = standard_normal((num_samples, self.latent_dim), components.mean, generator)
        return components.mean[chosen] + components.std[chosen] * noise

    def kl(self, posterior: DiagonalGaussian, latents: torch.Tensor) -> torch.Tensor:
        """One-sample Monte Carlo estimate of KL(q(z|x) || p(z)) at `latents` drawn from q."""
        return posterior.log_prob(latents) - self.log_prob(latents)


class VampPrior(GaussianMixturePrior):
    """The VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k), the mixture of the encoder's posteriors
    at K learned pseudo-inputs u_k, which the model learns with the rest of its weights.

    The pseudo-inputs are stored as a parameter (K, C, H, W), used clamped to the pixel range [0, 1] (the paper's
    hardtanh), and start as uniform noise around 0.5 (so they are not all the same image). They are encoded with the
    model's own encoder, given at construction and kept outside this module's parameters (the encoder's weights
    belong to the model). BatchNorm layers encode them with their running statistics, in training too: the
    pseudo-inputs must neither join the batch's statistics nor move the running ones.
    """

    def __init__(self, latent_dim: int, num_pseudo_inputs: int, image_shape: tuple[int, int, int], encoder: nn.Module):
        super().__init__()
        self.latent_dim = latent_dim
        self.pseudo_inputs = nn.Parameter(torch.empty(num_pseudo_inputs, *image_shape))
        self.__dict__["_encoder"] = encoder  # not a submodule: its weights are the model's
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.pseudo_inputs.uniform_(0.45, 0.55)

    def components(self) -> DiagonalGaussian:
        """The K mixture components, (K, latent_dim) means and log-variances."""
        encoder: nn.Module = self.__dict__["_encoder"]
        norms = [module for module in encoder.modules() if isinstance(module, _NORMALIZATION_LAYERS)]
        modes = [module.training for module in norms]
        for module in norms:
            module.eval()
        try:
            mean, logvar = encoder(self.pseudo_inputs.clamp(0.0, 1.0), None)
        finally:
            for module, mode in zip(norms, modes, strict=True):
                module.train(mode)
        return DiagonalGaussian(mean, logvar)


class MixtureOfGaussians(GaussianMixturePrior):
    """A learned mixture of K diagonal Gaussians with learned weights: cheaper than the VampPrior (no encoder pass
    per step) and independent of the encoder, so conditional models can use it too. The means start as N(0, I) draws,
    the variances at 1 and the weights equal, so that at initialisation the prior is close to N(0, I) smeared out."""

    def __init__(self, latent_dim: int, num_components: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.means = nn.Parameter(torch.empty(num_components, latent_dim))
        self.logvars = nn.Parameter(torch.empty(num_components, latent_dim))
        self.logits = nn.Parameter(torch.empty(num_components))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.means.normal_()
        self.logvars.zero_()
        self.logits.zero_()

    def components(self) -> DiagonalGaussian:
        return DiagonalGaussian(self.means, self.logvars)

    def log_mixture_weights(self, count: int, like: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits, dim=0).to(like.dtype)

    def _choose(self, count: int, num_samples: int, generator: torch.Generator | None, device: torch.device):
        weights = torch.softmax(self.logits.detach().float(), dim=0).to(device)
        return torch.multinomial(weights, num_samples, replacement=True, generator=generator)


PRIORS: dict[str, type[nn.Module]] = {"standard_normal": StandardNormal, "vamp": VampPrior, "mog": MixtureOfGaussians}


def build_prior(config, encoder: nn.Module | None = None) -> nn.Module:
    """The prior a config names (`config.prior`); a VampPrior encodes its pseudo-inputs with `encoder`."""
    if config.prior == "standard_normal":
        return StandardNormal(config.latent_dim)
    if config.prior == "vamp":
        image_shape = (config.num_channels, config.image_size, config.image_size)
        return VampPrior(config.latent_dim, config.num_pseudo_inputs, image_shape, encoder)
    if config.prior == "mog":
        return MixtureOfGaussians(config.latent_dim, config.num_pseudo_inputs)
    raise ValueError(f"Unknown prior {config.prior!r}; available priors: {sorted(PRIORS)}.")


__all__ = ["PRIORS", "GaussianMixturePrior", "MixtureOfGaussians", "StandardNormal", "VampPrior", "build_prior"]
