"""hf-vae's Variational Autoencoder as a `transformers.PreTrainedModel`.

encoder -> Gaussian posterior q(z|x) = N(mean, exp(logvar)) -> reparameterised z -> decoder -> p(x|z).

Two network families (`config.architecture`): an MLP over flattened pixels, and a convolutional network (stride-2
convolutions down, stride-2 transposed convolutions up, optional residual blocks). Two pixel likelihoods
(`config.likelihood`): Bernoulli, and the discretised logistic of PixelCNN++ for 8-bit photographs.

This file is copied next to the weights by `save_pretrained`, so that `AutoModel.from_pretrained(...,
trust_remote_code=True)` works for people who never installed hf-vae: it imports only torch, transformers and
its sibling `configuration_vae`.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_vae import VAEConfig

_NUM_LEVELS = 256  # 8-bit pixels: the discretised logistic puts its mass on the levels k / 255
# Bounds on the discretised logistic's log-scale (in [0, 1] pixel units): e^-8 is about a tenth of a level's width
# (PixelCNN++'s -7 on its [-1, 1] scale), enough for a near-certain pixel; e^7 is far flatter than uniform.
_LOG_SCALE_MIN, _LOG_SCALE_MAX = -8.0, 7.0

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
}

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _in_eval_mode(method: _Method) -> _Method:
    """Run a model method with every module in eval mode, then restore each module's own mode: sampling,
    reconstructions and likelihood estimates must neither depend on dropout nor update BatchNorm's running
    statistics, and must work for a single image (BatchNorm in training mode rejects a batch of one)."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            return method(self, *args, **kwargs)
        finally:
            for module, training in modes:
                module.training = training

    return wrapper


@dataclass
class VAEOutput(ModelOutput):
    """Output of [`VAEModel.forward`]. Losses are in nats per image (sum over pixels, mean over the batch).

    Args:
        loss: reconstruction_loss + beta * KL (with free bits and the KL warm-up weight, when used).
        reconstruction_loss: negative log-likelihood of the input under the decoder, -E_q[log p(x|z)].
        kl_loss: KL(q(z|x) || N(0, I)), the true value (free bits do not change it).
        logits: the decoder's raw output, the parameters of p(x|z); pass it to `reconstruction_nll` and
            `logits_to_images`. For `likelihood="bernoulli"`: Bernoulli logits, (B, C, H, W). For
            `likelihood="discretized_logistic"`: (B, 2C, H, W), channels [0, C) the logistic's location in pixel
            units (the images are it clamped to [0, 1]) and channels [C, 2C) its log-scale (clamped to
            [-8, 7] where used).
        mean, logvar: the posterior's parameters, (B, latent_dim).
        latents: the z given to the decoder, (B, latent_dim).
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    kl_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    mean: torch.FloatTensor | None = None
    logvar: torch.FloatTensor | None = None
    latents: torch.FloatTensor | None = None


@dataclass
class VAEEncoderOutput(ModelOutput):
    """Output of [`VAEModel.encode`]: the Gaussian posterior q(z|x), each (B, latent_dim)."""

    mean: torch.FloatTensor | None = None
    logvar: torch.FloatTensor | None = None


@dataclass
class VAEDecoderOutput(ModelOutput):
    """Output of [`VAEModel.decode`]: decoder logits (see [`VAEOutput`] for their layout per likelihood) and the
    images they mean, (B, C, H, W) in [0, 1]: Bernoulli pixel probabilities, or the discretised logistic's
    location."""

    logits: torch.FloatTensor | None = None
    images: torch.FloatTensor | None = None


def _output_channels(config: VAEConfig) -> int:
    """Decoder output channels: one parameter per pixel value for Bernoulli, two (location, log-scale) for the
    discretised logistic."""
    return config.num_channels * (2 if config.likelihood == "discretized_logistic" else 1)


def _normalization(config: VAEConfig, features: int, spatial: bool) -> nn.Module | None:
    kind = config.resolved_normalization
    if kind == "batch":
        return nn.BatchNorm2d(features) if spatial else nn.BatchNorm1d(features)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, features), features)
    return None


class VAEDropout(nn.Dropout):
    """`nn.Dropout` with the mask drawn as `rand >= p` instead of `bernoulli_`: the same distribution, but
    vectorised on CPU, where `bernoulli_` alone was about 14% of a small model's training step."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return hidden
        keep = (torch.rand_like(hidden) >= self.p).to(hidden.dtype).mul_(1.0 / (1.0 - self.p))
        return hidden * keep


