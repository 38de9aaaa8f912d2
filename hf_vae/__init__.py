"""hf-vae: Variational Autoencoders native to the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel

from .configuration_vae import PRESETS, VAEConfig
from .modeling_vae import VAEDecoderOutput, VAEEncoderOutput, VAEModel, VAEOutput, VAEPreTrainedModel

__version__ = "0.1.0"

AutoConfig.register(VAEConfig.model_type, VAEConfig, exist_ok=True)
AutoModel.register(VAEConfig, VAEModel, exist_ok=True)
# Saved folders carry their code and an `auto_map`, so `trust_remote_code=True` loads them without hf-vae.
VAEConfig.register_for_auto_class()
VAEModel.register_for_auto_class("AutoModel")

__all__ = [
    "PRESETS",
    "VAEConfig",
    "VAEDecoderOutput",
    "VAEEncoderOutput",
    "VAEModel",
    "VAEOutput",
    "VAEPreTrainedModel",
    "__version__",
]
