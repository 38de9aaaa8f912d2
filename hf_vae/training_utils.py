"""Building blocks of the training loop (`hf_vae.training`): loop state and checkpoints, model and data set-up,
evaluation, optimiser and schedule, file writing, and the on-device loss bookkeeping."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, broadcast
from transformers import get_scheduler

from .configuration_vae import VAEConfig
from .data import (
    DataError,
    ImageDataSplits,
    ImageTensors,
    binarize_statically,
    check_matches_config,
    load_splits,
    to_pixel_values,
)
from .modeling_vae import VAEModel
from .training_args import DataArguments, ModelArguments, TrainingArguments

logger = logging.getLogger(__name__)

METRICS_COLUMNS = (
    "epoch",
    "train_loss",
    "train_recon_loss",
    "train_kl_loss",
    "val_loss",
    "val_recon_loss",
    "val_kl_loss",
    "learning_rate",
    "epoch_time",
)
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
_LAUNCH_HINT = (
    "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no "
    "--dynamo_backend no scripts/train.py ..."
)


class TrainingSetupError(ValueError):
    """A run that cannot start as asked (launch, output folder, checkpoint, model options)."""


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN/inf; nothing was saved from the broken state."""


# ---------------------------------------------------------------------------------------------- state
@dataclass
class LoopState:
    """Where the loop is, saved as `trainer_state.json` in every checkpoint (its presence marks the checkpoint
    complete). Together with accelerate's model/optimiser/RNG states it makes a resumed run continue exactly."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_time: float = 0.0
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    best_val_loss: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    epochs_without_improvement: int = 0
    kl_weight: float = 1.0
    history: list[dict[str, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- model & data
def build_model(model_args: ModelArguments) -> VAEModel:
    """A new model from a preset (with overrides), or a saved model to continue training."""
    try:
        overrides = model_args.config_overrides()
        if model_args.model_name_or_path is None:
            return VAEModel(VAEConfig.from_preset(model_args.preset, **overrides))
        source = model_args.model_name_or_path
        if source.startswith((".", "/", "~")) and not Path(source).expanduser().is_dir():
            raise TrainingSetupError(f"--model_name_or_path: no saved model folder at {source!r}; check the path.")
        try:
            model = VAEModel.from_pretrained(source)
        except Exception as error:  # from_pretrained only reads the folder: any failure means damaged or foreign files
            raise TrainingSetupError(
                f"--model_name_or_path {source!r}: cannot load a hf-vae model ({type(error).__name__}: {error}). "
                "Pass a folder written by `hf-vae train` / `save_pretrained` (config.json and model.safetensors)."
            ) from error
        changed = {name: value for name, value in overrides.items() if getattr(model.config, name, None) != value}
        if not changed:
            return model
        updated = VAEModel(VAEConfig.from_dict({**model.config.to_dict(), **changed}))
    except (OSError, ValueError) as error:  # a bad preset, option value or model folder
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


def with_image_shape_of(model_args: ModelArguments, data: ImageTensors) -> ModelArguments:
    """A new model takes the image size and channels of the (decoded) data unless --image_size / --num_channels
    give them; a saved model keeps its own, and `check_data` refuses data of another shape."""
    if model_args.model_name_or_path is not None:
        return model_args
    return replace(
        model_args,
        image_size=model_args.image_size or data.image_size,
        num_channels=model_args.num_channels or data.num_channels,
    )


def load_data(
    data_args: DataArguments, model_args: ModelArguments, seed: int, accelerator: Accelerator
) -> ImageDataSplits:
    """Decoded splits, resized / converted when --image_size / --num_channels are given. The main process decodes
    first so that the others read its cache."""
    with accelerator.main_process_first():
        splits = load_splits(
            data_args.dataset_name,
            data_args.dataset_config_name,
            image_column=data_args.image_column,
            label_column=data_args.label_column,
            validation_split=data_args.validation_split,
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


def check_data(splits: ImageDataSplits, config: VAEConfig) -> None:
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


def _first(data: ImageTensors, count: int) -> ImageTensors:
    if count < 1:
        raise DataError(f"--max_train_samples / --max_eval_samples must be at least 1, got {count}.")
    return data.select(torch.arange(min(count, len(data))))


def evaluation_images(data: ImageTensors, binarize: str, seed: int) -> ImageTensors:
    """A split as a binarised model is evaluated on: one fixed Bernoulli draw, so that curves do not jitter."""
    if binarize == "none":
        return data
    return ImageTensors(binarize_statically(data.images, seed), data.labels)


def per_image_losses(
    model: VAEModel, pixel_values: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """(B, 3): loss (reconstruction + beta * KL), reconstruction and KL of each image in nats, with z sampled as
    the reference evaluates."""
    outputs = model(pixel_values, labels=labels, generator=generator)
    reconstruction = model.reconstruction_nll(outputs.logits, pixel_values)
    kl = model.kl_per_dimension(outputs.mean, outputs.logvar).sum(1)
    return torch.stack((reconstruction + model.config.beta * kl, reconstruction, kl), dim=1)


@torch.no_grad()
def evaluate(
    model: VAEModel,
    batches,
    seed: int,
    gather=None,
) -> tuple[dict[str, float], int]:
    """Mean loss, reconstruction and KL over every image of `batches` (uint8 batch dicts), in eval mode with z drawn
    from a generator seeded with `seed`. Under several processes, `gather` (`accelerator.gather_for_metrics`)
    collects every image exactly once."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=model.device).manual_seed(seed)
    totals = torch.zeros(3, dtype=torch.float64, device=model.device)
    count = 0
    for batch in batches:
        losses = per_image_losses(
            model, to_pixel_values(batch["pixel_values"].to(model.device)), _labels(model, batch), generator
        )
        if gather is not None:
            losses = gather(losses)
        totals += losses.double().sum(0)
        count += losses.shape[0]
    model.train(was_training)
    loss, reconstruction, kl = (totals / max(count, 1)).tolist()
    return {"loss": loss, "recon_loss": reconstruction, "kl_loss": kl}, count


