"""Pixel likelihoods p(x | decoder output), shared by every family: the Bernoulli of the reference tutorial and the
discretised logistic of PixelCNN++ for 8-bit photographs.

Each offers `nll(params, pixel_values)` (nats per image, summed over pixels: params (..., C', H, W) against pixels
(B, C, H, W) broadcast over any leading sample dimensions, shape (..., B), so that K posterior samples are scored
without K copies of the images), `mean(params)` (the images the parameters stand for, in [0, 1]) and
`params_per_channel` (decoder output channels per image channel).

Copied next to the weights for `trust_remote_code`: imports only torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_NUM_LEVELS = 256  # 8-bit pixels: the discretised logistic puts its mass on the levels k / 255
# Bounds on the discretised logistic's log-scale (in [0, 1] pixel units): e^-8 is about a tenth of a level's width
# (PixelCNN++'s -7 on its [-1, 1] scale), enough for a near-certain pixel; e^7 is far flatter than uniform.
_LOG_SCALE_MIN, _LOG_SCALE_MAX = -8.0, 7.0


def discretized_logistic_log_prob(
    pixel_values: torch.Tensor, location: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """Elementwise log P(x) of 8-bit pixel values under a discretised logistic (Salimans et al. 2017).

    Each x in [0, 1] is read as the level k = round(255 x); P(k) is the logistic's mass on the bin
    [(k - 1/2) / 255, (k + 1/2) / 255], with the bins of 0 and 255 open to -inf and +inf, so the 256 masses sum to
    exactly 1 and -log P is a true negative log-likelihood in nats. Computed in float32 (at least) with the stable
    identity sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - e^(b - a)), which needs no fallback for tiny bins.
    """
    dtype = torch.promote_types(location.dtype, torch.float32)
    levels = torch.round(pixel_values.to(dtype) * (_NUM_LEVELS - 1))
    inverse_scale = torch.exp(-log_scale.to(dtype).clamp(_LOG_SCALE_MIN, _LOG_SCALE_MAX))
    half_bin = 0.5 / (_NUM_LEVELS - 1)
    centred = levels / (_NUM_LEVELS - 1) - location.to(dtype)
    upper = (centred + half_bin) * inverse_scale
    lower = (centred - half_bin) * inverse_scale
    log_cdf_upper = F.logsigmoid(upper)
    log_survival_lower = F.logsigmoid(-lower)
    log_bin = log_cdf_upper + log_survival_lower + torch.log(-torch.expm1(-2 * half_bin * inverse_scale))
    return torch.where(levels <= 0, log_cdf_upper, torch.where(levels >= _NUM_LEVELS - 1, log_survival_lower, log_bin))


class BernoulliLikelihood:
    """Independent Bernoulli pixels with logits `params` (B, C, H, W): the binary cross-entropy of the reference
    tutorial, for binary or near-binary images such as MNIST."""

    params_per_channel = 1

    def nll(self, params: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """The binary cross-entropy with logits, summed per image, as softplus(l) - x l (exact for any x in [0, 1]).
        Over K samples per image the x l term is a matrix product with the images, not an elementwise pass over K
        copies of them; for one sample per image an elementwise product is faster (a batch of 1 x D products is not).
        Computed in float32 at least, outside autocast, which would run the product in bf16."""
        logits = params.flatten(-3)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        targets = pixel_values.flatten(-3).to(logits.dtype)
        if logits.numel() == targets.numel():
            return F.softplus(logits).sum(-1) - (logits * targets).sum(-1)
        with torch.autocast(logits.device.type, enabled=False):
            return F.softplus(logits).sum(-1) - torch.einsum("...bd,bd->...b", logits, targets)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params)


class DiscretizedLogisticLikelihood:
    """A logistic per pixel integrated over each 8-bit level's bin. `params` (B, 2C, H, W): channels [0, C) the
    location in pixel units, [C, 2C) the log-scale. `nll` is a true probability mass, so
    nll / (C * H * W * ln 2) is in bits per dimension."""

    params_per_channel = 2

    def nll(self, params: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        location, log_scale = params.chunk(2, dim=-3)
        return -discretized_logistic_log_prob(pixel_values, location, log_scale).flatten(-3).sum(-1)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The location clamped to [0, 1]: the most likely level, not a random draw."""
        return params[:, : params.shape[1] // 2].clamp(0.0, 1.0)


LIKELIHOODS = {"bernoulli": BernoulliLikelihood, "discretized_logistic": DiscretizedLogisticLikelihood}


def build_likelihood(name: str) -> BernoulliLikelihood | DiscretizedLogisticLikelihood:
    if name not in LIKELIHOODS:
        raise ValueError(f"Unknown likelihood {name!r}; available likelihoods: {sorted(LIKELIHOODS)}.")
    return LIKELIHOODS[name]()


__all__ = ["LIKELIHOODS", "BernoulliLikelihood", "DiscretizedLogisticLikelihood", "build_likelihood"]
