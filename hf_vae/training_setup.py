"""Setting a training run up: the launch check, the output folder, the data, the model (any family, new from a
preset or continued from a saved folder), and the hyper-parameters given to trackers."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .data import DataError, ImageDataSplits, ImageTensors, check_matches_config, load_splits
from .families import config_from_preset, load_pretrained, model_class, presets
from .training_args import (
    DEFAULT_SHUFFLE_BUFFER_SIZE,
    DEFAULT_STREAMING_EVAL_SAMPLES,
    DEFAULT_VALIDATION_SPLIT,
    DataArguments,
    ModelArguments,
    TrainingArguments,
)

logger = logging.getLogger(__name__)

LAUNCH_HINT = (
    "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
    "--dynamo_backend no scripts/train.py ..."
)


class TrainingSetupError(ValueError):
    """A run that cannot start as asked (launch, output folder, checkpoint, model options)."""


def check_world_size(accelerator: Accelerator) -> None:
    """Refuse two unsynchronised copies: `accelerate launch --multi_gpu` on a machine without GPUs starts processes
    that each believe they are alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and accelerator.num_processes == 1:
        raise TrainingSetupError(
            f"The launcher started {world_size} processes (WORLD_SIZE={world_size}) but accelerate sees only one, so "
            f"each would train its own unsynchronised copy. Without GPUs, launch on CPU with `{LAUNCH_HINT}` "
            "(`accelerate launch --cpu` starts a single process)."
        )


def in_training_layout(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Convolutional models train on a CPU with weights and activations in channels-last (NHWC) layout, which
    oneDNN's convolutions (and BatchNorm's CPU kernels) run faster: 1.65x for mnist-conv's training step here
    (`scripts/benchmark_presets.py --variants eager channels_last`). The layout changes no value and no weight name:
    the saved weights are the same tensors, written contiguous."""
    has_conv = any(isinstance(module, torch.nn.modules.conv._ConvNd) for module in model.modules())
    if has_conv and device.type == "cpu":
        return model.to(memory_format=torch.channels_last)
    return model


def compiled_for_training(model: torch.nn.Module, args: TrainingArguments) -> torch.nn.Module:
    """`model` compiled with `torch.compile` under --torch_compile (else itself). Inductor's FX graph and
    AOTAutograd caches (on by default, in TORCHINDUCTOR_CACHE_DIR or /tmp/torchinductor_$USER) keep the compiled
    code on disk, so a second run of the same model and batch shapes skips most of the compile time."""
    if not args.torch_compile:
        return model
    mode = None if args.torch_compile_mode in (None, "default") else args.torch_compile_mode
    # Static shapes: the epoch's last, smaller batch gets its own graph (there are only two batch sizes), and the
    # models' `torch.randn(shape, generator=None)` cannot be traced with a symbolic batch size.
    return torch.compile(model, backend=args.torch_compile_backend or "inductor", mode=mode, dynamic=False)


def check_output_dir(args: TrainingArguments, output_dir: Path) -> None:
    """Never write over a finished run by accident."""
    from .checkpointing import CHECKPOINTS_DIR

    if args.overwrite_output_dir or args.resume_from_checkpoint is not None or not output_dir.is_dir():
        return
    found = sorted(
        name
        for name in ("config.json", "metrics.csv", "train_results.json", CHECKPOINTS_DIR)
        if (output_dir / name).exists()
    )
    if found:
        raise TrainingSetupError(
            f"{output_dir} already holds a training run ({', '.join(found)}). Pass --resume_from_checkpoint latest to "
            "continue it, --overwrite_output_dir to replace it, or another --output_dir."
        )


def load_data(
    data_args: DataArguments, model_args: ModelArguments, seed: int, accelerator: Accelerator
) -> ImageDataSplits:
    """Decoded splits, resized / converted when --image_size / --num_channels are given. The main process decodes
    first so that the others read its cache. With --streaming the train split is this process's `ImageStream`
    (`hf_vae.streaming`) and the validation and test splits their first --max_eval_samples images."""
    if data_args.streaming:
        return _load_streaming_data(data_args, model_args, seed, accelerator)
    validation_split = data_args.validation_split
    with accelerator.main_process_first():
        splits = load_splits(
            data_args.dataset_name,
            data_args.dataset_config_name,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            validation_split=DEFAULT_VALIDATION_SPLIT if validation_split is None else validation_split,
            seed=seed,
            image_size=model_args.image_size,
            num_channels=model_args.num_channels,
            cache_dir=data_args.cache_dir,
        )
    if data_args.max_train_samples is not None:
        splits.train = _first(splits.train, data_args.max_train_samples)
    if data_args.max_eval_samples is not None:
        splits.validation = _first(splits.validation, data_args.max_eval_samples)
        if splits.test is not None:
            splits.test = _first(splits.test, data_args.max_eval_samples)
    return splits


def _load_streaming_data(
    data_args: DataArguments, model_args: ModelArguments, seed: int, accelerator: Accelerator
) -> ImageDataSplits:
    from .streaming import load_streaming_splits

    for count in (data_args.max_train_samples, data_args.max_eval_samples):
        if count is not None and count < 1:
            raise DataError(f"--max_train_samples / --max_eval_samples must be at least 1, got {count}.")
    buffer_size = data_args.shuffle_buffer_size
    with accelerator.main_process_first():
        return load_streaming_splits(
            data_args.dataset_name,
            data_args.dataset_config_name,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            seed=seed,
            image_size=model_args.image_size,
            num_channels=model_args.num_channels,
            cache_dir=data_args.cache_dir,
            shuffle_buffer_size=DEFAULT_SHUFFLE_BUFFER_SIZE if buffer_size is None else buffer_size,
            max_train_samples=data_args.max_train_samples,
            eval_samples=data_args.max_eval_samples or DEFAULT_STREAMING_EVAL_SAMPLES,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
        )


def _first(data: ImageTensors, count: int) -> ImageTensors:
    if count < 1:
        raise DataError(f"--max_train_samples / --max_eval_samples must be at least 1, got {count}.")
    return data.select(torch.arange(min(count, len(data))))


def with_image_shape_of(model_args: ModelArguments, data: ImageTensors) -> ModelArguments:
    """A new model takes the image size and channels of the (decoded) data unless --image_size / --num_channels
    give them; a saved model keeps its own, and `check_data` refuses data of another shape."""
    if model_args.model_name_or_path is not None:
        return model_args
    return dataclasses.replace(
        model_args,
        image_size=model_args.image_size or data.image_size,
        num_channels=model_args.num_channels or data.num_channels,
    )


def check_model_options(model_args: ModelArguments) -> None:
    """Build the config a new model would have (not the model, and before any data is read), so that a bad option
    value fails at once rather than after decoding the dataset."""
    if model_args.model_name_or_path is not None:
        return
    try:
        family = presets().get(model_args.preset)
        config_from_preset(model_args.preset, **_supported(model_args.config_overrides(), family))
    except ValueError as error:
        if isinstance(error, TrainingSetupError):
            raise
        raise TrainingSetupError(str(error)) from error


def build_model(model_args: ModelArguments) -> torch.nn.Module:
    """A new model of the preset's family (with the options given on the command line), or a saved model of any
    family to continue training."""
    given = model_args.config_overrides()
    try:
        if model_args.model_name_or_path is None:
            family = presets().get(model_args.preset)
            overrides = _supported(given, family)
            config = config_from_preset(model_args.preset, **overrides)
            return model_class(config.model_type)(config)
        source = model_args.model_name_or_path
        if source.startswith((".", "/", "~")) and not Path(source).expanduser().is_dir():
            raise TrainingSetupError(f"--model_name_or_path: no saved model folder at {source!r}; check the path.")
        try:
            model = load_pretrained(source)
        except Exception as error:  # from_pretrained only reads the folder: any failure means damaged or foreign files
            raise TrainingSetupError(
                f"--model_name_or_path {source!r}: cannot load a hf-vae model ({type(error).__name__}: {error}). "
                "Pass a folder written by `hf-vae train` / `save_pretrained` (config.json and model.safetensors)."
            ) from error
        overrides = _supported(given, model.config.model_type)
        changed = {name: value for name, value in overrides.items() if getattr(model.config, name, None) != value}
        if not changed:
            return model
        updated = type(model)(type(model.config).from_dict({**model.config.to_dict(), **changed}))
    except (OSError, ValueError) as error:  # a bad preset, option value or model folder
        if isinstance(error, TrainingSetupError):
            raise
        raise TrainingSetupError(str(error)) from error
    old_shapes = {name: tensor.shape for name, tensor in model.state_dict().items()}
    new_shapes = {name: tensor.shape for name, tensor in updated.state_dict().items()}
    if old_shapes != new_shapes:
        raise TrainingSetupError(
            f"{sorted(changed)} would change the network of {model_args.model_name_or_path!r}, so its weights would "
            "not fit. Only options such as --beta, --free_bits, --dropout or --binarize can change when continuing "
            "from a saved model; drop the others or train a new model with --preset."
        )
    updated.load_state_dict(model.state_dict())
    return updated


def _supported(given: dict[str, Any], model_type: str | None) -> dict[str, Any]:
    """The options given, checked against the fields of the family's config."""
    if model_type is None:
        return given
    from .families import config_class

    fields = {item.name for item in dataclasses.fields(config_class(model_type))}
    unsupported = sorted(set(given) - fields)
    if unsupported:
        raise TrainingSetupError(
            f"The {model_type!r} family has no option(s) {['--' + name for name in unsupported]}; drop them."
        )
    return given


