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


PRIORS: dict[str, type[nn.Module]] = {"standard_normal": StandardNormal}


def build_prior(name: str, latent_dim: int) -> nn.Module:
    if name not in PRIORS:
        raise ValueError(f"Unknown prior {name!r}; available priors: {sorted(PRIORS)}.")
    return PRIORS[name](latent_dim)


__all__ = ["PRIORS", "StandardNormal", "build_prior"]