def _dropout(config: VAEConfig) -> nn.Module:
    # An Identity stands in for a zero dropout so that weight names do not depend on it: a checkpoint trained with
    # dropout loads with `dropout=0.0` (and the reverse).
    return VAEDropout(config.dropout) if config.dropout > 0 else nn.Identity()


def _mlp_block(in_features: int, out_features: int, config: VAEConfig) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    norm = _normalization(config, out_features, spatial=False)
    if norm is not None:
        layers.append(norm)
    layers.append(_ACTIVATIONS[config.activation]())
    layers.append(_dropout(config))
    return layers


class VAEMLPEncoder(nn.Module):
    """Flattened image (and one-hot label) -> hidden layers -> posterior mean and log-variance."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        in_features = config.num_pixels + (config.num_classes or 0)
        layers: list[nn.Module] = []
        for width in config.hidden_sizes:
            layers += _mlp_block(in_features, width, config)
            in_features = width
        self.layers = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(in_features, config.latent_dim)
        self.fc_logvar = nn.Linear(in_features, config.latent_dim)

    def forward(self, pixel_values: torch.Tensor, condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = pixel_values.flatten(1)
        if condition is not None:
            hidden = torch.cat([hidden, condition], dim=1)
        hidden = self.layers(hidden)
        return self.fc_mu(hidden), self.fc_logvar(hidden)


class VAEMLPDecoder(nn.Module):
    """Latent (and one-hot label) -> the encoder's hidden layers in reverse -> the likelihood's parameters for
    every pixel."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.output_shape = (_output_channels(config), config.image_size, config.image_size)
        in_features = config.latent_dim + (config.num_classes or 0)
        layers: list[nn.Module] = []
        for width in reversed(config.hidden_sizes):
            layers += _mlp_block(in_features, width, config)
            in_features = width
        layers.append(nn.Linear(in_features, math.prod(self.output_shape)))
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if condition is not None:
            latents = torch.cat([latents, condition], dim=1)
        return self.layers(latents).view(-1, *self.output_shape)


def _conv_norm_activation(config: VAEConfig, channels: int) -> list[nn.Module]:
    # An Identity stands in for no normalisation so that layer indices (weight names) stay the same.
    return [_normalization(config, channels, spatial=True) or nn.Identity(), _ACTIVATIONS[config.activation]()]


class VAEResidualBlock(nn.Module):
    """Two 3x3 convolutions at constant width and resolution with a skip connection:
    h -> act(h + norm(conv(dropout(act(norm(conv(h))))))) (He et al. 2016)."""

    def __init__(self, channels: int, config: VAEConfig):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = _normalization(config, channels, spatial=True) or nn.Identity()
        self.activation = _ACTIVATIONS[config.activation]()
        self.dropout = _dropout(config)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = _normalization(config, channels, spatial=True) or nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        branch = self.dropout(self.activation(self.norm1(self.conv1(hidden))))
        return self.activation(hidden + self.norm2(self.conv2(branch)))


def _residual_blocks(channels: int, config: VAEConfig) -> list[nn.Module]:
    return [VAEResidualBlock(channels, config) for _ in range(config.num_res_blocks)]


def _smallest_feature_map(config: VAEConfig) -> tuple[int, int, int]:
    size = config.image_size // 2 ** len(config.conv_channels)
    return (config.conv_channels[-1], size, size)


