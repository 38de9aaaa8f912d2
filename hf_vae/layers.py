"""Network blocks shared by the families: MLP and convolutional stacks, residual blocks, normalisation choices.

Module names and orders here are weight names in saved checkpoints: change them only with a conversion.

Copied next to the weights for `trust_remote_code`: imports only torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "tanh": nn.Tanh,
}


@dataclass(frozen=True)
class BlockSpec:
    """What every hidden layer of a network shares: its normalisation ("batch", "group" or "none"), activation and
    dropout probability."""

    normalization: str = "batch"
    activation: str = "relu"
    dropout: float = 0.0


def normalization(kind: str, features: int, spatial: bool) -> nn.Module | None:
    if kind == "batch":
        return nn.BatchNorm2d(features) if spatial else nn.BatchNorm1d(features)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, features), features)
    return None


# Whether torch.compile is tracing the caller: torch >= 2.3 says so; before it, compiled code takes the eager paths
# (slower, still correct).
is_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


class VAEDropout(nn.Dropout):
    """`nn.Dropout` with a mask that is cheaper to draw on a CPU, where `bernoulli_` alone was about 14% of a small
    model's training step and `rand_like` followed by a comparison about 10%.

    The mask is drawn as 16-bit integers, four from each 64-bit random word, and kept where the integer reaches a
    threshold: a quarter of the generator calls of one float per element, and float arithmetic only after it
    (comparisons into bool tensors and bool-to-float casts are several times slower than float products here). The
    drop probability is therefore a multiple of 1/65536 (0.2 drops with probability 13107/65536 = 0.199997), and
    kept units are scaled by the inverse of that kept fraction, so the expectation is exactly the input's. Under
    `torch.compile` the mask is `rand_like(hidden) >= p`, which inductor generates and fuses (1.03-1.11x the eager
    step of `mnist-2d`, where the words above made the compiled step 0.75x)."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return hidden
        if is_compiling():  # inductor draws and fuses `rand_like` itself: faster there than the words below
            keep = (torch.rand_like(hidden) >= self.p).to(hidden.dtype).mul_(1.0 / (1.0 - self.p))
            return hidden * keep
        dropped_levels = round(self.p * 65536)
        if dropped_levels == 0:
            return hidden
        count = hidden.numel()
        words = torch.empty((count + 3) // 4, dtype=torch.int64, device=hidden.device).random_(-(2**63), None)
        levels = words.view(torch.int16)[:count].view(hidden.shape).to(torch.float32)  # uniform on -32768..32767
        # 1 where the level is at least -32768 + dropped_levels, else 0 (the levels are integers), then scaled.
        keep = levels.sub_(dropped_levels - 32769).clamp_(0.0, 1.0).mul_(65536 / (65536 - dropped_levels))
        return hidden * keep.to(hidden.dtype)


def dropout(probability: float) -> nn.Module:
    # An Identity stands in for a zero dropout so that weight names do not depend on it: a checkpoint trained with
    # dropout loads with `dropout=0.0` (and the reverse).
    return VAEDropout(probability) if probability > 0 else nn.Identity()


def mlp_layers(in_features: int, widths: list[int], spec: BlockSpec) -> list[nn.Module]:
    """Linear -> [norm] -> activation -> dropout, once per width."""
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Linear(in_features, width))
        norm = normalization(spec.normalization, width, spatial=False)
        if norm is not None:
            layers.append(norm)
        layers += [ACTIVATIONS[spec.activation](), dropout(spec.dropout)]
        in_features = width
    return layers


