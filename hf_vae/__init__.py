"""hf-vae: Variational Autoencoders native to the Hugging Face ecosystem.

`import hf_vae` registers every family with transformers' `AutoConfig` / `AutoModel` / `AutoImageProcessor` (so that
`AutoModel.from_pretrained(folder)` and `AutoImageProcessor.from_pretrained(folder)` work without
`trust_remote_code`) and exposes the classes. The `hf-vae` command
skips that import-time work until a command runs, so that `hf-vae --help` starts at once: the names below are loaded
on first use either way.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": "configuration_vae",
    "VAEConfig": "configuration_vae",
    "VAEModel": "modeling_vae",
    "VAEPreTrainedModel": "modeling_vae",
    "VAEOutput": "modeling_vae",
    "VAEEncoderOutput": "modeling_vae",
    "VAEDecoderOutput": "modeling_vae",
    "VAEImageProcessor": "image_processing_vae",
}
_registered = False


def register_families() -> None:
    """Register every family of `families.FAMILIES` with the Auto classes, and mark its classes so that
    `save_pretrained` writes their code and an `auto_map` (what `trust_remote_code` needs). Idempotent."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    from .families import FAMILIES, config_class, image_processor_class, model_class

    processor = image_processor_class()
    processor.register_for_auto_class("AutoImageProcessor")
    for model_type in FAMILIES:
        config, model = config_class(model_type), model_class(model_type)
        AutoConfig.register(model_type, config, exist_ok=True)
        AutoModel.register(config, model, exist_ok=True)
        backends = {"pil": processor, "torchvision": processor}
        AutoImageProcessor.register(config, image_processor_classes=backends, exist_ok=True)
        config.register_for_auto_class()
        model.register_for_auto_class("AutoModel")
    _registered = True


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        register_families()
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'hf_vae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if Path(sys.argv[0] if sys.argv else "").name != "hf-vae":  # the library, not the command: register now
    register_families()

__all__ = [*_EXPORTS, "__version__", "register_families"]
