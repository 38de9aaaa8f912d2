"""Configuration of hf-vae's Variational Autoencoder.

This file is copied next to the weights by `save_pretrained` so that
`AutoConfig.from_pretrained(..., trust_remote_code=True)` works without hf-vae installed:
it must import nothing from the rest of the package.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import field
from typing import Any

from transformers import PretrainedConfig

ARCHITECTURES = ("mlp",)
LIKELIHOODS = ("bernoulli",)
BINARIZATIONS = ("none", "dynamic", "static")
ACTIVATIONS = ("relu", "gelu", "silu", "elu", "leaky_relu", "tanh")

# Named architectures. "mnist-2d" is the reference tutorial's network, unchanged, so its results can be
# reproduced and beaten in the same architecture; "mnist" is the stronger default for (dynamically
# binarised) MNIST.
PRESETS: dict[str, dict[str, Any]] = {
    "mnist-2d": {
        "architecture": "mlp",
        "image_size": 28,
        "num_channels": 1,
        "latent_dim": 2,
        "hidden_sizes": [256, 128],
        "use_batch_norm": True,
        "dropout": 0.2,
        "activation": "relu",
        "beta": 1.0,
        "likelihood": "bernoulli",
        "binarize": "none",
    },
    "mnist": {
        "architecture": "mlp",
        "image_size": 28,
        "num_channels": 1,
        "latent_dim": 32,
        "hidden_sizes": [512, 256],
        "use_batch_norm": True,
        "dropout": 0.0,
        "activation": "relu",
        "beta": 1.0,
        "likelihood": "bernoulli",
        "binarize": "dynamic",
    },
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


class VAEConfig(PretrainedConfig):
    r"""Configuration of a [`VAEModel`]: architecture, latent space, likelihood and loss weights.

    Every field is validated on construction: a bad value raises `ValueError` naming the field, the value and
    what is allowed, so a typo fails at once rather than after an hour of training.

    Args:
        architecture (`str`, defaults to `"mlp"`): network family. `"mlp"` flattens the image.
        image_size (`int`, defaults to 28): height and width of the (square) images.
        num_channels (`int`, defaults to 1): 1 for greyscale, 3 for RGB.
        latent_dim (`int`, defaults to 2): dimension of the Gaussian latent.
        hidden_sizes (`list[int]`, defaults to `[256, 128]`): encoder layer widths; the decoder mirrors them.
        use_batch_norm (`bool`, defaults to `True`): BatchNorm after each hidden linear layer.
        dropout (`float`, defaults to 0.2): dropout probability after each hidden activation, in [0, 1).
        activation (`str`, defaults to `"relu"`): hidden activation.
        beta (`float`, defaults to 1.0): weight of the KL term, loss = reconstruction + beta * KL (beta-VAE).
        free_bits (`float`, defaults to 0.0): minimum KL in nats per latent dimension used in the training
            loss (Kingma et al. 2016); the reported `kl_loss` is always the true KL.
        likelihood (`str`, defaults to `"bernoulli"`): the decoder's distribution over pixels in [0, 1].
            `"bernoulli"` gives the binary cross-entropy of the reference tutorial.
        num_classes (`int`, *optional*): when set, the model is conditional on a class label in
            `[0, num_classes)`, given to both encoder and decoder as a one-hot vector.
        binarize (`str`, defaults to `"none"`): how the training data was binarised (`"none"`, `"dynamic"`
            or `"static"`), recorded so that evaluation binarises the test set the same way.
    """

    model_type = "hf_vae"

    architecture: str = "mlp"
    image_size: int = 28
    num_channels: int = 1
    latent_dim: int = 2
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 128])
    use_batch_norm: bool = True
    dropout: float = 0.2
    activation: str = "relu"
    beta: float = 1.0
    free_bits: float = 0.0
    likelihood: str = "bernoulli"
    num_classes: int | None = None
    binarize: str = "none"

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.hidden_sizes, tuple):
            self.hidden_sizes = list(self.hidden_sizes)
        self._validate_fields()
        super().__post_init__(**kwargs)

    def _validate_fields(self) -> None:
        _one_of("architecture", self.architecture, ARCHITECTURES)
        _one_of("likelihood", self.likelihood, LIKELIHOODS)
        _one_of("binarize", self.binarize, BINARIZATIONS)
        _one_of("activation", self.activation, ACTIVATIONS)
        _positive_int("image_size", self.image_size)
        _positive_int("num_channels", self.num_channels)
        _positive_int("latent_dim", self.latent_dim)
        if (
            not isinstance(self.hidden_sizes, list)
            or not self.hidden_sizes
            or not all(_is_int(size) and size > 0 for size in self.hidden_sizes)
        ):
            raise ValueError(
                f"`hidden_sizes` must be a non-empty list of positive integers, got {self.hidden_sizes!r}."
            )
        if not isinstance(self.use_batch_norm, bool):
            raise ValueError(f"`use_batch_norm` must be true or false, got {self.use_batch_norm!r}.")
        if not _is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be a probability in [0, 1), got {self.dropout!r}.")
        if not _is_number(self.beta) or self.beta < 0:
            raise ValueError(f"`beta` must be a finite number >= 0, got {self.beta!r}.")
        if not _is_number(self.free_bits) or self.free_bits < 0:
            raise ValueError(
                f"`free_bits` must be a finite number >= 0 (nats per latent unit), got {self.free_bits!r}."
            )
        if self.num_classes is not None and (not _is_int(self.num_classes) or self.num_classes < 2):
            raise ValueError(
                f"`num_classes` must be None (unconditional) or an integer >= 2, got {self.num_classes!r}."
            )

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """As in transformers, but a folder or repo without `config.json` is an error: transformers would fall back
        to the default config and could load the weights into a network that merely has the same shapes (wrong
        beta, binarisation, ...)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            raise OSError(
                f"{pretrained_model_name_or_path!s} has no config.json, so the VAE's architecture is unknown. Load a "
                "folder written by `save_pretrained` (it writes config.json next to model.safetensors), or pass the "
                "config explicitly: `VAEModel.from_pretrained(path, config=VAEConfig(...))`."
            )
        return config_dict, kwargs

    @property
    def num_pixels(self) -> int:
        """Number of values in one image, C * H * W."""
        return self.num_channels * self.image_size * self.image_size

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> VAEConfig:
        """Build a config from a named preset (see `PRESETS`), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(PRESETS)}.")
        values = copy.deepcopy(PRESETS[name])
        values.update(overrides)
        return cls(**values)


__all__ = ["VAEConfig", "PRESETS"]
