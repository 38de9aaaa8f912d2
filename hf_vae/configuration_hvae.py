"""Configuration of hf-vae's hierarchical VAE (several stochastic layers, top-down inference).

Copied next to the weights by `save_pretrained` for `trust_remote_code`, with its sibling `configuration_utils.py`.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from .configuration_utils import HfVaeConfig, check_positive_int_list

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "discretized_logistic")
BINARIZATIONS = ("none", "dynamic", "static")
ACTIVATIONS = ("relu", "gelu", "silu", "elu", "leaky_relu", "tanh")
NORMALIZATIONS = ("batch", "group", "none")
PRIORS = ("standard_normal", "vamp")

PRESETS: dict[str, dict[str, Any]] = {
    # Two stochastic layers on binarised MNIST: z1 (64) under z2 (32), a 784-512-256 bottom-up MLP (the STACK_NOTES
    # calibration model), SiLU, no normalisation.
    "mnist-hvae": {
        "image_size": 28,
        "num_channels": 1,
        "latent_dims": [64, 32],
        "hidden_sizes": [512, 256],
        "activation": "silu",
        "normalization": "none",
        "likelihood": "bernoulli",
        "binarize": "dynamic",
    },
    # The conv variant for 32x32 colour photographs (CIFAR-10 and the like): a conv body [32, 64, 128] with a residual
    # block per stage down to 4x4, a 512-wide top, z1 (64) under z2 (32), and the discretised logistic likelihood so
    # that bits per dimension compare with the literature (and with the Gaussian VAE's rgb32-conv).
    "rgb32-hvae-conv": {
        "architecture": "conv",
        "image_size": 32,
        "num_channels": 3,
        "latent_dims": [64, 32],
        "conv_channels": [32, 64, 128],
        "num_res_blocks": 1,
        "hidden_sizes": [512],
        "activation": "silu",
        "normalization": "batch",
        "likelihood": "discretized_logistic",
        "binarize": "none",
    },
}


class HVAEConfig(HfVaeConfig):
    r"""Configuration of an [`HVAEModel`]: a hierarchy of Gaussian latents z_1 (bottom) ... z_L (top) with top-down
    inference (Ladder VAE, Sønderby et al. 2016; NVAE, Vahdat & Kautz 2020).

    Generation: z_L ~ N(0, I), then z_l ~ p(z_l | z_{l+1}) for l = L-1..1, then x ~ p(x | z_1). Inference shares the
    top-down path: a bottom-up network reads x once, and q(z_l | x, z_{l+1}) is computed from its features at level l
    and the top-down features of z_{l+1}, so each layer's posterior knows what the layers above have chosen.

    Args:
        architecture (`str`, defaults to `"mlp"`): what faces the pixels. `"mlp"` flattens the image into the bottom-up
            MLP and decodes with an MLP; `"conv"` reads it with strided convolutions (`conv_channels`,
            `num_res_blocks`, as for [`VAEConfig`]) before the bottom-up MLP, and decodes z_1 with transposed
            convolutions. The stochastic layers are vectors in both (see [`HVAEModel`] for why).
        latent_dims (`list[int]`, defaults to `[64, 32]`): latent size of each stochastic layer, bottom first.
        hidden_sizes (`list[int]`, defaults to `[512, 256]`): widths of the bottom-up MLP from the pixels (`"mlp"`) or
            from the flattened conv features (`"conv"`) to the first layer's features; the MLP decoder mirrors them.
            Every deeper level and the top-down blocks use the last width.
        conv_channels (`list[int]`, defaults to `[32, 64]`): `"conv"` only: channels of the stride-2 stages, each
            halving the image (`image_size` must be divisible by `2 ** len(conv_channels)`); the decoder mirrors them.
        num_res_blocks (`int`, defaults to 0): `"conv"` only: residual blocks after each stage, as for [`VAEConfig`].
        activation, normalization: the hidden layers' activation and normalisation (`"batch"`, `"group"`, `"none"`).
        likelihood, binarize, image_size, num_channels: as for [`VAEConfig`].
        beta (`float`, defaults to 1.0): weight of the KL terms.
        free_bits (`float`, defaults to 0.0): minimum KL in nats per latent unit of each layer in the ELBO loss.
        num_importance_samples (`int`, defaults to 1): K > 1 trains on the IWAE bound over the joint latents.
        prior (`str`, defaults to `"standard_normal"`): the top layer's prior p(z_L). `"vamp"` is the VampPrior
            (Tomczak & Welling 2018; their hierarchical VampPrior VAE reaches 83.19 nats on binarised MNIST): the
            mixture of the top posteriors q(z_L | u_k) of `num_pseudo_inputs` learned pseudo-inputs u_k. The top
            layer's KL is then estimated by Monte Carlo, so it does not take `free_bits`.
        num_pseudo_inputs (`int`, defaults to 500): the VampPrior's pseudo-inputs.
    """

    model_type = "hf_hvae"
    presets = PRESETS

    architecture: str = "mlp"
    image_size: int = 28
    num_channels: int = 1
    latent_dims: list[int] = field(default_factory=lambda: [64, 32])
    hidden_sizes: list[int] = field(default_factory=lambda: [512, 256])
    activation: str = "silu"
    normalization: str = "none"
    likelihood: str = "bernoulli"
    binarize: str = "none"
    beta: float = 1.0
    free_bits: float = 0.0
    num_importance_samples: int = 1
    num_classes: int | None = None
    conv_channels: list[int] = field(default_factory=lambda: [32, 64])
    num_res_blocks: int = 0
    prior: str = "standard_normal"
    num_pseudo_inputs: int = 500

    def __post_init__(self, **kwargs: Any) -> None:
        for name in ("latent_dims", "hidden_sizes", "conv_channels"):
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        self._validate_fields()
        super().__post_init__(**kwargs)

    def _validate_fields(self) -> None:
        for name, value, allowed in (
            ("architecture", self.architecture, ARCHITECTURES),
            ("likelihood", self.likelihood, LIKELIHOODS),
            ("binarize", self.binarize, BINARIZATIONS),
            ("activation", self.activation, ACTIVATIONS),
            ("normalization", self.normalization, NORMALIZATIONS),
            ("prior", self.prior, PRIORS),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")
        check_positive_int_list("latent_dims", self.latent_dims)
        check_positive_int_list("hidden_sizes", self.hidden_sizes)
        check_positive_int_list("conv_channels", self.conv_channels)
        if not isinstance(self.num_res_blocks, int) or isinstance(self.num_res_blocks, bool) or self.num_res_blocks < 0:
            raise ValueError(f"`num_res_blocks` must be an integer >= 0, got {self.num_res_blocks!r}.")
        if len(self.latent_dims) < 2:
            raise ValueError(
                f"`latent_dims` needs at least two stochastic layers for a hierarchical VAE, got {self.latent_dims}; "
                "for one layer use the Gaussian VAE (VAEConfig)."
            )
        for name in ("image_size", "num_channels", "num_importance_samples", "num_pseudo_inputs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("beta", "free_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
        if self.architecture == "conv" and self.image_size % 2 ** len(self.conv_channels):
            stages = len(self.conv_channels)
            raise ValueError(
                f"`image_size` {self.image_size} must be divisible by 2 ** len(conv_channels) = {2**stages} for the "
                f"conv architecture (one stride-2 stage per entry of `conv_channels` {self.conv_channels}): use fewer "
                "stages or another image size (--image_size N resizes the data)."
            )
        if self.num_importance_samples > 1 and self.free_bits > 0:
            raise ValueError("`free_bits` applies to the ELBO only: set free_bits to 0 or num_importance_samples to 1.")
        if self.prior != "standard_normal" and self.free_bits > 0:
            raise ValueError(
                f"`free_bits` needs every layer's KL in closed form, but the {self.prior!r} prior's is estimated: set "
                "free_bits to 0 or prior to 'standard_normal'."
            )
        if self.num_classes is not None:
            raise ValueError("The hierarchical VAE is unconditional for now: leave num_classes unset.")

    @property
    def latent_dim(self) -> int:
        """All the layers' latents together (their concatenation, bottom first)."""
        return sum(self.latent_dims)

    @property
    def num_pixels(self) -> int:
        return self.num_channels * self.image_size * self.image_size

    def describe_architecture(self) -> str:
        conv = (
            f"conv_channels={self.conv_channels}, num_res_blocks={self.num_res_blocks}, "
            if self.architecture == "conv"
            else ""
        )
        return (
            f"architecture={self.architecture!r}, latent_dims={self.latent_dims}, {conv}"
            f"hidden_sizes={self.hidden_sizes}, image_size={self.image_size}, num_channels={self.num_channels}, "
            f"normalization={self.normalization!r}, likelihood={self.likelihood!r}, prior={self.prior!r}"
        )




__all__ = ["HVAEConfig", "PRESETS", "PRIORS"]