def _labels(model: VAEModel, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    if model.config.num_classes is None:
        return None
    return batch["labels"].to(model.device)


def tensor_batches(data: ImageTensors, batch_size: int):
    for start in range(0, len(data), batch_size):
        batch = {"pixel_values": data.images[start : start + batch_size]}
        if data.labels is not None:
            batch["labels"] = data.labels[start : start + batch_size]
        yield batch


# ---------------------------------------------------------------------------------------------- setup
def check_world_size(accelerator: Accelerator) -> None:
    """Refuse two unsynchronised copies: `accelerate launch --multi_gpu` on a machine without GPUs starts processes
    that each believe they are alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size > 1 and accelerator.num_processes == 1:
        raise TrainingSetupError(
            f"The launcher started {world_size} processes (WORLD_SIZE={world_size}) but accelerate sees only one, so "
            f"each would train its own unsynchronised copy. Without GPUs, launch on CPU with `{_LAUNCH_HINT}` "
            "(`accelerate launch --cpu` starts a single process)."
        )


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Complete checkpoints (those holding `trainer_state.json`, written last), oldest first."""
    found = []
    for path in (output_dir / CHECKPOINTS_DIR).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_checkpoint(value: str | None, output_dir: Path) -> Path | None:
    """The checkpoint `--resume_from_checkpoint` names: a folder, or 'latest' (None when there is none yet)."""
    if value is None:
        return None
    if value == "latest":
        folders = checkpoint_folders(output_dir)
        return folders[-1] if folders else None
    path = Path(value)
    if not (path / STATE_FILE).is_file():
        raise TrainingSetupError(
            f"{path} is not a complete checkpoint (it has no {STATE_FILE}). Pass a folder such as "
            f"{output_dir / CHECKPOINTS_DIR}/checkpoint-N, or 'latest' for the newest one in --output_dir."
        )
    return path


# ---------------------------------------------------------------------------------------------- resuming safely
_CHECKPOINT_ADVICE = (
    "Resume from an older checkpoint (pass its folder to --resume_from_checkpoint) or start again with "
    "--overwrite_output_dir."
)
# trainer_state.json: field -> accepted JSON types (bool is refused where a number is expected).
_LOOP_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "global_step": (int,),
    "epoch": (int,),
    "step_in_epoch": (int,),
    "epoch_time": (int, float),
    "epoch_sums": (list,),
    "best_val_loss": (int, float, type(None)),
    "best_epoch": (int, type(None)),
    "best_step": (int, type(None)),
    "epochs_without_improvement": (int,),
    "kl_weight": (int, float),
    "history": (list,),
}


