"""`hf-vae train`: train a VAE with an Accelerate loop, on one CPU, one GPU or many processes.

Laid out like accelerate's `examples/complete_nlp_example.py`: arguments -> Accelerator -> data -> model,
optimiser, scheduler -> `accelerator.prepare` -> (resume) -> epochs of steps with evaluation and checkpoints ->
final evaluation and files. Run it as `hf-vae train ...`, `python scripts/train.py ...` or under
`accelerate launch scripts/train.py ...`.

The loop is built for speed on small models, where per-step overheads rival the matrix products: batches are
sliced from uint8 tensors decoded once (see `hf_vae.data`), Adam is the fused implementation, and the losses stay
on the device until they are read every `--logging_steps` steps (which is also when they are checked for NaN).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from .configuration_vae import VAEConfig
from .data import (
    DataError,
    ImageDataSplits,
    ImageTensorDataset,
    ImageTensors,
    binarize_statically,
    check_matches_config,
    collate_batch,
    load_splits,
    to_pixel_values,
)
from .modeling_vae import VAEModel
from .training_args import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    parse_args,
    resolve_defaults,
    save_arguments,
)

logger = get_logger(__name__)

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
# The test split is binarised (for binarised models) and z drawn with this seed, as `hf-vae evaluate` does.
EVALUATION_SEED = 0
# Test hook: SIGKILL this process right after the given optimiser step (and its checkpoint, if any).
KILL_AFTER_STEP_ENV = "HF_VAE_TEST_KILL_AFTER_STEP"
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
        model = VAEModel.from_pretrained(source)
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


def _tensor_batches(data: ImageTensors, batch_size: int):
    for start in range(0, len(data), batch_size):
        batch = {"pixel_values": data.images[start : start + batch_size]}
        if data.labels is not None:
            batch["labels"] = data.labels[start : start + batch_size]
        yield batch


# ---------------------------------------------------------------------------------------------- setup
def _check_world_size(accelerator: Accelerator) -> None:
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


def _check_output_dir(args: TrainingArguments, output_dir: Path) -> None:
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
_PLAIN_OPTIMIZER_BACKENDS = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


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


def _kl_weight(step: int, warmup_steps: int) -> float:
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


def _step_seed(seed: int, process_index: int, epoch: int, step_in_epoch: int) -> int:
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _tracker_config(arguments: dict[str, Any], config: VAEConfig) -> dict[str, Any]:
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


def _sync_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Give every process the main process's BatchNorm statistics (DDP broadcasts them only at each forward), so
    that all evaluate, and end with, the model the main process saves."""
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            broadcast(buffer, from_process=0)


def _parameters_checksum(model: torch.nn.Module) -> torch.Tensor:
    flat = torch.cat([parameter.detach().double().flatten() for parameter in model.parameters()])
    positions = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return torch.stack((flat.sum(), (flat * positions).sum(), flat.abs().sum()))