def check_data(splits: ImageDataSplits, config) -> None:
    """Refuse splits whose image shape or labels do not fit the model's config."""
    for name in ("train", "validation", "test"):
        if getattr(splits, name) is not None:
            check_matches_config(getattr(splits, name), config.image_size, config.num_channels, name)
    if config.num_classes is not None:
        if splits.label_column is None:
            raise DataError(
                f"--num_classes {config.num_classes} trains a conditional VAE, which needs class labels, but no label "
                f"column was found (columns: {splits.column_names}). Pass --label_column NAME, or drop --num_classes."
            )
        for name in ("train", "validation", "test"):
            labels = getattr(splits, name).labels if getattr(splits, name) is not None else None
            if labels is not None and (labels.min() < 0 or labels.max() >= config.num_classes):
                raise DataError(
                    f"The {name} labels span [{int(labels.min())}, {int(labels.max())}] but --num_classes is "
                    f"{config.num_classes}: labels must lie in [0, num_classes). Pass --num_classes "
                    f"{int(labels.max()) + 1}."
                )


def tracker_config(arguments: dict[str, Any], config) -> dict[str, Any]:
    """Hyper-parameters for trackers, which accept only scalars."""
    values = {**{f"model/{k}": v for k, v in config.to_diff_dict().items()}, **arguments}
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in values.items()}


__all__ = [
    "LAUNCH_HINT",
    "TrainingSetupError",
    "build_model",
    "check_data",
    "check_model_options",
    "check_output_dir",
    "check_world_size",
    "compiled_for_training",
    "in_training_layout",
    "load_data",
    "tracker_config",
    "with_image_shape_of",
]