def _damaged_checkpoint(path: Path, problem: str) -> TrainingSetupError:
    return TrainingSetupError(f"{path} {problem}; the checkpoint is damaged. {_CHECKPOINT_ADVICE}")


def check_checkpoint_folder(folder: Path) -> None:
    """Read every file of an accelerate checkpoint the safe way before `accelerator.load_state` restores it, so that
    a damaged, truncated or crafted checkpoint is a `TrainingSetupError` naming the file, raised before the run
    writes anything.

    Why not just catch what `load_state` raises: accelerate restores the objects registered with
    `register_for_checkpointing` (the learning-rate scheduler) with `torch.load(weights_only=False)`, which runs any
    code a crafted `custom_checkpoint_N.pkl` holds, and it skips an unreadable RNG state with an INFO line, so the
    resumed run would silently stop being exact. Here every pickle is loaded with `weights_only=True` (accelerate's
    own loader, which allows its numpy RNG types and never runs code from the file) and the RNG states are tried on
    throwaway generators; a file that only a full unpickler could read is refused, so accelerate's unsafe load never
    sees it."""
    from accelerate.utils import load as weights_only_load  # weights_only=True + accelerate's numpy allow-list
    from safetensors.torch import load_file

    try:
        names = {path.name for path in folder.iterdir()}
    except OSError as error:
        raise TrainingSetupError(f"Cannot read checkpoint folder {folder}: {error.strerror or error}.") from None
    missing = [name for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl") if name not in names]
    if missing:
        raise _damaged_checkpoint(folder, f"lacks {missing}, which every hf-vae checkpoint holds")
    for name in sorted(names):
        path = folder / name
        if path.suffix not in (".safetensors", ".bin", ".pkl", ".pt") or path.is_dir():
            continue
        try:
            if path.suffix == ".safetensors":
                load_file(path)
                continue
            with warnings.catch_warnings():  # torch's "unusual pickle protocol" hint: the error below says more
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                loaded = weights_only_load(path, map_location="cpu")
            if name.startswith("random_states_"):
                _check_random_states(loaded)
        except Exception as error:  # weights_only=True runs no code from the file: any failure means bad bytes
            message = " ".join(str(error).split())
            unsafe = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)", message)
            if unsafe:
                raise TrainingSetupError(
                    f"Refused {path}: it is not plain tensors and numbers, it asks to run "
                    f"{unsafe.group(1)!r} when unpickled, which could execute arbitrary code; "
                    f"hf-vae never unpickles code. {_CHECKPOINT_ADVICE}"
                ) from None
            reason = message.split(". ")[0][:200] if message else "no details"
            raise _damaged_checkpoint(path, f"cannot be read ({type(error).__name__}: {reason})") from None


def _check_random_states(states: Any) -> None:
    """Apply the saved RNG states to throwaway generators: what accelerate would apply, or else skip silently."""
    import random

    import numpy as np

    if not isinstance(states, dict):
        raise ValueError(f"holds a {type(states).__name__}, not the RNG states")
    random.Random().setstate(states["random_state"])
    np.random.RandomState().set_state(states["numpy_random_seed"])
    torch.Generator().set_state(states["torch_manual_seed"])


