"""Where a training run is and how it survives an interruption: the loop state, atomic checkpoints (accelerate's
model/optimiser/scheduler/RNG states plus `trainer_state.json`), finding and resuming them, and the atomic save of
the best model.

A checkpoint is complete once `trainer_state.json` is in it: it is written into a staging folder last, and the folder
is renamed into place in one step, so a process killed at any moment leaves either a complete `checkpoint-N` or a
staging folder that is ignored (and removed by the next run).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from .training_setup import TrainingSetupError

CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
# With --streaming, where each process's stream was (`ImageStream.state_dict()`), one file per process.
STREAM_STATE_FILE = "stream_state_{}.json"
# Version of the checkpoint layout. 1: hf-vae 0.1's (no version field), whose loop state is laid out as this one's;
# a checkpoint from a newer hf-vae is refused with its version named.
CHECKPOINT_FORMAT = 1


_ADVICE = (
    "Resume from an older checkpoint (pass its folder to --resume_from_checkpoint) or start again with "
    "--overwrite_output_dir."
)


class CheckpointError(TrainingSetupError):
    """A checkpoint that cannot be resumed; the message names it, what is wrong and what to do."""


@dataclass
class LoopState:
    """Where the loop is, saved as `trainer_state.json` in every checkpoint. With accelerate's states it makes a
    resumed run continue exactly. `epoch_sums` holds the running epoch's (loss, each loss term..., images)."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    epoch_time: float = 0.0
    epoch_sums: list[float] = field(default_factory=list)
    best_val_loss: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    epochs_without_improvement: int = 0
    kl_weight: float = 1.0
    history: list[dict[str, float]] = field(default_factory=list)
    format_version: int = CHECKPOINT_FORMAT


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """Complete checkpoints (those holding `trainer_state.json`), oldest first."""
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
        raise CheckpointError(
            f"{path} is not a complete checkpoint (it has no {STATE_FILE}). Pass a folder such as "
            f"{output_dir / CHECKPOINTS_DIR}/checkpoint-N, or 'latest' for the newest one in --output_dir."
        )
    return path


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
    "format_version": (int,),
}