class VAEConvEncoder(nn.Module):
    """Image -> one stride-2 4x4 convolution per entry of `conv_channels` (each halving the image, followed by
    normalisation, activation and `num_res_blocks` residual blocks) -> flatten -> linear posterior mean and
    log-variance.

    A conditional encoder adds a linear projection of the one-hot label to the first convolution's output: a
    learned per-class bias for each channel, which equals feeding the label as constant one-hot input planes
    (but for the zero padding at the border) without building them.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.downsample = nn.ModuleList()
        self.blocks = nn.ModuleList()
        in_channels = config.num_channels
        for channels in config.conv_channels:
            self.downsample.append(nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1))
            self.blocks.append(
                nn.Sequential(*_conv_norm_activation(config, channels), *_residual_blocks(channels, config))
            )
            in_channels = channels
        self.label_projection = (
            nn.Linear(config.num_classes, config.conv_channels[0], bias=False) if config.num_classes else None
        )
        features = math.prod(_smallest_feature_map(config))
        self.fc_mu = nn.Linear(features, config.latent_dim)
        self.fc_logvar = nn.Linear(features, config.latent_dim)

    def forward(self, pixel_values: torch.Tensor, condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = pixel_values
        for index, (downsample, block) in enumerate(zip(self.downsample, self.blocks, strict=True)):
            hidden = downsample(hidden)
            if index == 0 and condition is not None:
                hidden = hidden + self.label_projection(condition)[:, :, None, None]
            hidden = block(hidden)
        hidden = hidden.flatten(1)
        return self.fc_mu(hidden), self.fc_logvar(hidden)


class VAEConvDecoder(nn.Module):
    """Latent (and one-hot label, concatenated) -> linear to the encoder's smallest feature map -> the encoder's
    stages in reverse, each a stride-2 4x4 transposed convolution doubling the image (with residual blocks at
    every resolution the encoder has them) -> 3x3 convolution to the likelihood's parameters for every pixel."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.start_shape = _smallest_feature_map(config)
        self.fc = nn.Linear(config.latent_dim + (config.num_classes or 0), math.prod(self.start_shape))
        deepest = config.conv_channels[-1]
        self.input_block = nn.Sequential(*_conv_norm_activation(config, deepest), *_residual_blocks(deepest, config))
        widths = [*reversed(config.conv_channels), config.conv_channels[0]]
        self.upsample = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for stage, (in_channels, channels) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            last = stage == len(config.conv_channels) - 1
            self.upsample.append(nn.ConvTranspose2d(in_channels, channels, kernel_size=4, stride=2, padding=1))
            residual = [] if last else _residual_blocks(channels, config)
            self.blocks.append(nn.Sequential(*_conv_norm_activation(config, channels), *residual))
        self.conv_out = nn.Conv2d(config.conv_channels[0], _output_channels(config), kernel_size=3, padding=1)

    def forward(self, latents: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if condition is not None:
            latents = torch.cat([latents, condition], dim=1)
        hidden = self.input_block(self.fc(latents).view(-1, *self.start_shape))
        for upsample, block in zip(self.upsample, self.blocks, strict=True):
            hidden = block(upsample(hidden))
        return self.conv_out(hidden)


_ENCODERS = {"mlp": VAEMLPEncoder, "conv": VAEConvEncoder}
_DECODERS = {"mlp": VAEMLPDecoder, "conv": VAEConvDecoder}


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


class VAEPreTrainedModel(PreTrainedModel):
    config_class = VAEConfig
    config: VAEConfig
    base_model_prefix = "vae"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's own default initialisation (not transformers' normal(0, 0.02)), so that a fresh model starts
        exactly like the reference tutorial's plain-PyTorch network."""
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)):
            if getattr(module, "weight", None) is not None:
                init.ones_(module.weight)
                init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any, **kwargs: Any):
        """transformers' `from_pretrained`, made strict: weights missing from the checkpoint, unexpected ones or
        ones of the wrong shape raise a `RuntimeError` that lists them (transformers would re-initialise them at
        random and only log a report), and a corrupt or truncated safetensors file raises an `OSError` that says
        so. Pass `ignore_mismatched_sizes=True` to get transformers' lenient behaviour back."""
        if kwargs.get("ignore_mismatched_sizes"):
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        kwargs["ignore_mismatched_sizes"] = True  # report mismatches below instead of transformers' opaque error
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:
            raise OSError(
                f"The weights of {pretrained_model_name_or_path!s} (model.safetensors) are not a valid safetensors "
                f"file, probably corrupt or truncated ({error}). Save the model again with `save_pretrained`, or "
                "download it again with `force_download=True`."
            ) from error
        problems = [
            f"{key}: checkpoint {tuple(checkpoint_shape)}, model {tuple(model_shape)}"
            for key, checkpoint_shape, model_shape in sorted(loading_info["mismatched_keys"])
        ]
        problems += [f"{key}: missing from the checkpoint" for key in sorted(loading_info["missing_keys"])]
        problems += [f"{key}: in the checkpoint, not in the model" for key in sorted(loading_info["unexpected_keys"])]
        if problems:
            raise RuntimeError(
                f"The weights in {pretrained_model_name_or_path!s} do not fit the architecture its config describes "
                f"({_describe_architecture(model.config)}):\n  "
                + "\n  ".join(problems)
                + "\nWas config.json edited, or a config override passed to `from_pretrained`? Load with the config "
                "the weights were saved with."
            )
        return (model, loading_info) if output_loading_info else model


