"""What every hf-vae family's configuration shares: strict loading (a folder without config.json is an error, not a
default config), named presets, and the checks that fields go through.

Copied next to the weights for `trust_remote_code`: imports only transformers.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any, TypeVar

from transformers import PretrainedConfig

_Config = TypeVar("_Config", bound="HfVaeConfig")


class HfVaeConfig(PretrainedConfig):
    """Base of the families' configs. A family sets `presets` (name -> field values) next to its fields."""

    presets = {}  # unannotated: a class attribute, not a config field

    @classmethod
    def get_config_dict(
        cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """As in transformers, but a folder or repo without `config.json` is an error: transformers would fall back
        to the default config and could load the weights into a network that merely has the same shapes (wrong
        beta, binarisation, ...)."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        if not config_dict:
            model_name = cls.__name__.removesuffix("Config") + "Model"
            raise OSError(
                f"{pretrained_model_name_or_path!s} has no config.json, so the model's architecture is unknown. Load "
                "a folder written by `save_pretrained` (it writes config.json next to model.safetensors), or pass the "
                f"config explicitly: `{model_name}.from_pretrained(path, config={cls.__name__}(...))`."
            )
        return config_dict, kwargs

    @classmethod
    def from_preset(cls: type[_Config], name: str, **overrides: Any) -> _Config:
        """Build a config from a named preset (see the family's `presets`), with any field overridden."""
        if name not in cls.presets:
            raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(cls.presets)}.")
        values = copy.deepcopy(cls.presets[name])
        values.update(overrides)
        return cls(**values)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_one_of(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {list(allowed)}, got {value!r}.")


def check_positive_int(name: str, value: Any) -> None:
    if not is_int(value) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def check_positive_int_list(name: str, value: Any) -> None:
    if not isinstance(value, list) or not value or not all(is_int(item) and item > 0 for item in value):
        raise ValueError(f"`{name}` must be a non-empty list of positive integers, got {value!r}.")