def _check_finite_weights(model: torch.nn.Module, state: LoopState) -> None:
    if not all(torch.isfinite(parameter).all() for parameter in model.parameters()):
        raise TrainingDivergedError(
            f"The weights became NaN/inf by global step {state.global_step} (epoch {state.epoch + 1}). Training "
            "stopped without saving them. Lower --learning_rate or clip gradients with --max_grad_norm."
        )


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict[str, Any]:
    """Train, evaluate and write everything to `args.output_dir`; return the train results."""
    run_started = time.perf_counter()
    args = resolve_defaults(model_args, args)
    output_dir = Path(args.output_dir)
    trackers = [name for name in args.report_to_list if name != "none"]
    accelerator = Accelerator(
        cpu=args.use_cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    print(f"hf-vae rank {accelerator.process_index} of {accelerator.num_processes}", file=sys.stderr, flush=True)
    _check_world_size(accelerator)
    _check_output_dir(args, output_dir)
    resume_from = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    if args.resume_from_checkpoint == "latest" and resume_from is None:
        logger.warning(f"No complete checkpoint in {output_dir / CHECKPOINTS_DIR}: starting from scratch.")
    accelerator.wait_for_everyone()
    # accelerate logs every checkpoint file at INFO and transformers draws a bar per save and load: keep the console
    # to the epoch lines.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    if accelerator.is_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
    set_seed(args.seed)

    # Data, then the model: a new one takes the data's image shape unless given. The binarisation used is recorded in
    # the config, so evaluation binarises the same way.
    splits = load_data(data_args, model_args, args.seed, accelerator)
    model_args = with_image_shape_of(model_args, splits.train)
    model = build_model(model_args)
    config = model.config
    check_data(splits, config)
    train_data = splits.train
    if config.binarize == "static":
        train_data = ImageTensors(binarize_statically(train_data.images, args.seed), train_data.labels)
    validation = evaluation_images(splits.validation, config.binarize, args.seed)
    dynamic = config.binarize == "dynamic"
    conditional = config.num_classes is not None
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if args.overwrite_output_dir and args.resume_from_checkpoint is None:
            shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)
        for stale in (output_dir / CHECKPOINTS_DIR).glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        save_arguments((model_args, data_args, args), output_dir / "training_args.json")

    # The loaders have their own generators: iterating them must not consume the global RNG that dropout and the
    # posterior samples draw from, or a resumed run would drift from an uninterrupted one.
    train_loader = DataLoader(
        ImageTensorDataset(train_data),
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=collate_batch,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = DataLoader(
        ImageTensorDataset(validation),
        batch_size=args.per_device_eval_batch_size,
        collate_fn=collate_batch,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = create_optimizer(model, args, accelerator.device)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    unwrapped: VAEModel = accelerator.unwrap_model(model)
    batches_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps > 0 else args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    metric_scheduler = args.lr_scheduler_type in METRIC_SCHEDULERS
    # Without a gradient scaler, accelerate's optimizer wrapper only adds per-step overhead (a package lookup and a
    # signature inspection, ~80 us here) on top of the torch optimizer, whose step it calls when gradients are synced.
    plain = accelerator.scaler is None and accelerator.distributed_type in _PLAIN_OPTIMIZER_BACKENDS
    step_optimizer = optimizer.optimizer if plain else optimizer
    scheduler = create_scheduler(optimizer.optimizer, args, max_steps)
    accelerator.register_for_checkpointing(scheduler)

    state = LoopState(kl_weight=_kl_weight(0, args.kl_warmup_steps))
    last_checkpoint = resume_from
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = LoopState(**json.loads((resume_from / STATE_FILE).read_text()))
        logger.info(f"Resumed from {resume_from}: epoch {state.epoch + 1}, step {state.global_step}.")
    if trackers:
        accelerator.init_trackers("hf-vae", config=_tracker_config(asdict(args), config))
    checkpoint_every = args.checkpoint_every_steps
    kill_after_step = int(os.environ.get(KILL_AFTER_STEP_ENV, "0") or 0)
    binarize_generator = torch.Generator(device=accelerator.device) if dynamic else None
    accumulate = args.gradient_accumulation_steps > 1
    losses = RunningLosses(accelerator, state.epoch_sums)
    figure_data = splits.test if splits.test is not None else splits.validation
    is_main = accelerator.is_main_process
    progress = tqdm(
        total=max_steps,
        initial=state.global_step,
        desc="Training",
        unit="step",
        disable=not is_main or args.disable_tqdm or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    logger.info(
        f"Training on {len(train_data)} images ({batches_per_epoch} batches of {args.per_device_train_batch_size} per "
        f"process, {accelerator.num_processes} process(es), {accelerator.device}), validating on {len(validation)}; "
        f"{num_epochs} epoch(s), {max_steps} optimiser steps.",
        main_process_only=True,
    )

    side_seconds = 0.0  # validation, checkpoints and figures, to report the speed of the training steps alone

    def validate() -> tuple[dict[str, float], int]:
        """Validation loss over every validation image once; saves the model when it is the best so far."""
        nonlocal side_seconds
        started = time.perf_counter()
        _sync_buffers(unwrapped, accelerator)
        metrics, count = evaluate(unwrapped, eval_loader, args.seed, gather=accelerator.gather_for_metrics)
        if not math.isfinite(metrics["loss"]):
            raise TrainingDivergedError(
                f"The validation loss is {metrics['loss']} at global step {state.global_step} (epoch "
                f"{state.epoch + 1}); nothing was saved. Lower --learning_rate or set --max_grad_norm."
            )
        if state.best_val_loss is None or metrics["loss"] < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.best_step = metrics["loss"], state.epoch + 1, state.global_step
            _check_finite_weights(unwrapped, state)
            if is_main:
                save_model_atomically(unwrapped, output_dir)
        accelerator.log({f"eval/{name}": value for name, value in metrics.items()}, step=state.global_step)
        side_seconds += time.perf_counter() - started
        return metrics, count

    def checkpoint() -> None:
        nonlocal last_checkpoint, side_seconds
        started = time.perf_counter()
        losses.flush(state.epoch, last_checkpoint)
        _check_finite_weights(unwrapped, state)
        state.epoch_sums = losses.epoch_totals()
        state.epoch_time = time.perf_counter() - epoch_started if state.step_in_epoch else 0.0
        last_checkpoint = save_checkpoint(accelerator, state, output_dir, args.save_total_limit)
        side_seconds += time.perf_counter() - started

    train_started = time.perf_counter()
    first_step = state.global_step
    images_trained = 0
    validation_images = 0
    stop_reason = "max_steps" if args.max_steps > 0 else "num_train_epochs"
    for epoch in range(state.epoch, num_epochs):
        state.epoch = epoch
        epoch_started = time.perf_counter() - state.epoch_time
        best_before = state.best_val_loss
        model.train()
        train_loader.set_epoch(epoch)
        batches = train_loader
        if state.step_in_epoch:
            batches = accelerator.skip_first_batches(train_loader, state.step_in_epoch)
        checkpoint_at_epoch_end = checkpoint_every is None and args.checkpointing_steps == "epoch"
        learning_rate = step_optimizer.param_groups[0]["lr"]
        for batch in batches:
            images = batch["pixel_values"]
            if dynamic:
                binarize_generator.manual_seed(
                    _step_seed(args.seed, accelerator.process_index, epoch, state.step_in_epoch)
                )
            pixel_values = to_pixel_values(images, "dynamic" if dynamic else "none", binarize_generator)
            labels = batch["labels"] if conditional else None
            with accelerator.accumulate(model) if accumulate else contextlib.nullcontext():
                outputs = model(pixel_values, labels=labels, kl_weight=state.kl_weight)
                accelerator.backward(outputs.loss)
                synced = accelerator.sync_gradients
                if synced and args.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                if synced:
                    learning_rate = step_optimizer.param_groups[0]["lr"]  # the rate this step used, for the log
                    step_optimizer.step()
                    step_optimizer.zero_grad(set_to_none=True)
                    if not metric_scheduler and not getattr(step_optimizer, "step_was_skipped", False):
                        scheduler.step()  # not after a step the fp16 gradient scaler skipped
            losses.add(state.global_step + 1, images.shape[0], outputs)
            state.step_in_epoch += 1
            images_trained += images.shape[0]
            if not synced:
                continue
            state.global_step += 1
            state.kl_weight = _kl_weight(state.global_step, args.kl_warmup_steps)
            progress.update(1)
            last_batch = state.step_in_epoch == batches_per_epoch
            if state.global_step % args.logging_steps == 0:
                latest = losses.flush(epoch, last_checkpoint)
                if latest is not None:
                    values = dict(zip(("loss", "recon_loss", "kl_loss"), latest.tolist(), strict=True))
                    progress.set_postfix(loss=f"{values['loss']:.2f}", refresh=False)
                    values.update(learning_rate=optimizer.param_groups[0]["lr"], kl_weight=state.kl_weight)
                    accelerator.log({f"train/{name}": value for name, value in values.items()}, step=state.global_step)
            if args.eval_steps and state.global_step % args.eval_steps == 0 and not last_batch:
                losses.flush(epoch, last_checkpoint)
                validate()
                model.train()
            if checkpoint_every and state.global_step % checkpoint_every == 0:
                if last_batch:
                    checkpoint_at_epoch_end = True  # saved after the epoch's evaluation, as a clean epoch boundary
                else:
                    checkpoint()
            if kill_after_step and state.global_step == kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)
            if state.global_step >= max_steps:
                break

        # End of epoch: train figures over all processes, validation, schedules, best model, metrics, checkpoint.
        losses.flush(epoch, last_checkpoint)
        totals = losses.epoch_totals()
        train_metrics = [total / max(totals[3], 1.0) for total in totals[:3]]
        val_metrics, validation_images = validate()
        if metric_scheduler:
            scheduler.step(val_metrics["loss"])
        state.epochs_without_improvement = (
            0 if state.best_val_loss != best_before else state.epochs_without_improvement + 1
        )
        epoch_time = time.perf_counter() - epoch_started
        row = {
            "epoch": epoch + 1,
            "train_loss": train_metrics[0],
            "train_recon_loss": train_metrics[1],
            "train_kl_loss": train_metrics[2],
            "val_loss": val_metrics["loss"],
            "val_recon_loss": val_metrics["recon_loss"],
            "val_kl_loss": val_metrics["kl_loss"],
            "learning_rate": learning_rate,
            "epoch_time": round(epoch_time, 3),
        }
        state.history.append(row)
        if is_main:
            write_metrics(output_dir / "metrics.csv", state.history)
            tqdm.write(
                f"Epoch {epoch + 1:3d} | Total Loss: {train_metrics[0]:.4f} | Recon: {train_metrics[1]:.4f} | "
                f"KL: {train_metrics[2]:.4f} | Val Loss: {val_metrics['loss']:.4f} | LR: {learning_rate:.2e} | "
                f"Time: {epoch_time:.2f}s"
            )
        accelerator.log(
            {"epoch": epoch + 1, "train/epoch_loss": train_metrics[0], "epoch_time": epoch_time}, step=state.global_step
        )
        if (
            is_main
            and args.plot_every_n_epochs
            and (epoch + 1) % args.plot_every_n_epochs == 0
            and not args.skip_figures
        ):
            figures_started = time.perf_counter()
            save_figures(
                unwrapped,
                figure_data,
                output_dir / "figures" / f"epoch-{epoch + 1}",
                output_dir / "metrics.csv",
                args.seed,
            )
            side_seconds += time.perf_counter() - figures_started
        losses.reset()
        state.epoch, state.step_in_epoch, state.epoch_time = epoch + 1, 0, 0.0
        state.epoch_sums = [0.0, 0.0, 0.0, 0.0]
        early_stop = (
            args.early_stopping_patience is not None
            and state.epochs_without_improvement >= args.early_stopping_patience
        )
        if checkpoint_at_epoch_end or (early_stop and args.checkpointing_steps is not None):
            checkpoint()
        if early_stop:
            stop_reason = "early_stopping"
            logger.info(
                f"Early stopping: no better validation loss for {state.epochs_without_improvement} epoch(s).",
                main_process_only=True,
            )
            break
        if state.global_step >= max_steps:
            break
    progress.close()
    train_runtime = time.perf_counter() - train_started
    training_seconds = train_runtime - side_seconds

    # Every process must end with the same weights: compare a float64 checksum of the parameters across processes.
    _sync_buffers(unwrapped, accelerator)
    checksums = accelerator.gather(_parameters_checksum(unwrapped).view(1, -1))
    weights_identical = bool((checksums == checksums[0]).all())
    images_total = int(accelerator.reduce(torch.tensor(images_trained, device=accelerator.device), "sum"))
    results: dict[str, Any] = {}
    if is_main:
        results = _finish(
            args,
            output_dir,
            splits,
            accelerator,
            state,
            {
                "stop_reason": stop_reason,
                "num_processes": accelerator.num_processes,
                "device": str(accelerator.device),
                "mixed_precision": accelerator.mixed_precision,
                "resumed_from_checkpoint": str(resume_from) if resume_from else None,
                "train_images": len(train_data),
                "train_samples_seen": images_total,
                "train_runtime": round(train_runtime, 3),
                "training_steps_seconds": round(training_seconds, 3),
                "train_samples_per_second": round(images_total / training_seconds, 1),
                "train_steps_per_second": round((state.global_step - first_step) / training_seconds, 2),
                "validation_images": validation_images,
                "validation_images_expected": len(validation),
                "weights_identical_across_processes": weights_identical,
                "parameters_checksum": checksums[0].tolist(),
            },
            run_started,
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if not weights_identical:
        raise TrainingDivergedError(
            f"The processes ended with different weights (checksums {checksums.tolist()}): distributed training was "
            "not synchronised."
        )
    return results


def _finish(
    args: TrainingArguments,
    output_dir: Path,
    splits: ImageDataSplits,
    accelerator: Accelerator,
    state: LoopState,
    results: dict[str, Any],
    run_started: float,
) -> dict[str, Any]:
    """Main process only: evaluate the best model on the test split, write results and figures, push."""
    best = VAEModel.from_pretrained(output_dir).to(accelerator.device)
    if splits.test is not None:
        test = evaluation_images(splits.test, best.config.binarize, EVALUATION_SEED)
        metrics, count = evaluate(best, _tensor_batches(test, args.per_device_eval_batch_size), EVALUATION_SEED)
        eval_results = {
            "test_loss": metrics["loss"],
            "test_recon_loss": metrics["recon_loss"],
            "test_kl_loss": metrics["kl_loss"],
            "test_images": count,
            "binarize": best.config.binarize,
            "binarize_seed": None if best.config.binarize == "none" else EVALUATION_SEED,
            "posterior": f"z sampled (generator seed {EVALUATION_SEED}), eval mode",
            "best_epoch": state.best_epoch,
        }
        _write_json(output_dir / "eval_results.json", eval_results)
        tqdm.write(
            f"Test ({count} images, best model of epoch {state.best_epoch}): loss {metrics['loss']:.4f} | "
            f"recon {metrics['recon_loss']:.4f} | KL {metrics['kl_loss']:.4f} nats per image"
        )
    if not args.skip_figures:
        figure_data = splits.test if splits.test is not None else splits.validation
        save_figures(best, figure_data, output_dir, output_dir / "metrics.csv", args.seed)
    last = state.history[-1] if state.history else {}
    results.update(
        {
            "epochs_completed": state.epoch,
            "global_step": state.global_step,
            "best_val_loss": state.best_val_loss,
            "best_epoch": state.best_epoch,
            "best_step": state.best_step,
            "final_train_loss": last.get("train_loss"),
            "final_val_loss": last.get("val_loss"),
            "total_wall_time": round(time.perf_counter() - run_started, 3),
        }
    )
    _write_json(output_dir / "train_results.json", results)
    if args.push_to_hub:
        from .hub import push_to_hub

        push_to_hub(output_dir, args.hub_model_id, private=bool(args.hub_private_repo), revision=args.hub_revision)
        logger.info(f"Pushed {output_dir} to the Hub as {args.hub_model_id}.")
    return results


def main(argv: list[str] | None = None) -> int:
    """`hf-vae train` (and `scripts/train.py`): parse the options, train, write the outputs."""
    try:
        arguments = parse_args(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"hf-vae train: error: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=logging.INFO
    )
    try:
        train(*arguments)
    except (DataError, TrainingSetupError, TrainingDivergedError) as error:
        print(f"hf-vae train: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