def _damaged(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{path} {problem}; the checkpoint is damaged. {_ADVICE}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_loop_state(folder: Path) -> LoopState:
    """The loop state in a checkpoint's `trainer_state.json`, every field checked: a damaged file is a
    `CheckpointError` rather than a `TypeError` in the middle of the resumed loop, and a checkpoint from another
    checkpoint format is refused with its version named."""
    path = folder / STATE_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise _damaged(path, f"cannot be read ({type(error).__name__}: {error})") from None
    if not isinstance(values, dict):
        raise _damaged(path, f"holds a {type(values).__name__}, not a loop state (a JSON object)")
    version = values.get("format_version", 1)
    if version != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{folder} was written by another hf-vae version (checkpoint format {version!r}; this version reads "
            f"format {CHECKPOINT_FORMAT}). Resume it with the hf-vae version that wrote it, or start again with "
            "--overwrite_output_dir."
        )
    unknown = sorted(str(key) for key in values if key not in _LOOP_STATE_TYPES)
    if unknown:
        raise CheckpointError(
            f"{path} has fields {unknown} that this hf-vae does not know: it is damaged or was written by another "
            f"version. {_ADVICE}"
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
            raise _damaged(path, f"has {key}={value!r}, which is not a valid value")
    return LoopState(**values)


def check_checkpoint_folder(folder: Path) -> None:
    """Read every file of an accelerate checkpoint the safe way before `accelerator.load_state` restores it, so that
    a damaged, truncated or crafted checkpoint is a `CheckpointError` naming the file, raised before the run writes
    anything.

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
        raise CheckpointError(f"Cannot read checkpoint folder {folder}: {error.strerror or error}.") from None
    missing = [name for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl") if name not in names]
    if missing:
        raise _damaged(folder, f"lacks {missing}, which every hf-vae checkpoint holds")
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
                raise CheckpointError(
                    f"Refused {path}: it is not plain tensors and numbers, it asks to run {unsafe.group(1)!r} when "
                    f"unpickled, which could execute arbitrary code; hf-vae never unpickles code. {_ADVICE}"
                ) from None
            reason = message.split(". ")[0][:200] if message else "no details"
            raise _damaged(path, f"cannot be read ({type(error).__name__}: {reason})") from None


def _check_random_states(states: Any) -> None:
    """Apply the saved RNG states to throwaway generators: what accelerate would apply, or else skip silently."""
    import random

    import numpy as np

    if not isinstance(states, dict):
        raise ValueError(f"holds a {type(states).__name__}, not the RNG states")
    random.Random().setstate(states["random_state"])
    np.random.RandomState().set_state(states["numpy_random_seed"])
    torch.Generator().set_state(states["torch_manual_seed"])


def load_checkpoint(accelerator: Accelerator, folder: Path) -> LoopState:
    """`accelerator.load_state(folder)` for `--resume_from_checkpoint`, made safe: every file is first read without
    running code (`check_checkpoint_folder`), the restore itself turns any failure into a `CheckpointError`, and the
    restored optimiser state is checked against the parameters (torch accepts moment tensors of another shape,
    which would fail at the first step). Returns the checkpoint's loop state."""
    check_checkpoint_folder(folder)
    state = read_loop_state(folder)
    try:
        accelerator.load_state(str(folder))
    except Exception as error:  # every file was read safely above: what fails here is a mismatch with this run
        message = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"{folder} does not fit this run ({type(error).__name__}: {message}): it was saved for another model "
            "or optimiser. Resume with the options of the run that wrote it (its training_args.json), or start "
            "again with --overwrite_output_dir."
        ) from None
    for optimizer in accelerator._optimizers:  # accelerate's list of the prepared optimisers
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                for name, value in optimizer.state.get(parameter, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != parameter.shape:
                        raise _damaged(
                            folder / "optimizer.bin",
                            f"holds an optimiser state {name!r} of shape {tuple(value.shape)} for a parameter of "
                            f"shape {tuple(parameter.shape)}",
                        )
    return state


def save_checkpoint(
    accelerator: Accelerator,
    state: LoopState,
    output_dir: Path,
    save_total_limit: int | None,
    stream_state: dict[str, Any] | None = None,
) -> Path:
    """`accelerator.save_state` into a staging folder (with each process's `stream_state` when training on a
    stream), then the loop state, then one atomic rename; then the oldest checkpoints beyond `save_total_limit` are
    removed."""
    root = output_dir / CHECKPOINTS_DIR
    final = root / f"checkpoint-{state.global_step}"
    staging = root / f".staging-checkpoint-{state.global_step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if stream_state is not None:
        path = staging / STREAM_STATE_FILE.format(accelerator.process_index)
        path.write_text(json.dumps(stream_state, default=_json_number) + "\n")
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


def _json_number(value: Any) -> int | float:
    """numpy scalars, which `datasets` may leave in a stream's state."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def check_stream_checkpoint(folder: Path, streaming: bool) -> None:
    """Refuse, before the run writes anything, to resume a --streaming run's checkpoint without --streaming or the
    other way round: their loop states count epochs differently."""
    written_streaming = (folder / STREAM_STATE_FILE.format(0)).is_file()
    if written_streaming != streaming:
        raise CheckpointError(
            f"{folder} was written by a run {'with' if written_streaming else 'without'} --streaming; resume it "
            f"{'with' if written_streaming else 'without'} --streaming, with the options of the run that wrote it (its "
            "training_args.json), or start again with --overwrite_output_dir."
        )


def restore_stream_state(folder: Path, process_index: int, stream: Any) -> None:
    """Continue `stream` (an `ImageStream`) from where this process's stream was when `folder` was saved, or raise a
    `CheckpointError` naming what is wrong."""
    path = folder / STREAM_STATE_FILE.format(process_index)
    if not path.is_file():
        raise CheckpointError(
            f"{folder} holds no stream position for process {process_index} ({path.name}): it was written by a run "
            "with fewer processes. Resume it with the options of the run that wrote it (its training_args.json), or "
            "start again with --overwrite_output_dir."
        )
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        stream.load_state_dict(values)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError) as error:
        raise CheckpointError(
            f"{path} does not fit this run ({error}): resume with the options of the run that wrote it (its "
            "training_args.json), or start again with --overwrite_output_dir."
        ) from None


def remove_stale_staging(output_dir: Path) -> None:
    """Staging folders left by a killed run."""
    for stale in (output_dir / CHECKPOINTS_DIR).glob(".staging-*"):
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(output_dir / ".staging-model", ignore_errors=True)


def save_model_atomically(model, output_dir: Path) -> None:
    """`save_pretrained` (without the card, written once at the end) into a staging folder, then each file moved
    into place with an atomic rename."""
    staging = output_dir / ".staging-model"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, model_card=False)
    for path in staging.iterdir():
        os.replace(path, output_dir / path.name)
    staging.rmdir()


__all__ = [
    "CHECKPOINTS_DIR",
    "CHECKPOINT_FORMAT",
    "STATE_FILE",
    "STREAM_STATE_FILE",
    "CheckpointError",
    "LoopState",
    "check_checkpoint_folder",
    "check_stream_checkpoint",
    "checkpoint_folders",
    "load_checkpoint",
    "read_loop_state",
    "restore_stream_state",
    "remove_stale_staging",
    "resolve_checkpoint",
    "save_checkpoint",
    "save_model_atomically",
]