class MLPGaussianEncoder(nn.Module):
    """Flat input (and an optional condition vector, concatenated) -> hidden layers -> Gaussian mean and
    log-variance."""

    def __init__(self, in_features: int, hidden_sizes: list[int], latent_dim: int, spec: BlockSpec):
        super().__init__()
        self.layers = nn.Sequential(*mlp_layers(in_features, hidden_sizes, spec))
        self.fc_mu = nn.Linear(hidden_sizes[-1], latent_dim)
        self.fc_logvar = nn.Linear(hidden_sizes[-1], latent_dim)

    def forward(self, inputs: torch.Tensor, condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = inputs.flatten(1)
        if condition is not None:
            hidden = torch.cat([hidden, condition], dim=1)
        hidden = self.layers(hidden)
        return self.fc_mu(hidden), self.fc_logvar(hidden)


class MLPDecoder(nn.Module):
    """Latent (and an optional condition vector, concatenated) -> hidden layers -> a linear layer to
    `output_shape`."""

    def __init__(self, in_features: int, hidden_sizes: list[int], output_shape: tuple[int, ...], spec: BlockSpec):
        super().__init__()
        self.output_shape = tuple(output_shape)
        layers = mlp_layers(in_features, hidden_sizes, spec)
        layers.append(nn.Linear(hidden_sizes[-1] if hidden_sizes else in_features, math.prod(self.output_shape)))
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if condition is not None:
            latents = torch.cat([latents, condition], dim=1)
        return self.layers(latents).view(-1, *self.output_shape)


class ConvTranspose2dSeparateBias(nn.ConvTranspose2d):
    """`nn.ConvTranspose2d` that adds its bias after the convolution, in place, on a CPU.

    oneDNN's backward of a transposed convolution took 2.5x as long with the bias as without it (bf16, channels-last,
    32 -> 32 channels to 28x28: 7.6 against 3.0 ms), while the bias's own gradient, a sum over the batch and pixels,
    takes 0.3 ms: the layer runs 1.3-1.75x faster forward and backward this way (1.2-1.5x in fp32). The parameters,
    their names and the fp32 output are those of `nn.ConvTranspose2d`; under bf16 autocast the bias is added after
    the product is rounded to bf16. Other devices, and calls with `output_size`, take the parent's path."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.bias is None or output_size is not None or input.device.type != "cpu":
            return super().forward(input, output_size)
        output = nn.functional.conv_transpose2d(
            input, self.weight, None, self.stride, self.padding, self.output_padding, self.groups, self.dilation
        )
        return output.add_(self.bias.to(output.dtype).view(1, -1, 1, 1))


def conv_norm_activation(channels: int, spec: BlockSpec) -> list[nn.Module]:
    # An Identity stands in for no normalisation so that layer indices (weight names) stay the same.
    return [normalization(spec.normalization, channels, spatial=True) or nn.Identity(), ACTIVATIONS[spec.activation]()]


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions at constant width and resolution with a skip connection:
    h -> act(h + norm(conv(dropout(act(norm(conv(h))))))) (He et al. 2016)."""

    def __init__(self, channels: int, spec: BlockSpec):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm1 = normalization(spec.normalization, channels, spatial=True) or nn.Identity()
        self.activation = ACTIVATIONS[spec.activation]()
        self.dropout = dropout(spec.dropout)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.norm2 = normalization(spec.normalization, channels, spatial=True) or nn.Identity()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        branch = self.dropout(self.activation(self.norm1(self.conv1(hidden))))
        return self.activation(hidden + self.norm2(self.conv2(branch)))


def residual_blocks(channels: int, count: int, spec: BlockSpec) -> list[nn.Module]:
    return [ResidualBlock(channels, spec) for _ in range(count)]


def conv_stages(
    in_channels: int, conv_channels: list[int], num_res_blocks: int, spec: BlockSpec
) -> tuple[nn.ModuleList, nn.ModuleList]:
    """One stride-2 4x4 convolution per entry of `conv_channels` (each halving the image) and, after each, the
    normalisation, activation and `num_res_blocks` residual blocks of that stage."""
    downsample, blocks = nn.ModuleList(), nn.ModuleList()
    for channels in conv_channels:
        downsample.append(nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1))
        blocks.append(
            nn.Sequential(*conv_norm_activation(channels, spec), *residual_blocks(channels, num_res_blocks, spec))
        )
        in_channels = channels
    return downsample, blocks


