"""Latent distributions as objects (diffusers' `DiagonalGaussianDistribution` is the model): the posterior an
encoder returns, which priors, estimators and pictures use without knowing how it was computed.

Copied next to the weights for `trust_remote_code`: imports only torch.
"""

from __future__ import annotations

import math

import torch

_LOG_2PI = math.log(2 * math.pi)


def standard_normal(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """N(0, 1) noise of `shape` in `like`'s dtype and on its device, drawn on the generator's device when one is given
    (a CPU generator gives the same numbers whatever device the model is on)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over the last dimension; batch dimensions in front.

    `sample` is reparameterised (mean + std * eps), so gradients flow to `mean` and `logvar`. The parameters are held
    in float32 at least: under bf16 autocast the heads that compute them return bf16, whose 8-bit mantissa would round
    a 784-pixel model's log-densities to the nearest half nat. Draws are float32 too, so that log q(z) is exact at the
    very point the decoder reads (autocast rounds its input); a bf16 model casts them to its dtype where its layers
    read them.
    """

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} must have the same shape.")
        dtype = torch.promote_types(mean.dtype, torch.float32)
        self.mean = mean.to(dtype)
        self.logvar = logvar.to(dtype)

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None, num_samples: int | None = None) -> torch.Tensor:
        """One draw of the mean's shape, or `num_samples` draws stacked in front: (num_samples, *mean.shape)."""
        shape = tuple(self.mean.shape) if num_samples is None else (num_samples, *self.mean.shape)
        return self.mean + self.std * standard_normal(shape, self.mean, generator)

    def log_prob(self, latents: torch.Tensor) -> torch.Tensor:
        """log N(latents; mean, var) summed over the last dimension; `latents` may carry extra leading dimensions.
        The residual is scaled by 1/std before squaring: 1/var overflows float32 once logvar < -88 (a narrow posterior
        the network extrapolates to from an outlying draw above it), and 0 * inf would make the weight NaN."""
        standardized = (latents - self.mean) * torch.exp(-0.5 * self.logvar)
        return -0.5 * (standardized.pow(2) + self.logvar + _LOG_2PI).sum(-1)

    def kl_per_dimension(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(self || other) per latent dimension, in closed form; `other=None` is N(0, I)."""
        if other is None:
            return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return 0.5 * (
            (self.mean - other.mean).pow(2) * torch.exp(-other.logvar)
            + torch.exp(self.logvar - other.logvar)
            - 1.0
            + other.logvar
            - self.logvar
        )

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(self || other) summed over the last dimension; `other=None` is N(0, I)."""
        return self.kl_per_dimension(other).sum(-1)


__all__ = ["DiagonalGaussian", "standard_normal"]
