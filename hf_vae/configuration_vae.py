"""Configuration of hf-vae's Variational Autoencoder.

This file is copied next to the weights by `save_pretrained` so that
`AutoConfig.from_pretrained(..., trust_remote_code=True)` works without hf-vae installed: it imports only its
sibling `configuration_utils.py`, which is copied with it.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from .configuration_utils import (
    HfVaeConfig,
    check_one_of,
    check_positive_int,
    check_positive_int_list,
    is_int,
    is_number,
)

ARCHITECTURES = ("mlp", "conv")
LIKELIHOODS = ("bernoulli", "discretized_logistic")
NORMALIZATIONS = ("batch", "group", "none")
BINARIZATIONS = ("none", "dynamic", "static")
ACTIVATIONS = ("relu", "gelu", "silu", "elu", "leaky_relu", "tanh")
PRIORS = ("standard_normal", "vamp", "mog")

# Named architectures. "mnist-2d" is the reference tutorial's network, unchanged, so its results can be
# reproduced and beaten in the same architecture; "mnist" is the stronger default for (dynamically
# binarised) MNIST; "mnist-conv" its convolutional counterpart (add residual blocks with num_res_blocks on a GPU: they
# cost most of the time on a CPU); "rgb32-conv" a starting point for 32x32 colour photographs (CIFAR-10 and the
# like), with a discretised logistic likelihood so that bits per dimension are meaningful.
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
    "mnist-conv": {
        "architecture": "conv",
        "image_size": 28,
        "num_channels": 1,
        "latent_dim": 32,
        "conv_channels": [32, 64],
        "num_res_blocks": 0,
        "use_batch_norm": True,
        "dropout": 0.0,
        "activation": "relu",
        "beta": 1.0,
        "likelihood": "bernoulli",
        "binarize": "dynamic",
    },
    "rgb32-conv": {
        "architecture": "conv",
        "image_size": 32,
        "num_channels": 3,
        "latent_dim": 64,
        "conv_channels": [32, 64, 128],
        "num_res_blocks": 1,
        "use_batch_norm": True,
        "dropout": 0.0,
        "activation": "relu",
        "beta": 1.0,
        "likelihood": "discretized_logistic",
        "binarize": "none",
    },
}


class VAEConfig(HfVaeConfig):
    r"""Configuration of a [`VAEModel`]: architecture, latent space, likelihood and loss weights.

    Every field is validated on construction: a bad value raises `ValueError` naming the field, the value and
    what is allowed, so a typo fails at once rather than after an hour of training.

    Args:
        architecture (`str`, defaults to `"mlp"`): network family. `"mlp"` flattens the image; `"conv"` is a
            strided-convolution encoder and a transposed-convolution decoder (see `conv_channels`).
        image_size (`int`, defaults to 28): height and width of the (square) images.
        num_channels (`int`, defaults to 1): 1 for greyscale, 3 for RGB.
        latent_dim (`int`, defaults to 2): dimension of the Gaussian latent.
        hidden_sizes (`list[int]`, defaults to `[256, 128]`): `"mlp"` only: encoder layer widths; the decoder
            mirrors them.
        conv_channels (`list[int]`, defaults to `[32, 64]`): `"conv"` only: output channels of the encoder's
            stride-2 convolutions, one per stage, each halving the image; the decoder mirrors them with stride-2
            transposed convolutions. `image_size` must be divisible by `2 ** len(conv_channels)` (e.g. 28 with
            two stages gives a 7x7 smallest feature map, 64 with three an 8x8 one).
        num_res_blocks (`int`, defaults to 0): `"conv"` only: residual blocks (two 3x3 convolutions) after each
            encoder stage, and after the decoder's first linear layer and each of its upsampling stages but the
            last (full-resolution) one.
        use_batch_norm (`bool`, defaults to `True`): BatchNorm after each hidden layer (linear or convolution),
            unless `normalization` says otherwise.
        normalization (`str`, *optional*): `"batch"`, `"group"` (GroupNorm with up to 32 groups, independent of
            the batch) or `"none"`; when set it overrides `use_batch_norm`. Left unset, `use_batch_norm` decides,
            so configs saved before this field existed load unchanged.
        dropout (`float`, defaults to 0.2): dropout probability in [0, 1), after each hidden activation of the
            MLP and inside each residual block of the conv network.
        activation (`str`, defaults to `"relu"`): hidden activation.
        beta (`float`, defaults to 1.0): weight of the KL term, loss = reconstruction + beta * KL (beta-VAE).
        free_bits (`float`, defaults to 0.0): minimum KL in nats per latent dimension used in the training
            loss (Kingma et al. 2016); the reported `kl_loss` is always the true KL.
        num_importance_samples (`int`, defaults to 1): K posterior samples per image in the loss. 1 is the ELBO;
            K > 1 trains on the importance-weighted bound (IWAE, Burda et al. 2015), tighter than the ELBO, which
            buys a better test log-likelihood for K decoder passes per image. `loss` is then minus that bound;
            `reconstruction_loss` and `kl_loss` stay the ELBO's terms (averaged over the K samples).
        likelihood (`str`, defaults to `"bernoulli"`): the decoder's distribution over pixels in [0, 1].
            `"bernoulli"` gives the binary cross-entropy of the reference tutorial, for binary or near-binary
            images (MNIST). `"discretized_logistic"` is for greyscale and colour photographs: each pixel is one
            of 256 levels k/255, with a logistic of per-pixel location and scale (both predicted by the decoder)
            integrated over each level's bin, the two edge bins open (Salimans et al. 2017, PixelCNN++). Its
            negative log-likelihood is a true probability mass over 8-bit images, so nats / (C * H * W * ln 2)
            are bits per dimension comparable with the literature.
        num_classes (`int`, *optional*): when set, the model is conditional on a class label in
            `[0, num_classes)`, given to encoder and decoder as a one-hot vector: the MLP concatenates it to its
            input and to the latent; the conv encoder adds a linear projection of it to the output of its first
            convolution (a per-class bias for each channel, the same as constant one-hot input planes without
            building them), and the conv decoder concatenates it to the latent before its first linear layer.
        binarize (`str`, defaults to `"none"`): how the training data was binarised (`"none"`, `"dynamic"`
            or `"static"`), recorded so that evaluation binarises the test set the same way.
        prior (`str`, defaults to `"standard_normal"`): the prior p(z) (see `priors.py`): `"standard_normal"` is
            N(0, I); `"vamp"` is the VampPrior (Tomczak & Welling 2018), a mixture of the posteriors of
            `num_pseudo_inputs` learned pseudo-inputs, for unconditional models; `"mog"` is a learned mixture of
            `num_pseudo_inputs` diagonal Gaussians with learned weights.
        num_pseudo_inputs (`int`, defaults to 500): the number of mixture components of the `"vamp"` and `"mog"`
            priors (the VampPrior's pseudo-inputs).
    """

    model_type = "hf_vae"
    presets = PRESETS

    architecture: str = "mlp"
    image_size: int = 28
    num_channels: int = 1
    latent_dim: int = 2
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 128])
    conv_channels: list[int] = field(default_factory=lambda: [32, 64])
    num_res_blocks: int = 0
    use_batch_norm: bool = True
    normalization: str | None = None
    dropout: float = 0.2
    activation: str = "relu"
    beta: float = 1.0
    free_bits: float = 0.0
    num_importance_samples: int = 1
    likelihood: str = "bernoulli"
    num_classes: int | None = None
    binarize: str = "none"
    prior: str = "standard_normal"
    num_pseudo_inputs: int = 500

    def __post_init__(self, **kwargs: Any) -> None:
        if isinstance(self.hidden_sizes, tuple):
            self.hidden_sizes = list(self.hidden_sizes)
        if isinstance(self.conv_channels, tuple):
            self.conv_channels = list(self.conv_channels)
        self._validate_fields()
        super().__post_init__(**kwargs)

    def _validate_fields(self) -> None:
        check_one_of("architecture", self.architecture, ARCHITECTURES)
        check_one_of("likelihood", self.likelihood, LIKELIHOODS)
        check_one_of("binarize", self.binarize, BINARIZATIONS)
        check_one_of("activation", self.activation, ACTIVATIONS)
        check_one_of("prior", self.prior, PRIORS)
        check_positive_int("image_size", self.image_size)
        check_positive_int("num_channels", self.num_channels)
        check_positive_int("latent_dim", self.latent_dim)
        check_positive_int_list("hidden_sizes", self.hidden_sizes)
        check_positive_int_list("conv_channels", self.conv_channels)
        if not is_int(self.num_res_blocks) or self.num_res_blocks < 0:
            raise ValueError(f"`num_res_blocks` must be an integer >= 0, got {self.num_res_blocks!r}.")
        if not isinstance(self.use_batch_norm, bool):
            raise ValueError(f"`use_batch_norm` must be true or false, got {self.use_batch_norm!r}.")
        if self.normalization is not None:
            check_one_of("normalization", self.normalization, NORMALIZATIONS)
        if self.architecture == "conv":
            self._validate_conv_geometry()
        if not is_number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be a probability in [0, 1), got {self.dropout!r}.")
        if not is_number(self.beta) or self.beta < 0:
            raise ValueError(f"`beta` must be a finite number >= 0, got {self.beta!r}.")
        if not is_number(self.free_bits) or self.free_bits < 0:
            raise ValueError(
                f"`free_bits` must be a finite number >= 0 (nats per latent unit), got {self.free_bits!r}."
            )
        check_positive_int("num_importance_samples", self.num_importance_samples)
        if self.num_importance_samples > 1 and self.free_bits > 0:
            raise ValueError(
                f"`free_bits` ({self.free_bits!r}) applies to the ELBO only, but `num_importance_samples` is "
                f"{self.num_importance_samples}: set free_bits to 0 or num_importance_samples to 1."
            )
        check_positive_int("num_pseudo_inputs", self.num_pseudo_inputs)
        if self.prior != "standard_normal" and self.free_bits > 0:
            raise ValueError(
                f"`free_bits` ({self.free_bits!r}) needs the KL per latent unit in closed form, which only the "
                f"standard_normal prior has; the {self.prior!r} prior's KL is estimated. Set free_bits to 0."
            )
        if self.prior == "vamp" and self.num_classes is not None:
            raise ValueError(
                "The VampPrior mixes the encoder's posteriors at unlabelled pseudo-inputs, so it does not apply to a "
                f"conditional model (num_classes={self.num_classes}): use prior='standard_normal' or drop num_classes."
            )
        if self.num_classes is not None and (not is_int(self.num_classes) or self.num_classes < 2):
            raise ValueError(
                f"`num_classes` must be None (unconditional) or an integer >= 2, got {self.num_classes!r}."
            )

    def _validate_conv_geometry(self) -> None:
        """Each stage halves the image exactly, so the decoder's transposed convolutions give back its size."""
        stages = len(self.conv_channels)
        if self.image_size % 2**stages:
            fitting = [size for size in (28, 32, 64) if size % 2**stages == 0]
            fixes = f"an image_size divisible by {2**stages}" + (f" (e.g. {fitting})" if fitting else "")
            max_stages = (self.image_size & -self.image_size).bit_length() - 1  # times image_size halves exactly
            if max_stages:
                fixes += f", or at most {max_stages} {'entry' if max_stages == 1 else 'entries'} in conv_channels"
            raise ValueError(
                f"`image_size` {self.image_size!r} must be divisible by 2 ** len(conv_channels) = {2**stages} for "
                f"the conv architecture (one stride-2 stage per entry of `conv_channels` {self.conv_channels}). "
                f"Use {fixes}; --image_size N resizes and centre-crops a dataset to N x N."
            )

    def describe_architecture(self) -> str:
        """One line naming the fields that decide the weights' shapes, for loading errors."""
        shape = (
            f"conv_channels={self.conv_channels}, num_res_blocks={self.num_res_blocks}"
            if self.architecture == "conv"
            else f"hidden_sizes={self.hidden_sizes}"
        )
        return (
            f"architecture={self.architecture!r}, latent_dim={self.latent_dim}, {shape}, "
            f"image_size={self.image_size}, num_channels={self.num_channels}, num_classes={self.num_classes}, "
            f"normalization={self.resolved_normalization!r}, likelihood={self.likelihood!r}, prior={self.prior!r}"
        )

    @property
    def resolved_normalization(self) -> str:
        """The normalisation layers the network uses: `normalization` when set, else what `use_batch_norm` says."""
        if self.normalization is not None:
            return self.normalization
        return "batch" if self.use_batch_norm else "none"


    @property
    def num_pixels(self) -> int:
        """Number of values in one image, C * H * W."""
        return self.num_channels * self.image_size * self.image_size



__all__ = ["VAEConfig", "PRESETS", "PRIORS"]