def read_loop_state(folder: Path) -> LoopState:
    """The loop state in a checkpoint's `trainer_state.json`, every field checked: a damaged file is a
    `TrainingSetupError` rather than a `TypeError` in the middle of the resumed loop."""
    path = folder / STATE_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _damaged_checkpoint(path, f"cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(values, dict):
        raise _damaged_checkpoint(path, f"holds a {type(values).__name__}, not a loop state (a JSON object)")
    unknown = sorted(str(key) for key in values if key not in _LOOP_STATE_TYPES)
    if unknown:
        raise TrainingSetupError(
            f"{path} has fields {unknown} that this hf-vae does not know: it is damaged or was written by another "
            f"version. {_CHECKPOINT_ADVICE}"
        )
    for key, value in values.items():
        types = _LOOP_STATE_TYPES[key]
        wrong = isinstance(value, bool) or not isinstance(value, types)
        if not wrong and isinstance(value, (int, float)):
            wrong = not math.isfinite(value) or (int in types and float not in types and value < 0)
        if not wrong and key == "epoch_sums":
            wrong = not all(_is_number(item) for item in value)
        if not wrong and key == "history":
            wrong = not all(isinstance(row, dict) and all(_is_number(item) for item in row.values()) for row in value)
        if wrong:
            raise _damaged_checkpoint(path, f"has {key}={value!r}, which is not a valid value")
    return LoopState(**values)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_checkpoint_state(accelerator: Accelerator, folder: Path) -> LoopState:
    """`accelerator.load_state(folder)` for `--resume_from_checkpoint`, made safe: every file is first read without
    running code (`check_checkpoint_folder`), the restore itself turns any failure into a `TrainingSetupError`, and
    the restored optimiser state is checked against the parameters (torch accepts moment tensors of another shape,
    which would fail at the first step). Returns the checkpoint's loop state."""
    check_checkpoint_folder(folder)
    state = read_loop_state(folder)
    try:
        accelerator.load_state(str(folder))
    except Exception as error:  # every file was read safely above: what fails here is a mismatch with this run
        message = " ".join(str(error).split())[:300]
        raise TrainingSetupError(
            f"{folder} does not fit this run ({type(error).__name__}: {message}): it was saved for another model "
            "or optimiser. Resume with the options of the run that wrote it (its training_args.json), or start "
            "again with --overwrite_output_dir."
        ) from None
    for optimizer in accelerator._optimizers:  # accelerate's list of the prepared optimisers
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                for name, value in optimizer.state.get(parameter, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                        raise _damaged_checkpoint(
                            folder / "optimizer.bin",
                            f"holds an optimiser state {name!r} of shape {tuple(value.shape)} for a parameter of "
                            f"shape {tuple(parameter.shape)}",
                        )
    return state


def check_output_dir(args: TrainingArguments, output_dir: Path) -> None:
    """Never write over a finished run by accident."""
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


def create_optimizer(model: torch.nn.Module, args: TrainingArguments, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (Adam when weight_decay is 0), fused into one kernel launch per step where torch supports it: the
    per-tensor Adam loop is a quarter of a small model's step time. Biases and norm weights are not decayed."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if args.weight_decay > 0:
        groups = [
            {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": args.weight_decay},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": parameters, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=device.type in ("cpu", "cuda") or None,
    )


METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")
PLAIN_OPTIMIZER_BACKENDS = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def create_scheduler(optimizer: torch.optim.Optimizer, args: TrainingArguments, max_steps: int):
    """transformers' schedules by name; 'reduce_lr_on_plateau' with the reference's factor 0.5 and patience 5,
    stepped on the validation loss once per epoch."""
    specific = (
        {"mode": "min", "factor": 0.5, "patience": 5} if args.lr_scheduler_type == "reduce_lr_on_plateau" else None
    )
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.warmup_steps,
        num_training_steps=max_steps,
        scheduler_specific_kwargs=specific,
    )


def kl_weight_at(step: int, warmup_steps: int) -> float:
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


def binarization_seed(seed: int, process_index: int, epoch: int, step_in_epoch: int) -> int:
    """Seed of one batch's dynamic binarisation: a function of the position alone, so that a resumed run (and every
    process) draws exactly what an uninterrupted run draws, with no generator state to save."""
    value = seed
    for part in (process_index, epoch, step_in_epoch):
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


# ---------------------------------------------------------------------------------------------- files
def save_checkpoint(accelerator: Accelerator, state: LoopState, output_dir: Path, save_total_limit: int | None) -> Path:
    """`accelerator.save_state` into a staging folder, then the loop state, then one atomic rename: a killed
    process leaves either a complete `checkpoint-N` or a staging folder that is ignored (and removed later)."""
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"checkpoint-{state.global_step}"
    staging = root / f".staging-checkpoint-{state.global_step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        if save_total_limit is not None:
            for old in checkpoint_folders(output_dir)[:-save_total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_model_atomically(model: VAEModel, output_dir: Path) -> None:
    """`save_pretrained` into a staging folder, then move each file into place with an atomic rename."""
    staging = output_dir / ".staging-model"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)
    staging.rmdir()


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """metrics.csv, one row per epoch with the reference's columns, rewritten whole (atomically) each epoch."""
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(staging, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def tracker_config(arguments: dict[str, Any], config: VAEConfig) -> dict[str, Any]:
    """Hyper-parameters for trackers, which accept only scalars."""
    values = {**{f"model/{k}": v for k, v in config.to_diff_dict().items()}, **arguments}
    return {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in values.items()}


@contextlib.contextmanager
def _isolated_rng(device: torch.device):
    """Run code (pictures) without consuming the training RNG streams, so that runs with and without pictures
    train identically."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def save_figures(model: VAEModel, data: ImageTensors, output_dir: Path, metrics_csv: Path, seed: int) -> None:
    try:
        from .visualization import save_figures as write_figures
    except ModuleNotFoundError as error:
        if error.name != f"{__package__}.visualization":
            raise
        logger.warning("hf_vae.visualization is not available: no figures written.")
        return
    with _isolated_rng(model.device):
        write_figures(model, data, output_dir, metrics_csv=metrics_csv, seed=seed)


# ---------------------------------------------------------------------------------------------- the loop
class RunningLosses:
    """Training losses kept on the device and read every `--logging_steps` steps: reading them every step would
    stall a GPU pipeline. Each read checks them for NaN/inf and names the first bad step."""

    def __init__(self, accelerator: Accelerator, carried: list[float]):
        self.accelerator = accelerator
        self.pending: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
        if accelerator.is_main_process:
            self.sums += torch.tensor(carried, dtype=torch.float64, device=accelerator.device)

    def add(self, step: int, batch_size: int, outputs) -> None:
        self.pending.append(
            (step, batch_size, outputs.loss.detach(), outputs.reconstruction_loss.detach(), outputs.kl_loss.detach())
        )

    def flush(self, epoch: int, last_checkpoint: Path | None) -> torch.Tensor | None:
        """Fold pending losses into the epoch sums; return the last step's (loss, recon, KL), or None."""
        if not self.pending:
            return None
        values = torch.stack([torch.stack(entry[2:]) for entry in self.pending]).double()
        sizes = torch.tensor([entry[1] for entry in self.pending], dtype=torch.float64, device=values.device)
        finite = torch.isfinite(values).all(dim=1)
        diverged = ~finite.all()
        if self.accelerator.num_processes > 1:
            diverged = self.accelerator.gather(diverged.view(1)).any()
        if diverged:
            bad = (~finite).nonzero()
            where = (
                f"at global step {self.pending[int(bad[0])][0]}"
                if len(bad)
                else f"on another process, by global step {self.pending[-1][0]}"
            )
            checkpoint = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint exists"
            raise TrainingDivergedError(
                f"The training loss became NaN/inf {where} (epoch {epoch + 1}). Training stopped without saving the "
                f"broken state; {checkpoint}. Lower --learning_rate, clip gradients with --max_grad_norm, or anneal "
                "the KL term with --kl_warmup_steps."
            )
        self.sums += torch.cat(((values * sizes[:, None]).sum(0), sizes.sum().view(1)))
        self.pending.clear()
        return values[-1]

    def epoch_totals(self) -> list[float]:
        """(loss, recon, KL, images) summed over every process; a collective call."""
        return self.accelerator.reduce(self.sums.clone(), reduction="sum").tolist()

    def reset(self) -> None:
        self.sums.zero_()


def sync_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Give every process the main process's BatchNorm statistics (DDP broadcasts them only at each forward), so
    that all evaluate, and end with, the model the main process saves."""
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            broadcast(buffer, from_process=0)


def parameters_checksum(model: torch.nn.Module) -> torch.Tensor:
    flat = torch.cat([parameter.detach().double().flatten() for parameter in model.parameters()])
    positions = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return torch.stack((flat.sum(), (flat * positions).sum(), flat.abs().sum()))


def check_finite_weights(model: torch.nn.Module, state: LoopState) -> None:
    if not all(torch.isfinite(parameter).all() for parameter in model.parameters()):
        raise TrainingDivergedError(
            f"The weights became NaN/inf by global step {state.global_step} (epoch {state.epoch + 1}). Training "
            "stopped without saving them. Lower --learning_rate or clip gradients with --max_grad_norm."
        )
