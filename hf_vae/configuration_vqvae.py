"""Configuration of hf-vae's VQ-VAE (discrete latents on a grid, van den Oord et al. 2017).

Copied next to the weights by `save_pretrained` for `trust_remote_code`, with its sibling `configuration_utils.py`.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from .configuration_utils import HfVaeConfig

LIKELIHOODS = ("bernoulli", "discretized_logistic")
BINARIZATIONS = ("none", "dynamic", "static")
ACTIVATIONS = ("relu", "gelu", "silu", "elu", "leaky_relu", "tanh")
NORMALIZATIONS = ("batch", "group", "none")
CODEBOOK_UPDATES = ("ema", "loss")

PRESETS: dict[str, dict[str, Any]] = {
    # Binarised MNIST to a 7 x 7 grid of codes from 128 entries of 16 dimensions: two stride-2 convolutions
    # (28 -> 14 -> 7) with a residual block at each width, the mirror image to decode; narrow (16, 32 channels) so that
    # an epoch takes about a minute on one CPU core. k-means initialisation and restarts after 20 unused steps keep
    # the codebook in use.
    "mnist-vqvae": {
        "image_size": 28,
        "num_channels": 1,
        "conv_channels": [16, 32],
        "kmeans_init": True,
        "dead_code_steps": 20,
        "num_res_blocks": 1,
        "embedding_dim": 16,
        "codebook_size": 128,
        "activation": "relu",
        "normalization": "none",
        "likelihood": "bernoulli",
        "binarize": "dynamic",
    },
}


class VQVAEConfig(HfVaeConfig):
    r"""Configuration of a [`VQVAEModel`]: a conv encoder to a grid of `embedding_dim`-vectors, each replaced by the
    nearest of `codebook_size` codebook entries, and a conv decoder from the quantised grid.

    Args:
        conv_channels (`list[int]`, defaults to `[32, 64]`): one stride-2 convolution per entry, so the code grid is
            `image_size / 2 ** len(conv_channels)` on a side.
        num_res_blocks (`int`, defaults to 1): residual blocks at each width of the encoder and decoder.
        embedding_dim (`int`, defaults to 16): dimension of the encoder's vectors and the codebook's entries.
        codebook_size (`int`, defaults to 128): number of codebook entries K.
        commitment_cost (`float`, defaults to 0.25): beta, the weight of the commitment loss ||z_e - sg(e)||^2.
        codebook_update (`str`, defaults to `"ema"`): `"ema"` (exponential moving averages of the assigned vectors,
            the codebook is a buffer) or `"loss"` (the codebook is a parameter trained on ||sg(z_e) - e||^2).
        ema_decay (`float`, defaults to 0.99): decay of the moving averages.
        ema_epsilon (`float`, defaults to 1e-5): Laplace smoothing of the cluster sizes.
        dead_code_steps (`int`, defaults to 100): a code no vector was assigned to for this many training steps is
            re-seeded from an encoder output of the current batch; 0 turns restarts off.
        kmeans_init (`bool`, defaults to False): set the codebook by k-means on the first training batch's vectors.
        kmeans_iterations (`int`, defaults to 10): Lloyd iterations of that k-means.
        likelihood, binarize, image_size, num_channels, activation, normalization: as for [`VAEConfig`].
    """

    model_type = "hf_vqvae"
    presets = PRESETS

    image_size: int = 28
    num_channels: int = 1
    conv_channels: list[int] = field(default_factory=lambda: [32, 64])
    num_res_blocks: int = 1
    embedding_dim: int = 16
    codebook_size: int = 128
    commitment_cost: float = 0.25
    codebook_update: str = "ema"
    ema_decay: float = 0.99
    ema_epsilon: float = 1e-5
    dead_code_steps: int = 100
    kmeans_init: bool = False
    kmeans_iterations: int = 10
    activation: str = "relu"
    normalization: str = "none"
    likelihood: str = "bernoulli"
    binarize: str = "none"
    num_classes: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.conv_channels, tuple):
            self.conv_channels = list(self.conv_channels)
        self._validate_fields()
        super().__post_init__(**kwargs)

    def _validate_fields(self) -> None:
        for name, value, allowed in (
            ("likelihood", self.likelihood, LIKELIHOODS),
            ("binarize", self.binarize, BINARIZATIONS),
            ("activation", self.activation, ACTIVATIONS),
            ("normalization", self.normalization, NORMALIZATIONS),
            ("codebook_update", self.codebook_update, CODEBOOK_UPDATES),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")
        channels_ok = isinstance(self.conv_channels, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.conv_channels
        )
        if not channels_ok or not self.conv_channels:
            raise ValueError(
                f"`conv_channels` must be a non-empty list of positive integers, got {self.conv_channels!r}."
            )
        for name in ("image_size", "num_channels", "embedding_dim", "kmeans_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("num_res_blocks", "dead_code_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"`{name}` must be an integer >= 0, got {value!r}.")
        if not isinstance(self.codebook_size, int) or isinstance(self.codebook_size, bool) or self.codebook_size < 2:
            raise ValueError(f"`codebook_size` must be an integer >= 2, got {self.codebook_size!r}.")
        if self.image_size % 2 ** len(self.conv_channels):
            raise ValueError(
                f"`image_size` {self.image_size} must be divisible by 2 ** len(conv_channels) = "
                f"{2 ** len(self.conv_channels)}: each convolution halves the image. Change one of them."
            )
        for name in ("commitment_cost", "ema_epsilon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if isinstance(self.ema_decay, bool) or not isinstance(self.ema_decay, (int, float)):
            raise ValueError(f"`ema_decay` must be a number in [0, 1), got {self.ema_decay!r}.")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay!r}.")
        if not isinstance(self.kmeans_init, bool):
            raise ValueError(f"`kmeans_init` must be true or false, got {self.kmeans_init!r}.")
        if self.num_classes is not None:
            raise ValueError(
                "The VQ-VAE's encoder and decoder are unconditional: leave num_classes unset (the prior over its codes "
                "takes the labels: `hf-vae train-prior`)."
            )

    @property
    def grid_size(self) -> int:
        """Height and width of the code grid."""
        return self.image_size // 2 ** len(self.conv_channels)

    @property
    def latent_dim(self) -> int:
        """The quantised grid flattened: what `encode(x).latent_dist.mode()` gives per image."""
        return self.embedding_dim * self.grid_size**2

    @property
    def num_pixels(self) -> int:
        return self.num_channels * self.image_size * self.image_size

    def describe_architecture(self) -> str:
        return (
            f"conv_channels={self.conv_channels}, num_res_blocks={self.num_res_blocks}, codebook_size="
            f"{self.codebook_size}, embedding_dim={self.embedding_dim}, grid {self.grid_size}x{self.grid_size}, "
            f"image_size={self.image_size}, num_channels={self.num_channels}, likelihood={self.likelihood!r}"
        )




__all__ = ["VQVAEConfig", "PRESETS"]
