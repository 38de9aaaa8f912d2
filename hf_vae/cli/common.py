"""What several commands share: the model argument (positional or `--model`), the device, and loading the model
and a dataset split from the parsed options."""

from __future__ import annotations

from typing import Any

from .arguments import UsageError


def model_argument(option: str | None, positional: str | None, prog: str) -> str:
    """The model a command was given, as `MODEL` or `--model MODEL` (not both, not neither)."""
    if option and positional and option != positional:
        raise UsageError(f"Two models given ({positional!r} and --model {option!r}); pass one.")
    model = option or positional
    if not model:
        raise UsageError(f"Which model? Pass a model folder or Hub repo id: `{prog} MODEL ...` or `--model MODEL`.")
    return model


def resolve_device(device: str | None) -> str:
    """The device to run on: the one asked for, if this machine has it, else CUDA when available, else the CPU."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA GPU that torch can use; use --device cpu.")
    if device.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
        raise UsageError(f"--device {device!r} is not a device; use cpu or cuda (cuda:N for one GPU).")
    return device


def configure_logging() -> None:
    """INFO lines from hf-vae (what is being decoded, trained, saved), warnings from the libraries, and none of
    transformers' per-file "Loading weights" / "Writing model shards" bars: our commands say what they do in their own
    lines."""
    import logging

    import datasets
    import transformers
    from tqdm.auto import tqdm

    class TqdmHandler(logging.StreamHandler):
        """Log lines written through tqdm, so that they never share a line with a progress bar."""

        def emit(self, record: logging.LogRecord) -> None:
            try:
                tqdm.write(self.format(record), file=self.stream)
            except Exception:  # noqa: BLE001 - logging must never raise
                self.handleError(record)

    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        level=logging.INFO,
        handlers=[TqdmHandler()],
    )
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.disable_progress_bar()


def load_model_from_args(args: Any, device: str) -> Any:
    """The model of `args.model` (`args.revision`), any family, on `device`, with logging set up for the command."""
    configure_logging()
    from .. import register_families
    from ..evaluation import load_model

    register_families()
    return load_model(args.model, args.revision, device)


def load_split_from_args(args: Any, config: Any) -> Any:
    """The split the dataset options of `args` name, decoded for `config` (size, channels)."""
    from ..evaluation import load_split

    return load_split(
        args.dataset_name,
        config,
        args.split,
        args.dataset_config_name,
        args.image_column,
        args.label_column,
        args.max_samples,
        args.cache_dir,
    )