def _describe_architecture(config: VAEConfig) -> str:
    shape = (
        f"conv_channels={config.conv_channels}, num_res_blocks={config.num_res_blocks}"
        if config.architecture == "conv"
        else f"hidden_sizes={config.hidden_sizes}"
    )
    return (
        f"architecture={config.architecture!r}, latent_dim={config.latent_dim}, {shape}, "
        f"image_size={config.image_size}, num_channels={config.num_channels}, num_classes={config.num_classes}, "
        f"normalization={config.resolved_normalization!r}, likelihood={config.likelihood!r}"
    )


class VAEModel(VAEPreTrainedModel):
    """A Variational Autoencoder (Kingma & Welling 2013) with a Gaussian posterior and a standard normal prior.

    Example:

    ```python
    >>> import torch
    >>> from hf_vae import VAEConfig, VAEModel
    >>> model = VAEModel(VAEConfig.from_preset("mnist-2d"))
    >>> out = model(torch.rand(8, 1, 28, 28))
    >>> out.loss  # nats per image: reconstruction + beta * KL
    >>> images = model.sample(16, generator=torch.Generator().manual_seed(0))  # (16, 1, 28, 28)
    ```
    """

    def __init__(self, config: VAEConfig):
        # Overrides passed to `from_pretrained` are set on the config after its own validation: check again.
        config._validate_fields()
        super().__init__(config)
        self.encoder = _ENCODERS[config.architecture](config)
        self.decoder = _DECODERS[config.architecture](config)
        self.post_init()

    # ------------------------------------------------------------------ input checks
    def _prepare_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Check shape and range, accept a flat (B, C*H*W) or channel-less (B, H, W) batch, cast to the model's
        dtype. Errors name the expected shape, because a silently broadcast batch trains garbage."""
        config = self.config
        expected = (config.num_channels, config.image_size, config.image_size)
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}.")
        if pixel_values.dim() == 2 and pixel_values.shape[1] == config.num_pixels:
            pixel_values = pixel_values.view(-1, *expected)
        elif pixel_values.dim() == 3 and config.num_channels == 1 and tuple(pixel_values.shape[1:]) == expected[1:]:
            pixel_values = pixel_values.unsqueeze(1)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"pixel_values must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(or flat (batch, {config.num_pixels})), got {tuple(pixel_values.shape)}."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a float tensor with values in [0, 1], got dtype {pixel_values.dtype}; "
                "scale uint8 images with `images.float() / 255`."
            )
        low, high = torch.aminmax(pixel_values.detach())
        if torch.isnan(low) or torch.isnan(high):
            raise ValueError("pixel_values contains NaN; check the data pipeline (pixels must be floats in [0, 1]).")
        if not (low >= 0 and high <= 1):
            raise ValueError(
                f"pixel_values must lie in [0, 1], got values in [{low.item():.4g}, {high.item():.4g}]; "
                "scale images with `images.float() / 255` (and do not normalise them)."
            )
        return pixel_values.to(self.dtype)

    def _condition(self, labels: torch.Tensor | None, batch_size: int) -> torch.Tensor | None:
        """One-hot label vector for conditional models; None for unconditional ones."""
        num_classes = self.config.num_classes
        if num_classes is None:
            return None
        if labels is None:
            raise ValueError(
                f"This model is conditional (num_classes={num_classes}): pass `labels`, a tensor of "
                f"{batch_size} class indices in [0, {num_classes})."
            )
        labels = torch.as_tensor(labels, device=self.device).long().view(-1)
        if labels.numel() == 1 and batch_size > 1:
            labels = labels.expand(batch_size)
        if labels.shape[0] != batch_size:
            raise ValueError(f"Got {labels.shape[0]} labels for a batch of {batch_size}.")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(f"labels must be class indices in [0, {num_classes}), got {labels.tolist()}.")
        return F.one_hot(labels, num_classes).to(self.dtype)

    # ------------------------------------------------------------------ the distributions
    def reconstruction_nll(self, logits: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """-log p(x|z) per image (nats, summed over pixels), shape (B,), from the decoder output `logits`.

        Bernoulli: the binary cross-entropy of the reference tutorial, computed from logits for numerical
        stability. Discretised logistic: -log of the probability mass of the image's 8-bit levels (at least float32),
        so that nll / (C * H * W * ln 2) is in bits per dimension."""
        if self.config.likelihood == "discretized_logistic":
            location, log_scale = logits.chunk(2, dim=1)
            return -discretized_logistic_log_prob(pixel_values, location, log_scale).flatten(1).sum(1)
        return F.binary_cross_entropy_with_logits(logits, pixel_values, reduction="none").flatten(1).sum(1)

    def logits_to_images(self, logits: torch.Tensor) -> torch.Tensor:
        """The images (B, C, H, W) in [0, 1] a decoder output stands for: pixel probabilities (Bernoulli means), or
        the discretised logistic's location clamped to [0, 1] (its most likely level, not a random draw)."""
        if self.config.likelihood == "discretized_logistic":
            return logits[:, : self.config.num_channels].clamp(0.0, 1.0)
        return torch.sigmoid(logits)

    @staticmethod
    def kl_per_dimension(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """KL(N(mean, exp(logvar)) || N(0, 1)) per latent dimension, (B, latent_dim)."""
        return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)

    @staticmethod
    def _standard_normal(shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None):
        device = generator.device if generator is not None else like.device
        return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)

    # ------------------------------------------------------------------ public API
    def encode(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> VAEEncoderOutput:
        """The posterior q(z|x): its mean and log-variance."""
        pixel_values = self._prepare_pixels(pixel_values)
        mean, logvar = self.encoder(pixel_values, self._condition(labels, pixel_values.shape[0]))
        return VAEEncoderOutput(mean=mean, logvar=logvar)

    def decode(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> VAEDecoderOutput:
        """Decode latents (B, latent_dim) into logits and images (B, C, H, W)."""
        if latents.dim() != 2 or latents.shape[1] != self.config.latent_dim:
            raise ValueError(f"latents must have shape (batch, {self.config.latent_dim}), got {tuple(latents.shape)}.")
        latents = latents.to(device=self.device, dtype=self.dtype)
        logits = self.decoder(latents, self._condition(labels, latents.shape[0]))
        return VAEDecoderOutput(logits=logits, images=self.logits_to_images(logits))

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        return_dict: bool = True,
        sample_posterior: bool = True,
        kl_weight: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> VAEOutput | tuple:
        """Encode, sample z = mean + std * eps, decode, and compute the loss.

        Args:
            pixel_values: images in [0, 1], (B, C, H, W) (or flat (B, C*H*W)).
            labels: class indices (B,), required by conditional models.
            sample_posterior: sample z (the default, as in training and as the reference evaluates); False uses
                the posterior mean.
            kl_weight: multiplies beta; the training loop anneals it from 0 to 1 (KL warm-up).
            generator: for a reproducible posterior sample.
        """
        pixel_values = self._prepare_pixels(pixel_values)
        condition = self._condition(labels, pixel_values.shape[0])
        mean, logvar = self.encoder(pixel_values, condition)
        kl = self.kl_per_dimension(mean, logvar)
        batch_size = pixel_values.shape[0]
        kl_loss = kl.sum() / batch_size
        if sample_posterior and self.config.num_importance_samples > 1:
            output = self._importance_weighted_output(
                pixel_values, condition, mean, logvar, kl_loss, kl_weight, generator
            )
            return output if return_dict else output.to_tuple()
        if sample_posterior:
            latents = mean + torch.exp(0.5 * logvar) * self._standard_normal(mean.shape, mean, generator)
        else:
            latents = mean
        logits = self.decoder(latents, condition)

        if self.config.likelihood == "bernoulli":
            reconstruction_loss = F.binary_cross_entropy_with_logits(logits, pixel_values, reduction="sum") / batch_size
        else:
            reconstruction_loss = self.reconstruction_nll(logits, pixel_values).sum() / batch_size
        kl_term = kl_loss
        if self.training and self.config.free_bits > 0:
            kl_term = kl.mean(0).clamp(min=self.config.free_bits).sum()
        loss = reconstruction_loss + self.config.beta * kl_weight * kl_term

        output = VAEOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            kl_loss=kl_loss,
            logits=logits,
            mean=mean,
            logvar=logvar,
            latents=latents,
        )
        return output if return_dict else output.to_tuple()

    def _score_posterior_samples(
        self,
        pixel_values: torch.Tensor,
        condition: torch.Tensor | None,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        count: int,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw `count` latents per image from q(z|x) = N(mean, exp(logvar)) and score them: log p(x|z) and
        log p(z) - log q(z|x), each (count, B), plus the decoder logits (count * B, ...) and the latents (count, B, D).
        Shared by the IWAE training loss and the likelihood estimates, so both compute the same bound."""
        batch = pixel_values.shape[0]
        eps = self._standard_normal((count, *mean.shape), mean, generator)
        latents = mean + torch.exp(0.5 * logvar) * eps
        flat_condition = None if condition is None else condition.repeat(count, 1)
        logits = self.decoder(latents.reshape(count * batch, -1), flat_condition)
        targets = pixel_values.expand(count, *pixel_values.shape).reshape(count * batch, *pixel_values.shape[1:])
        log_px_z = -self.reconstruction_nll(logits, targets).view(count, batch)
        log_prior_ratio = 0.5 * (eps.pow(2) + logvar - latents.pow(2)).sum(-1)  # the log(2 pi) terms cancel
        return log_px_z, log_prior_ratio, logits, latents

    def _importance_weighted_output(
        self,
        pixel_values: torch.Tensor,
        condition: torch.Tensor | None,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        kl_loss: torch.Tensor,
        kl_weight: float,
        generator: torch.Generator | None,
    ) -> VAEOutput:
        """The IWAE loss: minus log (1/K) sum_k p(x|z_k) p(z_k)^w / q(z_k|x)^w with w = beta * kl_weight, so that KL
        warm-up and beta act on the prior/posterior ratio as they act on the KL in the ELBO."""
        count, batch = self.config.num_importance_samples, pixel_values.shape[0]
        log_px_z, log_prior_ratio, logits, latents = self._score_posterior_samples(
            pixel_values, condition, mean, logvar, count, generator
        )
        log_weights = log_px_z + log_prior_ratio * (self.config.beta * kl_weight)
        bound = torch.logsumexp(log_weights, dim=0) - math.log(count)
        return VAEOutput(
            loss=-bound.mean(),
            reconstruction_loss=-log_px_z.mean(),
            kl_loss=kl_loss,
            logits=logits.view(count, batch, *logits.shape[1:])[0],
            mean=mean,
            logvar=logvar,
            latents=latents[0],
        )

    @_in_eval_mode
    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Images (num_samples, C, H, W) decoded from z ~ N(0, I). Conditional models take `labels` (one class for
        all samples, or one per sample)."""
        latents = self._standard_normal((num_samples, self.config.latent_dim), self._param_like(), generator)
        return self.decode(latents, labels=labels).images

    @_in_eval_mode
    @torch.no_grad()
    def reconstruct(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Decode each image's posterior mean: the deterministic reconstruction, (B, C, H, W)."""
        return self.decode(self.encode(pixel_values, labels).mean, labels).images

    @_in_eval_mode
    @torch.no_grad()
    def interpolate(
        self,
        start: torch.Tensor,
        end: torch.Tensor,
        steps: int = 8,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Walk the latent space in a straight line from `start`'s posterior mean to `end`'s.

        `start` and `end` are images (C, H, W) or batches (B, C, H, W); returns (steps, C, H, W) or
        (B, steps, C, H, W), the first and last steps being the two reconstructions.
        """
        if steps < 2:
            raise ValueError(f"steps must be at least 2 (the two end points), got {steps}.")
        single = start.dim() == 3
        if single:
            start, end = start.unsqueeze(0), end.unsqueeze(0)
        z_start = self.encode(start, labels).mean
        z_end = self.encode(end, labels).mean
        weights = torch.linspace(0, 1, steps, device=z_start.device, dtype=z_start.dtype).view(1, steps, 1)
        path = torch.lerp(z_start.unsqueeze(1), z_end.unsqueeze(1), weights)  # (B, steps, D)
        batch = path.shape[0]
        path_labels = None
        if labels is not None:
            path_labels = torch.as_tensor(labels, device=self.device).view(-1).expand(batch).repeat_interleave(steps)
        images = self.decode(path.reshape(batch * steps, -1), path_labels).images
        images = images.view(batch, steps, *images.shape[1:])
        return images[0] if single else images

    # ------------------------------------------------------------------ likelihood estimates
    @torch.no_grad()
    def _log_weights(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        num_samples: int,
        generator: torch.Generator | None,
        max_batch_elements: int,
        importance: bool,
    ) -> torch.Tensor:
        """(num_samples, B) log importance weights log p(x,z) - log q(z|x) (importance=True) or
        log p(x|z) - KL (importance=False, whose mean over samples is the ELBO), computed in chunks of samples
        so that at most `max_batch_elements` decoded pixels are held at once."""
        pixel_values = self._prepare_pixels(pixel_values)
        batch = pixel_values.shape[0]
        condition = self._condition(labels, batch)
        mean, logvar = self.encoder(pixel_values, condition)
        kl = self.kl_per_dimension(mean, logvar).sum(1)
        chunk = max(1, min(num_samples, max_batch_elements // max(1, batch * self.config.num_pixels)))
        log_weights = []
        for first in range(0, num_samples, chunk):
            count = min(chunk, num_samples - first)
            log_px_z, log_prior_ratio, _, _ = self._score_posterior_samples(
                pixel_values, condition, mean, logvar, count, generator
            )
            log_weights.append(log_px_z + log_prior_ratio if importance else log_px_z - kl)
        return torch.cat(log_weights, dim=0)

    @_in_eval_mode
    @torch.no_grad()
    def log_likelihood(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_samples: int = 1000,
        generator: torch.Generator | None = None,
        max_batch_elements: int = 2**25,
    ) -> torch.Tensor:
        """Importance-weighted estimate of log p(x) per image in nats (Burda et al. 2015), shape (B,):
        log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x). A lower bound that tightens as K grows; K=1 is the
        ELBO. Runs in eval mode (BatchNorm running statistics, no dropout) whatever mode the model is in."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        log_w = self._log_weights(pixel_values, labels, num_samples, generator, max_batch_elements, True)
        return torch.logsumexp(log_w.double(), dim=0) - math.log(num_samples)

    @_in_eval_mode
    @torch.no_grad()
    def negative_elbo(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        num_samples: int = 1,
        generator: torch.Generator | None = None,
        max_batch_elements: int = 2**25,
    ) -> torch.Tensor:
        """-ELBO per image in nats, (B,): -E_q[log p(x|z)] (averaged over `num_samples` draws) + KL (exact)."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        log_w = self._log_weights(pixel_values, labels, num_samples, generator, max_batch_elements, False)
        return -log_w.double().mean(0)

    @torch.no_grad()
    def anomaly_score(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        method: str = "elbo",
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Per-image anomaly score (higher = less like the training data), in nats: the negative ELBO
        (`method="elbo"`, averaged over `num_samples` draws, default 16) or the IWAE estimate of -log p(x)
        (`method="iwae"`, default 1000 samples)."""
        if method == "elbo":
            return self.negative_elbo(pixel_values, labels, num_samples or 16, generator)
        if method == "iwae":
            return -self.log_likelihood(pixel_values, labels, num_samples or 1000, generator)
        raise ValueError(f"method must be 'elbo' or 'iwae', got {method!r}.")

    def _param_like(self) -> torch.Tensor:
        return next(self.parameters())


__all__ = ["VAEModel", "VAEPreTrainedModel", "VAEOutput", "VAEEncoderOutput", "VAEDecoderOutput"]