class ConvFeatures(nn.Module):
    """Image -> the stages of `conv_stages` -> the smallest feature map, flattened to
    (B, conv_channels[-1] * (image_size / 2 ** stages) ** 2): the convolutional body of `ConvGaussianEncoder` without
    its Gaussian heads, for networks that put their own layers on top."""

    def __init__(
        self, in_channels: int, image_size: int, conv_channels: list[int], num_res_blocks: int, spec: BlockSpec
    ):
        super().__init__()
        self.downsample, self.blocks = conv_stages(in_channels, conv_channels, num_res_blocks, spec)
        self.out_features = conv_channels[-1] * (image_size // 2 ** len(conv_channels)) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        hidden = pixel_values
        for downsample, block in zip(self.downsample, self.blocks, strict=True):
            hidden = block(downsample(hidden))
        return hidden.flatten(1)


class ConvGaussianEncoder(nn.Module):
    """Image -> one stride-2 4x4 convolution per entry of `conv_channels` (each halving the image, followed by
    normalisation, activation and `num_res_blocks` residual blocks) -> flatten -> linear Gaussian mean and
    log-variance.

    With `num_classes`, the one-hot condition's linear projection is added to the first convolution's output: a
    learned per-class bias for each channel, which equals feeding the label as constant one-hot input planes (but
    for the zero padding at the border) without building them.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        conv_channels: list[int],
        num_res_blocks: int,
        latent_dim: int,
        num_classes: int | None,
        spec: BlockSpec,
    ):
        super().__init__()
        self.downsample, self.blocks = conv_stages(in_channels, conv_channels, num_res_blocks, spec)
        self.label_projection = nn.Linear(num_classes, conv_channels[0], bias=False) if num_classes else None
        features = conv_channels[-1] * (image_size // 2 ** len(conv_channels)) ** 2
        self.fc_mu = nn.Linear(features, latent_dim)
        self.fc_logvar = nn.Linear(features, latent_dim)

    def forward(self, pixel_values: torch.Tensor, condition: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = pixel_values
        for index, (downsample, block) in enumerate(zip(self.downsample, self.blocks, strict=True)):
            hidden = downsample(hidden)
            if index == 0 and condition is not None:
                hidden = hidden + self.label_projection(condition)[:, :, None, None]
            hidden = block(hidden)
        hidden = hidden.flatten(1)
        return self.fc_mu(hidden), self.fc_logvar(hidden)


class ConvDecoder(nn.Module):
    """Latent (and condition, concatenated) -> linear to the encoder's smallest feature map -> the encoder's stages
    in reverse, each a stride-2 4x4 transposed convolution doubling the image (with residual blocks at every
    resolution the encoder has them) -> 3x3 convolution to `out_channels` per pixel."""

    def __init__(
        self,
        in_features: int,
        image_size: int,
        conv_channels: list[int],
        num_res_blocks: int,
        out_channels: int,
        spec: BlockSpec,
    ):
        super().__init__()
        size = image_size // 2 ** len(conv_channels)
        self.start_shape = (conv_channels[-1], size, size)
        self.fc = nn.Linear(in_features, math.prod(self.start_shape))
        deepest = conv_channels[-1]
        self.input_block = nn.Sequential(
            *conv_norm_activation(deepest, spec), *residual_blocks(deepest, num_res_blocks, spec)
        )
        widths = [*reversed(conv_channels), conv_channels[0]]
        self.upsample = nn.ModuleList()
        self.blocks = nn.ModuleList()
        for stage, (in_channels, channels) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            last = stage == len(conv_channels) - 1
            self.upsample.append(ConvTranspose2dSeparateBias(in_channels, channels, kernel_size=4, stride=2, padding=1))
            residual = [] if last else residual_blocks(channels, num_res_blocks, spec)
            self.blocks.append(nn.Sequential(*conv_norm_activation(channels, spec), *residual))
        self.conv_out = nn.Conv2d(conv_channels[0], out_channels, kernel_size=3, padding=1)

    def forward(self, latents: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        if condition is not None:
            latents = torch.cat([latents, condition], dim=1)
        hidden = self.input_block(self.fc(latents).view(-1, *self.start_shape))
        for upsample, block in zip(self.upsample, self.blocks, strict=True):
            hidden = block(upsample(hidden))
        return self.conv_out(hidden)


class ConvGridEncoder(nn.Module):
    """Image -> one stride-2 4x4 convolution per entry of `conv_channels` (each followed by normalisation, activation
    and `num_res_blocks` residual blocks) -> a 1x1 convolution to `out_channels`: a grid of vectors, one per
    `2 ** len(conv_channels)`-pixel square (the VQ-VAE's encoder)."""

    def __init__(
        self, in_channels: int, conv_channels: list[int], num_res_blocks: int, out_channels: int, spec: BlockSpec
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for channels in conv_channels:
            layers += [nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1)]
            layers += [*conv_norm_activation(channels, spec), *residual_blocks(channels, num_res_blocks, spec)]
            in_channels = channels
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)


class ConvGridDecoder(nn.Module):
    """A grid of vectors -> a 3x3 convolution to the deepest width (normalisation, activation, residual blocks) -> one
    stride-2 4x4 transposed convolution per encoder stage, in reverse -> a 3x3 convolution to `out_channels` per
    pixel (the VQ-VAE's decoder)."""

    def __init__(
        self, in_channels: int, conv_channels: list[int], num_res_blocks: int, out_channels: int, spec: BlockSpec
    ):
        super().__init__()
        deepest = conv_channels[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, deepest, kernel_size=3, padding=1)]
        layers += [*conv_norm_activation(deepest, spec), *residual_blocks(deepest, num_res_blocks, spec)]
        widths = [*reversed(conv_channels), conv_channels[0]]
        for channels_in, channels in zip(widths[:-1], widths[1:], strict=True):
            layers += [ConvTranspose2dSeparateBias(channels_in, channels, kernel_size=4, stride=2, padding=1)]
            layers += conv_norm_activation(channels, spec)
        layers.append(nn.Conv2d(conv_channels[0], out_channels, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.layers(grid)


__all__ = [
    "ACTIVATIONS",
    "BlockSpec",
    "ConvDecoder",
    "ConvFeatures",
    "ConvGridDecoder",
    "ConvGridEncoder",
    "ConvGaussianEncoder",
    "ConvTranspose2dSeparateBias",
    "MLPDecoder",
    "MLPGaussianEncoder",
    "ResidualBlock",
    "VAEDropout",
    "conv_stages",
    "is_compiling",
    "mlp_layers",
    "normalization",
]
