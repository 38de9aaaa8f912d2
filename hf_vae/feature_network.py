"""A small LeNet-sized image classifier whose penultimate layer is the feature space of hf-vae's sample metrics
(Fréchet distance, precision and recall) and whose predictions give conditional models' class fidelity.

Inception-v3 features, the usual choice for FID, describe natural photographs; on 28x28 digits a classifier trained
on the digits themselves sees what matters (stroke shape, class) and runs in seconds on a CPU. It is a `transformers`
model like the VAEs: `FeatureNetwork.from_pretrained(folder_or_repo)`, `save_pretrained`, safetensors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers import initialization as init

MODEL_TYPE = "hf_vae_feature_network"
DEFAULT_FEATURE_NETWORK = "pretrained/mnist-classifier"


class FeatureNetworkConfig(PretrainedConfig):
    """Two 3x3 convolution stages (each conv, BatchNorm, ReLU, 2x2 max-pool), a hidden layer whose ReLU output is the
    feature vector, and a linear classifier.

    Args:
        image_size: height and width of the (square) input images; divisible by 4.
        num_channels: 1 (greyscale) or 3 (RGB).
        num_classes: classes predicted.
        conv_channels: output channels of the two convolution stages.
        feature_dim: size of the feature vector (the penultimate layer).
        dropout: dropout probability before the classifier (training only).
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        image_size: int = 28,
        num_channels: int = 1,
        num_classes: int = 10,
        conv_channels: list[int] | tuple[int, int] = (16, 32),
        feature_dim: int = 128,
        dropout: float = 0.25,
        **kwargs: Any,
    ):
        conv_channels = list(conv_channels)
        for name, value in (
            ("image_size", image_size), ("num_channels", num_channels), ("num_classes", num_classes),
            ("feature_dim", feature_dim),
        ):  # fmt: skip
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if image_size % 4:
            raise ValueError(f"`image_size` must be divisible by 4 (two 2x2 poolings), got {image_size}.")
        if len(conv_channels) != 2 or not all(isinstance(c, int) and c > 0 for c in conv_channels):
            raise ValueError(f"`conv_channels` must be two positive integers, got {conv_channels!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must lie in [0, 1), got {dropout!r}.")
        self.image_size = image_size
        self.num_channels = num_channels
        self.num_classes = num_classes
        self.conv_channels = conv_channels
        self.feature_dim = feature_dim
        self.dropout = dropout
        super().__init__(**kwargs)


class FeatureNetwork(PreTrainedModel):
    """The classifier: `features(pixel_values)` -> (B, feature_dim), `forward(pixel_values)` -> logits (B, classes).
    Pixel values are floats in [0, 1], shaped (B, C, H, W), as hf-vae's models take and produce them."""

    config_class = FeatureNetworkConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: FeatureNetworkConfig):
        super().__init__(config)
        first, second = config.conv_channels
        self.body = nn.Sequential(
            nn.Conv2d(config.num_channels, first, 3, padding=1), nn.BatchNorm2d(first), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3, padding=1), nn.BatchNorm2d(second), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(second * (config.image_size // 4) ** 2, config.feature_dim), nn.ReLU(),
        )  # fmt: skip
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.feature_dim, config.num_classes)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's default initialisation, not transformers' normal(0, 0.02)."""
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
            init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)

    def _check(self, pixel_values: torch.Tensor) -> torch.Tensor:
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"The feature network takes pixel_values of shape (batch, {', '.join(map(str, expected))}), got "
                f"{tuple(pixel_values.shape)}: it was trained on other images than these."
            )
        return pixel_values.to(self.dtype)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The penultimate layer's activations (B, feature_dim)."""
        return self.body(self._check(pixel_values))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes)."""
        return self.classifier(self.dropout(self.features(pixel_values)))

    @torch.no_grad()
    def features_and_logits(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both, from one pass (in whatever mode the network is in; call `.eval()` first)."""
        features = self.features(pixel_values)
        return features, self.classifier(features)

    def loss(self, pixel_values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the labels."""
        return F.cross_entropy(self(pixel_values), labels)


def default_feature_network() -> str:
    """The committed `pretrained/mnist-classifier` of the hf-vae source tree the package runs from (a clone or an
    editable install), found from the package's location and not the working directory."""
    return str(Path(__file__).resolve().parent.parent / DEFAULT_FEATURE_NETWORK)


def load_feature_network(name_or_path: str | None = None, **kwargs: Any) -> FeatureNetwork:
    """A feature network in eval mode from a folder or Hub repo (`None`: the clone's committed classifier)."""
    if name_or_path is None:
        name_or_path = default_feature_network()
        if not Path(name_or_path).is_dir():
            raise OSError(
                f"No feature network given and none at {name_or_path} (hf-vae is not run from a clone): pass "
                "--feature_network with a folder or Hub repo holding one (e.g. a clone's pretrained/mnist-classifier)."
            )
    return FeatureNetwork.from_pretrained(name_or_path, **kwargs).eval()


def register() -> None:
    """Make `AutoConfig` / `AutoModel` know the feature network."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(MODEL_TYPE, FeatureNetworkConfig, exist_ok=True)
    AutoModel.register(FeatureNetworkConfig, FeatureNetwork, exist_ok=True)


register()

__all__ = ["FeatureNetwork", "FeatureNetworkConfig", "default_feature_network", "load_feature_network"]
