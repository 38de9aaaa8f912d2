"""The model families hf-vae knows, by `model_type`: their config and model classes, their presets, and loading a
saved model of any family. Training, evaluation, pictures and the Hub code go through here, so a new family is one
line in `FAMILIES` (and its two files), never an edit of them.

Classes are imported when first asked for, so `hf-vae --help` does not import torch.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

# model_type -> (configuration module, config class, modeling module, model class)
FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "hf_vae": ("hf_vae.configuration_vae", "VAEConfig", "hf_vae.modeling_vae", "VAEModel"),
    "hf_hvae": ("hf_vae.configuration_hvae", "HVAEConfig", "hf_vae.modeling_hvae", "HVAEModel"),
}
# Every family's images go through one image processor (saved as preprocessor_config.json with each model).
IMAGE_PROCESSOR: tuple[str, str] = ("hf_vae.image_processing_vae", "VAEImageProcessor")


def config_class(model_type: str) -> type:
    module, name, _, _ = _family(model_type)
    return getattr(importlib.import_module(module), name)


def model_class(model_type: str) -> type:
    _, _, module, name = _family(model_type)
    return getattr(importlib.import_module(module), name)


def _family(model_type: str) -> tuple[str, str, str, str]:
    if model_type not in FAMILIES:
        raise ValueError(f"Unknown model_type {model_type!r}; hf-vae's families are {sorted(FAMILIES)}.")
    return FAMILIES[model_type]


def presets() -> dict[str, str]:
    """Every preset name -> the model_type of its family."""
    found: dict[str, str] = {}
    for model_type in FAMILIES:
        for name in getattr(importlib.import_module(FAMILIES[model_type][0]), "PRESETS", {}):
            found[name] = model_type
    return found


def config_from_preset(name: str, **overrides: Any):
    """A family's config from a preset name, with any field overridden."""
    known = presets()
    if name not in known:
        raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(known)}.")
    return config_class(known[name]).from_preset(name, **overrides)


def model_type_of(path: str | os.PathLike) -> str | None:
    """The model_type in a local folder's config.json (None when it has none or cannot be read)."""
    try:
        return json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_model_location(name_or_path: str | os.PathLike, revision: str | None = None) -> None:
    """A path that exists is a local model; one that looks like a path (`./x`, `/x`, `x/`, `~/x`, `a/b/c`) and does
    not exist is an error naming it, at once; anything else is a Hub repo id, and a Hub that cannot be reached is one
    sentence naming both possibilities, instead of a screen of download retries."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise OSError(f"{text!r} is a file, not a model folder: pass the folder holding config.json.")
        return
    if text.startswith((".", "/", "~")) or text.endswith(("/", os.sep)) or text.count("/") > 1:
        raise OSError(f"No model folder {text!r}: that path does not exist. Check it, or pass a Hub repo OWNER/NAME.")
    from huggingface_hub import constants, model_info, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        if constants.HF_HUB_OFFLINE or try_to_load_from_cache(text, "config.json", revision=revision) is not None:
            return  # offline, or already downloaded: transformers reads the Hub cache
        model_info(text, revision=revision, timeout=10)
    except HFValidationError:
        raise OSError(f"No model folder {text!r} here, and it is not a Hub repo id OWNER/NAME: check it.") from None
    except RevisionNotFoundError:
        raise OSError(f"The Hub repo {text!r} has no revision {revision!r}: check --revision.") from None
    except RepositoryNotFoundError:
        raise OSError(
            f"No model folder {text!r} here, and no Hub repo {text!r} you can access: check the name (private repos "
            "need `hf auth login` or HF_TOKEN)."
        ) from None
    except Exception as error:  # noqa: BLE001 - any failure to reach the Hub: say so once, without retries
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise OSError(
            f"No model folder {text!r} here, and the Hub ({constants.ENDPOINT}) cannot be reached to look for a repo "
            f"of that name ({reason}). Check the path, or your connection (HF_HUB_OFFLINE=1 uses the local cache)."
        ) from None


def load_pretrained(name_or_path: str | os.PathLike, **kwargs: Any):
    """A saved model of any family, from a folder or a Hub repo id, through its family's strict `from_pretrained`
    (transformers' AutoModel resolves the family from config.json's model_type). Where the model is is checked first
    (`check_model_location`)."""
    from transformers import AutoConfig

    import hf_vae

    hf_vae.register_families()
    check_model_location(name_or_path, kwargs.get("revision"))
    model_type = model_type_of(name_or_path)
    if model_type is None:
        model_type = AutoConfig.from_pretrained(name_or_path, **kwargs).model_type
    return model_class(model_type).from_pretrained(name_or_path, **kwargs)


def image_processor_class() -> type:
    return getattr(importlib.import_module(IMAGE_PROCESSOR[0]), IMAGE_PROCESSOR[1])


def remote_code_files(model_type: str) -> list[str]:
    """The file names `trust_remote_code` needs for a family: its configuration, modeling and image processing modules
    and every sibling module they import (transformers' own rule, `get_relative_import_files`, which also decides what
    `save_pretrained` copies and what a loader downloads)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    package_dir = Path(__file__).resolve().parent
    configuration, _, modeling, _ = _family(model_type)
    files = set()
    for module in (configuration, modeling, IMAGE_PROCESSOR[0]):
        path = package_dir / f"{module.rsplit('.', 1)[1]}.py"
        files.add(path.name)
        files.update(Path(found).name for found in get_relative_import_files(path))
    return sorted(files)


def auto_map(model_type: str) -> dict[str, str]:
    """config.json's `auto_map` for a family: where `trust_remote_code` finds its classes."""
    configuration, config_name, modeling, model_name = _family(model_type)
    return {
        "AutoConfig": f"{configuration.rsplit('.', 1)[1]}.{config_name}",
        "AutoModel": f"{modeling.rsplit('.', 1)[1]}.{model_name}",
    }


def image_processor_auto_map() -> dict[str, str]:
    """preprocessor_config.json's `auto_map`: where `trust_remote_code` finds the image processor."""
    module, name = IMAGE_PROCESSOR
    return {"AutoImageProcessor": f"{module.rsplit('.', 1)[1]}.{name}"}


__all__ = [
    "FAMILIES",
    "IMAGE_PROCESSOR",
    "auto_map",
    "image_processor_auto_map",
    "image_processor_class",
    "config_class",
    "config_from_preset",
    "load_pretrained",
    "model_class",
    "model_type_of",
    "presets",
    "remote_code_files",
]
