"""Options of `hf-vae train`: three dataclasses parsed from flags or from a single JSON/YAML file (by
`hf_vae.cli.arguments`, which works like `transformers.HfArgumentParser`), and the model config they describe.

This module imports neither torch nor transformers, so that `hf-vae train --help` starts at once."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .cli.arguments import UsageError, build_parser, parse

DEFAULT_VALIDATION_SPLIT = 0.1
# With --streaming (hf_vae/streaming.py): the shuffle buffer (datasets' `IterableDataset.shuffle`) and the number of
# validation / test images decoded into memory when --max_eval_samples is not given.
DEFAULT_SHUFFLE_BUFFER_SIZE = 10_000
DEFAULT_STREAMING_EVAL_SAMPLES = 10_000
REPORT_TO = ("none", "all", "tensorboard", "wandb", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab")
# transformers' `SchedulerType` values (checked against it when the options are used).
LR_SCHEDULERS = (
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay", "greedy",
)  # fmt: skip
PRESET_NAMES = (
    "mnist-2d", "mnist", "mnist-conv", "rgb32-conv", "mnist-hvae", "rgb32-hvae-conv", "mnist-vqvae",
)  # fmt: skip


@dataclass
class ModelArguments:
    """Which VAE to train. A preset gives every architecture field; any field given here replaces the preset's value.
    Every field of this class given on the command line is passed to the config of the preset's family, which must
    have it; so a new config option needs only one line here."""

    preset: str = field(
        default="mnist",
        metadata={"help": f"Named architecture: {', '.join(PRESET_NAMES)} ('mnist-2d' is the reference tutorial's)."},
    )
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Continue training a model saved with `save_pretrained` (folder or Hub id)."}
    )
    architecture: str | None = field(default=None, metadata={"help": "Network family, e.g. 'mlp'."})
    image_size: int | None = field(
        default=None, metadata={"help": "Image height and width; the data is resized to it when given."}
    )
    num_channels: int | None = field(
        default=None, metadata={"help": "1 (greyscale) or 3 (RGB); the data is converted to it when given."}
    )
    latent_dim: int | None = field(default=None, metadata={"help": "Dimension of the latent space."})
    latent_dims: list[int] | None = field(
        default=None, metadata={"help": "Hierarchical VAE: latent size of each stochastic layer, bottom first."}
    )
    hidden_sizes: list[int] | None = field(default=None, metadata={"help": "Encoder layer widths, e.g. 512 256."})
    conv_channels: list[int] | None = field(default=None, metadata={"help": "Channels of the conv architecture."})
    num_res_blocks: int | None = field(default=None, metadata={"help": "Residual blocks per conv stage."})
    normalization: str | None = field(default=None, metadata={"help": "Normalisation layer of the conv architecture."})
    use_batch_norm: bool | None = field(default=None, metadata={"help": "BatchNorm after hidden layers (true/false)."})
    dropout: float | None = field(default=None, metadata={"help": "Dropout probability after hidden activations."})
    activation: str | None = field(default=None, metadata={"help": "Hidden activation, e.g. relu, gelu, silu."})
    likelihood: str | None = field(default=None, metadata={"help": "Decoder distribution over pixels."})
    beta: float | None = field(default=None, metadata={"help": "Weight of the KL term (beta-VAE)."})
    free_bits: float | None = field(default=None, metadata={"help": "Minimum KL per latent unit in the loss (nats)."})
    num_importance_samples: int | None = field(
        default=None, metadata={"help": "K > 1 trains on the importance-weighted bound (IWAE) with K samples."}
    )
    num_classes: int | None = field(
        default=None, metadata={"help": "Train a conditional VAE on the label column with this many classes."}
    )
    prior: Literal["standard_normal", "vamp", "mog"] | None = field(
        default=None,
        metadata={
            "help": "The prior p(z): standard_normal, vamp (the VampPrior, a mixture over learned inputs) or mog (a "
            "learned mixture of Gaussians)."
        },
    )
    num_pseudo_inputs: int | None = field(
        default=None, metadata={"help": "Mixture components of the vamp and mog priors (default 500)."}
    )
    codebook_size: int | None = field(default=None, metadata={"help": "VQ-VAE: number of codebook entries."})
    embedding_dim: int | None = field(default=None, metadata={"help": "VQ-VAE: dimension of the codebook entries."})
    commitment_cost: float | None = field(
        default=None, metadata={"help": "VQ-VAE: weight beta of the commitment loss."}
    )
    codebook_update: Literal["ema", "loss"] | None = field(
        default=None, metadata={"help": "VQ-VAE: codebook updated by moving averages (ema) or by its loss."}
    )
    ema_decay: float | None = field(default=None, metadata={"help": "VQ-VAE: decay of the codebook's moving averages."})
    dead_code_steps: int | None = field(
        default=None, metadata={"help": "VQ-VAE: re-seed a code unused for this many steps (0: never)."}
    )
    kmeans_init: bool | None = field(
        default=None, metadata={"help": "VQ-VAE: set the codebook by k-means on the first batch (true/false)."}
    )
    binarize: Literal["none", "dynamic", "static"] | None = field(
        default=None,
        metadata={
            "help": "Binarise pixels: a fresh Bernoulli draw per batch (dynamic), one fixed draw (static) or not at "
            "all (none). Default: the preset's (or the loaded model's) value. Recorded in the model's config."
        },
    )

    def config_overrides(self) -> dict[str, Any]:
        """The config fields given on the command line (checked against the family's config when the model is
        built: each family takes the options it has)."""
        return {
            name: value
            for name, value in dataclasses.asdict(self).items()
            if name not in ("preset", "model_name_or_path") and value is not None
        }


@dataclass
class DataArguments:
    """Which images to train on."""

    dataset_name: str = field(
        default="ylecun/mnist",
        metadata={"help": "Hub dataset id, a local folder laid out like a Hub dataset repo, or a save_to_disk folder."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    image_column: str | None = field(default=None, metadata={"help": "Column holding the images (auto-detected)."})
    label_column: str | None = field(
        default=None, metadata={"help": "Column holding class labels (auto-detected; needed for --num_classes)."}
    )
    validation_split: float | None = field(
        default=None,
        metadata={
            "help": f"Fraction of train held out (seeded) for validation when there is no validation split (default: "
            f"{DEFAULT_VALIDATION_SPLIT}). Not with --streaming, which validates on the dataset's own split."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N training images."})
    max_eval_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use the first N validation (and test) images, for quick runs. With --streaming they are read "
            f"from the stream and decoded into memory once (default: {DEFAULT_STREAMING_EVAL_SAMPLES})."
        },
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where `datasets` caches downloads."})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training images from a `datasets` stream (`load_dataset(..., streaming=True)`) as "
            "training goes, for datasets too large to download or decode whole. Shuffles only within "
            "--shuffle_buffer_size images (reshuffled every pass); has no epoch length, so --max_steps is required "
            "and validation happens every --eval_steps steps; validates on the first --max_eval_samples images of "
            "the dataset's validation split (else its test split)."
        },
    )
    shuffle_buffer_size: int | None = field(
        default=None,
        metadata={
            "help": "With --streaming: images held in the shuffle buffer (default: "
            f"{DEFAULT_SHUFFLE_BUFFER_SIZE}); 0 reads the stream in its own order, and makes resumed runs exact."
        },
    )

    def __post_init__(self) -> None:
        _require(
            self.shuffle_buffer_size is None or self.shuffle_buffer_size >= 0,
            f"--shuffle_buffer_size must be >= 0, got {self.shuffle_buffer_size}.",
        )
        _require(
            self.streaming or self.shuffle_buffer_size is None,
            "--shuffle_buffer_size applies to --streaming only (the in-memory path shuffles the whole split); add "
            "--streaming or drop it.",
        )
        _require(
            not self.streaming or self.validation_split is None,
            "--validation_split holds out a fraction of train, which needs its length: a stream has none. Drop it; "
            "with --streaming, validation uses the first --max_eval_samples images of the dataset's validation split "
            "(else its test split).",
        )


@dataclass
class TrainingArguments:
    """How to train. Names follow `transformers.TrainingArguments` where the meaning is the same."""

    output_dir: str = field(metadata={"help": "Where the model, checkpoints, metrics and results are written."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Allow writing into an output_dir that already holds a trained model."}
    )
    num_train_epochs: int = field(default=20, metadata={"help": "Number of passes over the training images."})
    max_steps: int = field(default=-1, metadata={"help": "If > 0, stop after this many optimiser steps."})
    per_device_train_batch_size: int | None = field(
        default=None,
        metadata={"help": "Training batch size per process. Default: 256 for the mnist-2d preset, else 128."},
    )
    per_device_eval_batch_size: int = field(default=1000, metadata={"help": "Evaluation batch size per process."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Batches whose gradients are summed before each optimiser step."}
    )
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate. Default: 2e-2 for the mnist-2d preset, else 1e-3 (the reference's)."},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "Decoupled weight decay (AdamW) on weight matrices."})
    adam_beta1: float = field(default=0.9, metadata={"help": "Adam beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "Adam beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "Adam epsilon."})
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "Clip the gradient norm to this value (off by default, as in the reference)."}
    )
    lr_scheduler_type: str | None = field(
        default=None,
        metadata={
            "help": f"One of {list(LR_SCHEDULERS)}. 'reduce_lr_on_plateau' halves the learning rate after 5 epochs "
            "without a better validation loss (the reference's schedule); the others are per-step schedules. "
            "Default: cosine for the mnist-2d preset, else reduce_lr_on_plateau."
        },
    )
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warm-up steps (per-step schedules)."})
    kl_warmup_steps: int = field(
        default=0, metadata={"help": "KL annealing: the KL weight grows linearly from 0 to 1 over this many steps."}
    )
    mixed_precision: Literal["no", "fp16", "bf16"] | None = field(
        default=None, metadata={"help": "Mixed precision; default: accelerate's config / launcher setting."}
    )
    use_cpu: bool = field(default=False, metadata={"help": "Train on CPU even when a GPU is available."})
    flush_denormal: bool = field(
        default=True,
        metadata={
            "help": "On a CPU, flush subnormal floats to zero (`torch.set_flush_denormal`): the CPU computes with them "
            "in slow microcode, and as gradients shrink they can double a step's time. Values below 1e-38 become 0."
        },
    )
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "Compile the training step's forward and backward with `torch.compile` (validation, saving and "
            "evaluation use the uncompiled model). The first step pays for compiling; inductor caches the result on "
            "disk (TORCHINDUCTOR_CACHE_DIR, default /tmp/torchinductor_$USER), so later runs of the same model load it."
        },
    )
    torch_compile_backend: str | None = field(
        default=None, metadata={"help": "The `torch.compile` backend (default inductor); implies --torch_compile."}
    )
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = (
        field(default=None, metadata={"help": "The `torch.compile` mode; implies --torch_compile."})
    )
    seed: int = field(default=42, metadata={"help": "Seed of weights, shuffling, dropout, binarisation and split."})
    logging_steps: int = field(
        default=50, metadata={"help": "Read the running losses (and check them for NaN) every N steps."}
    )
    eval_steps: int | None = field(
        default=None, metadata={"help": "Also evaluate every N optimiser steps (always at the end of each epoch)."}
    )
    checkpointing_steps: str | None = field(
        default="epoch",
        metadata={
            "help": "Save a resumable checkpoint every N optimiser steps, or at each 'epoch' end; 'no' for none."
        },
    )
    save_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints, deleting the oldest."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint folder, or 'latest' for the newest one in output_dir."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many epochs without a better validation loss."}
    )
    report_to: str = field(
        default="none", metadata={"help": f"Experiment trackers (comma-separated), from {list(REPORT_TO)}."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar (it is off anyway without a tty)."})
    plot_every_n_epochs: int | None = field(
        default=None, metadata={"help": "Also write the figures every N epochs (always at the end)."}
    )
    skip_figures: bool = field(default=False, metadata={"help": "Write no figures (for tests and benchmarks)."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the best model to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo to push to, e.g. 'user/vae-mnist'."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the Hub repo as private."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch of the Hub repo to push to."})

    def __post_init__(self) -> None:
        for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"--{name} must be at least 1, got {value}.")
        _require(
            self.gradient_accumulation_steps >= 1,
            f"--gradient_accumulation_steps must be at least 1, got {self.gradient_accumulation_steps}.",
        )
        _require(
            self.learning_rate is None or self.learning_rate > 0,
            f"--learning_rate must be positive, got {self.learning_rate}.",
        )
        _require(0 <= self.seed < 2**32, f"--seed must be in [0, 2**32), got {self.seed}.")
        _require(self.logging_steps >= 1, f"--logging_steps must be at least 1, got {self.logging_steps}.")
        _require(self.kl_warmup_steps >= 0, f"--kl_warmup_steps must be >= 0, got {self.kl_warmup_steps}.")
        _require(self.warmup_steps >= 0, f"--warmup_steps must be >= 0, got {self.warmup_steps}.")
        for name in ("eval_steps", "save_total_limit", "early_stopping_patience", "plot_every_n_epochs"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"--{name} must be at least 1 when given, got {value}.")
        _require(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            f"--max_grad_norm must be positive when given, got {self.max_grad_norm}.",
        )
        _require(
            self.lr_scheduler_type is None or self.lr_scheduler_type in LR_SCHEDULERS,
            f"--lr_scheduler_type must be one of {list(LR_SCHEDULERS)}, got {self.lr_scheduler_type!r}.",
        )
        _require(
            not (self.lr_scheduler_type == "reduce_lr_on_plateau" and self.warmup_steps > 0),
            "--warmup_steps needs a per-step schedule (e.g. --lr_scheduler_type constant_with_warmup or cosine); "
            "'reduce_lr_on_plateau' has no warm-up.",
        )
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True  # as transformers' TrainingArguments
        if self.checkpointing_steps is not None and self.checkpointing_steps.lower() in ("no", "none", ""):
            self.checkpointing_steps = None
        _require(
            self.checkpointing_steps in (None, "epoch")
            or (self.checkpointing_steps.isdigit() and int(self.checkpointing_steps) >= 1),
            f"--checkpointing_steps must be a number of steps, 'epoch' or 'no', got {self.checkpointing_steps!r}.",
        )
        unknown = [name for name in self.report_to_list if name not in REPORT_TO]
        _require(not unknown, f"--report_to: unknown tracker(s) {unknown}; choose from {list(REPORT_TO)}.")
        from accelerate.tracking import get_available_trackers

        installed = {str(tracker.value) for tracker in get_available_trackers()}
        missing = [name for name in self.report_to_list if name not in ("none", "all") and name not in installed]
        _require(
            not missing,
            f"--report_to {','.join(missing)}: not installed, so nothing would be logged. Install it "
            f"(`pip install {' '.join(missing)}`) or choose from the installed trackers {sorted(installed) or 'none'}.",
        )
        _require(
            not self.push_to_hub or bool(self.hub_model_id),
            "--push_to_hub needs --hub_model_id (the repo to create or update, e.g. 'your-name/vae-mnist').",
        )

    @property
    def report_to_list(self) -> list[str]:
        return [name.strip() for name in self.report_to.split(",") if name.strip()]

    @property
    def checkpoint_every_steps(self) -> int | None:
        if self.checkpointing_steps is None or self.checkpointing_steps == "epoch":
            return None
        return int(self.checkpointing_steps)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


ArgumentTuple = tuple[ModelArguments, DataArguments, TrainingArguments]

# Training options whose default depends on the preset. mnist-2d, 20 epochs, test split (reference-style loss):
# 150.8 nats with the reference's constant 1e-3; 147.0 / 147.7 (seeds 42 / 0) with 1e-2 and a cosine decay at batch
# 128; 145.4 at batch 256 with 2e-2, against the reference's own 148.7. Batch 256 at 2e-2 (1e-2 at 128, scaled
# linearly) reaches the same or a lower loss per epoch in about 0.7 of the time on a CPU, where the step's fixed
# costs are paid per batch (docs/recipes.md, "Whole processes").
TRAINING_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 128,
    "learning_rate": 1e-3,
    "lr_scheduler_type": "reduce_lr_on_plateau",
}
PRESET_TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist-2d": {"per_device_train_batch_size": 256, "learning_rate": 2e-2, "lr_scheduler_type": "cosine"},
}


def resolve_defaults(model_args: ModelArguments, training_args: TrainingArguments) -> TrainingArguments:
    """Fill the options left unset with the preset's defaults (a model continued from a folder gets the general
    ones)."""
    preset = model_args.preset if model_args.model_name_or_path is None else None
    defaults = {**TRAINING_DEFAULTS, **PRESET_TRAINING_DEFAULTS.get(preset, {})}
    unset = {name: value for name, value in defaults.items() if getattr(training_args, name) is None}
    return dataclasses.replace(training_args, **unset) if unset else training_args


def check_streaming_arguments(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> None:
    """Refuse, before anything is read, the options a stream cannot honour (`ValueError`, one line naming the fix)."""
    if not data_args.streaming:
        return
    _require(
        args.max_steps > 0,
        "--streaming has no epoch length, so it needs --max_steps N (the number of optimiser steps to train for).",
    )
    _require(
        model_args.binarize != "static",
        "--binarize static draws one fixed binarisation of the whole train split, which a stream never holds; use "
        "--binarize dynamic (a fresh draw per batch) with --streaming.",
    )


def parse_args(argv: list[str] | None = None) -> ArgumentTuple:
    """Parse flags, or a `.json` / `.yaml` file holding the same names (such as a run's `training_args.json` or a
    recipe in `configs/`) followed by any flags, which override the file's values
    (`hf-vae train configs/mnist-2d.json --dataset_name ylecun/mnist`)."""
    parser = build_parser(
        (ModelArguments, DataArguments, TrainingArguments),
        prog="hf-vae train",
        description="Train a model with Accelerate. `hf-vae train FILE.json|yaml [options]` reads the options from "
        "a file (a recipe, or a run's training_args.json); options after it override the file's values.",
        aliases={"model_name_or_path": ["--model"]},
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0].endswith((".json", ".yaml", ".yml")):
        try:
            values = _read_arguments_file(Path(argv[0]), parser)
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(str(error)) from None
        parser.set_defaults(**values)
        for action in parser._actions:
            action.required = action.required and action.dest not in values  # the file gives it
        try:
            (model_args, data_args, training_args), _ = parse(parser, argv[1:])
        except UsageError as error:
            raise UsageError(f"{error} (options read from {argv[0]} and the flags after it)") from None
    else:
        (model_args, data_args, training_args), _ = parse(parser, argv)
    try:
        check_streaming_arguments(model_args, data_args, training_args)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return model_args, data_args, resolve_defaults(model_args, training_args)


def _read_arguments_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options of a `.json` / `.yaml` arguments file, each checked and converted as if it had been given as a
    flag. A damaged or mistyped file (not text, not JSON/YAML, a value of the wrong type) is a `ValueError` naming
    the file, the option and the fix, raised before anything runs: argparse does not check the types of defaults,
    so an unchecked value would fail later, deep inside training, as a bare `TypeError`."""
    if not path.is_file():
        raise FileNotFoundError(f"Arguments file {path} " + ("is not a file." if path.exists() else "does not exist."))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"Arguments file {path} is not UTF-8 text (byte {error.start} cannot be decoded): it is damaged or not "
            "an arguments file."
        ) from None
    except OSError as error:
        raise ValueError(f"Cannot read arguments file {path}: {error.strerror or error}.") from None
    values = _parse_arguments_text(path, text)
    if not isinstance(values, dict):
        raise ValueError(
            f"Arguments file {path} must hold a mapping of option names to values, not a {type(values).__name__}."
        )
    actions: dict[str, Any] = {}
    for action in parser._actions:
        actions.setdefault(action.dest, action)  # a bool's `--no_NAME` flag comes after the option itself
    unknown = sorted(str(name) for name in values if name not in actions or name == "help")
    if unknown:
        raise ValueError(f"Arguments file {path}: unknown option(s) {unknown}; `hf-vae train --help` lists them.")
    optional = _optional_fields(parser)
    return {name: _checked_value(path, actions[name], value, name in optional) for name, value in values.items()}


