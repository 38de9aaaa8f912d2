"""Estimators written once, for every family, on the family contract's `log_weights(pixel_values, num_samples,
generator, labels)`: the (K, B) values log p(x, z_k) - log q(z_k | x), z_k ~ q(z | x).

- IWAE bound / estimate of log p(x): log (1/K) sum_k exp(log_weights) (Burda et al. 2015), tighter as K grows;
- ELBO: the mean over k. A family may return, when asked `for_elbo=True`, other per-sample values with the same mean
  and less variance (the Gaussian VAE puts its closed-form KL in place of the Monte Carlo one);
- bits per dimension and anomaly scores from those.

Samples are drawn in chunks so that at most `max_batch_elements` decoded values are held at once; each chunk runs the
encoder again (a small cost next to K decoder passes) so that families need no chunking of their own.

Copied next to the weights for `trust_remote_code`: imports only torch and its siblings.
"""

from __future__ import annotations

import math

import torch

from .modeling_utils import evaluating

# Decoded values held at once: 2**23 floats (32 MiB) is about 10.7k decoder rows of a 28x28 image. Measured on 2 CPU
# cores, 2**25 was no faster and spent 3x more system time allocating fresh pages.
DEFAULT_MAX_BATCH_ELEMENTS = 2**23


def iwae_bound(log_weights: torch.Tensor) -> torch.Tensor:
    """log (1/K) sum_k exp(log_weights[k]) per image, from (K, B) log weights: the IWAE bound, K = 1 the ELBO."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def chunked_log_weights(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
    labels: torch.Tensor | None = None,
    max_batch_elements: int = DEFAULT_MAX_BATCH_ELEMENTS,
    for_elbo: bool = False,
) -> torch.Tensor:
    """(num_samples, B) log weights in eval mode without autograd, `num_samples` drawn in chunks."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    values_per_row = max(1, pixel_values.shape[0] * pixel_values[0].numel())
    chunk = max(1, min(num_samples, max_batch_elements // values_per_row))
    with evaluating(model):
        return torch.cat(
            [
                model.log_weights(pixel_values, min(chunk, num_samples - first), generator, labels, for_elbo=for_elbo)
                for first in range(0, num_samples, chunk)
            ]
        )


def log_likelihood(
    model: torch.nn.Module, pixel_values: torch.Tensor, num_samples: int = 1000, **kwargs
) -> torch.Tensor:
    """Importance-weighted estimate of log p(x) per image in nats, (B,), float64. Keywords as `chunked_log_weights`."""
    return iwae_bound(chunked_log_weights(model, pixel_values, num_samples, **kwargs).double())


def negative_elbo(model: torch.nn.Module, pixel_values: torch.Tensor, num_samples: int = 1, **kwargs) -> torch.Tensor:
    """-ELBO per image in nats, (B,), float64, averaged over `num_samples` posterior draws."""
    return -chunked_log_weights(model, pixel_values, num_samples, for_elbo=True, **kwargs).double().mean(0)


def bits_per_dim(nats_per_image: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """Nats per image -> bits per dimension (meaningful for a likelihood that is a probability mass over 8-bit
    pixels, or for binary pixels)."""
    return nats_per_image / (num_dims * math.log(2))


ANOMALY_METHODS = {"elbo": 16, "iwae": 1000}  # method -> default number of posterior samples


def anomaly_score(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    method: str = "elbo",
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image anomaly score in nats (higher = less like the training data): the negative ELBO (`"elbo"`) or the
    IWAE estimate of -log p(x) (`"iwae"`). Without a generator the draws are seeded with 0, so the same images
    always get the same scores."""
    if method not in ANOMALY_METHODS:
        raise ValueError(f"method must be one of {list(ANOMALY_METHODS)}, got {method!r}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    num_samples = num_samples or ANOMALY_METHODS[method]
    if method == "elbo":
        return negative_elbo(model, pixel_values, num_samples, generator=generator, labels=labels)
    return -log_likelihood(model, pixel_values, num_samples, generator=generator, labels=labels)


__all__ = [
    "ANOMALY_METHODS",
    "DEFAULT_MAX_BATCH_ELEMENTS",
    "anomaly_score",
    "bits_per_dim",
    "chunked_log_weights",
    "iwae_bound",
    "log_likelihood",
    "negative_elbo",
]
