"""hf-vae: Variational Autoencoders native to the Hugging Face ecosystem."""

from transformers import AutoConfig, AutoModel

from .configuration_vae import PRESETS, VAEConfig
from .families import FAMILIES, config_class, model_class
from .modeling_vae import VAEDecoderOutput, VAEEncoderOutput, VAEModel, VAEOutput, VAEPreTrainedModel

__version__ = "0.1.0"

for _model_type in FAMILIES:
    _config, _model = config_class(_model_type), model_class(_model_type)
    AutoConfig.register(_model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    # Saved folders carry their code and an `auto_map`, so `trust_remote_code=True` loads them without hf-vae.
    _config.register_for_auto_class()
    _model.register_for_auto_class("AutoModel")

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