def _parse_arguments_text(path: Path, text: str) -> Any:
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"Arguments file {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}."
        ) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ValueError(f"Arguments file {path} is not valid YAML: {error.problem or error.context}{where}.") from None
    except yaml.YAMLError as error:
        raise ValueError(f"Arguments file {path} is not valid YAML: {' '.join(str(error).split())}.") from None
    except RecursionError:
        raise ValueError(f"Arguments file {path} is nested too deeply to be an arguments file.") from None


def _optional_fields(parser: argparse.ArgumentParser) -> set[str]:
    """Options that may be null (`None`): those whose type admits None."""
    optional = set()
    for dataclass_type in parser.dataclass_types:
        for name, hint in typing.get_type_hints(dataclass_type).items():
            if type(None) in typing.get_args(hint):
                optional.add(name)
    return optional


_KINDS = {"int": "an integer", "float": "a number", "str": "text", "string_to_bool": "true or false"}


def _checked_value(path: Path, action: Any, value: Any, optional: bool) -> Any:
    """`value` converted by the option's own argparse type, as the same value given as a flag would be."""
    if value is None:
        if optional:
            return None
        raise ValueError(f"Arguments file {path}: {action.dest} cannot be null; give it a value or remove the line.")
    is_list = action.nargs in ("+", "*")
    if is_list and not isinstance(value, list):
        raise ValueError(f"Arguments file {path}: {action.dest} must be a list, got {value!r}.")
    converted = []
    for item in value if is_list else [value]:
        try:
            if not isinstance(item, (str, int, float, bool)):
                raise ValueError
            result = action.type(str(item)) if action.type is not None else item
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            kind = _KINDS.get(getattr(action.type, "__name__", ""), "a valid value")
            raise ValueError(
                f"Arguments file {path}: {action.dest} must be {kind}"
                + (" (a list of them)" if is_list else "")
                + f", got {item!r}."
            ) from None
        if action.choices is not None and result not in action.choices:
            raise ValueError(
                f"Arguments file {path}: {action.dest} must be one of {list(action.choices)}, got {item!r}."
            )
        converted.append(result)
    return converted if is_list else converted[0]


def arguments_to_dict(arguments: ArgumentTuple) -> dict[str, Any]:
    """All options as one flat dict: written as `training_args.json`, which `hf-vae train` reads back."""
    merged: dict[str, Any] = {}
    for group in arguments:
        merged.update(dataclasses.asdict(group))
    return merged


def save_arguments(arguments: ArgumentTuple, path: Path) -> None:
    path.write_text(json.dumps(arguments_to_dict(arguments), indent=2) + "\n")


__all__ = [
    "DataArguments",
    "ModelArguments",
    "TrainingArguments",
    "arguments_to_dict",
    "check_streaming_arguments",
    "parse_args",
    "resolve_defaults",
    "save_arguments",
]
