"""`hf-vae convert`: turn the reference tutorial's `best_vae_model.pth` checkpoints into hf-vae model folders.

The tutorial ("Building Variational Autoencoders from Scratch", Hub repo `karthik-2905/VariationalAutoencoders`)
saves `{"model_state_dict": ..., "model_config": {...}}` dicts that its own model card cannot load. This module
reads them (or a bare state dict) without ever unpickling code, maps every tensor onto a [`VAEModel`] of the same
architecture, proves the two networks agree in eval mode and only then writes a normal model folder, with the
provenance (source, SHA-256, measured differences) in `conversion.json`, which the model card is built from, here and
by `hf-vae push`:

```bash
hf-vae convert karthik-2905/VariationalAutoencoders --output_dir vae-mnist-2d
hf-vae convert ./best_vae_model.pth --output_dir vae-mnist-2d
```
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.utils.sha import sha_fileobj
from torch import nn

from . import __version__
from .configuration_vae import VAEConfig
from .model_card import CARD_NAME, CONVERSION_NAME, build_model_card
from .modeling_vae import VAEModel

DEFAULT_FILENAME = "vae_logs_latent2_beta1.0/best_vae_model.pth"
TOLERANCE = 1e-5
# The tutorial's constructor defaults: `VAE(input_dim=784, latent_dim=2, hidden_dim=256, beta=1.0)`.
TUTORIAL_DEFAULTS: dict[str, Any] = {"input_dim": 784, "latent_dim": 2, "hidden_dim": 256, "beta": 1.0}
_DIM_KEYS = ("input_dim", "latent_dim", "hidden_dim")
_NUM_CHECK_INPUTS = 256
_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")


class ConversionError(ValueError):
    """A checkpoint that cannot be converted (unsafe, corrupt, or not the tutorial's VAE), or a refused output."""


class TutorialVAE(nn.Module):
    """The tutorial's VAE, rebuilt layer for layer, so that its checkpoints load with strict key and shape checks
    and so that every conversion is proved against the original architecture. It ends in a Sigmoid (our model
    outputs the logits before it) and always samples z in `forward`, as the tutorial does."""

    def __init__(self, input_dim: int = 784, latent_dim: int = 2, hidden_dim: int = 256, beta: float = 1.0):
        super().__init__()
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.beta = beta
        self.encoder = nn.Sequential(
            nn.Linear(input_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden_dim, hidden_dim // 2),
            nn.BatchNorm1d(hidden_dim // 2),
            nn.ReLU(),
            nn.Dropout(0.2),
        )
        self.fc_mu = nn.Linear(hidden_dim // 2, latent_dim)
        self.fc_logvar = nn.Linear(hidden_dim // 2, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim // 2),
            nn.BatchNorm1d(hidden_dim // 2),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden_dim // 2, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden_dim, input_dim),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.encoder(x)
        return self.fc_mu(hidden), self.fc_logvar(hidden)

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x.view(-1, self.input_dim))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar

    def loss_function(
        self, recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tutorial's loss, summed over the batch: (BCE + beta * KL, BCE, KL)."""
        bce = F.binary_cross_entropy(recon_x, x.view(-1, self.input_dim), reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return bce + self.beta * kld, bce, kld


@dataclass
class TutorialCheckpoint:
    """A checkpoint read safely and checked against the tutorial's architecture."""

    state_dict: dict[str, torch.Tensor]
    arguments: dict[str, Any]  # the tutorial's constructor arguments: input_dim, latent_dim, hidden_dim, beta
    layout: str  # "tutorial dict" (model_state_dict + model_config) or "bare state dict"
    ignored_entries: list[str] = field(default_factory=list)


@dataclass
class ConversionResult:
    """What `convert_checkpoint` wrote and measured."""

    checkpoint: TutorialCheckpoint
    output_dir: Path
    sha256: str
    differences: dict[str, float]


# ---------------------------------------------------------------------------------------------- the source
def resolve_source(
    source: str,
    filename: str = DEFAULT_FILENAME,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
) -> tuple[Path, dict[str, str]]:
    """Local path of the checkpoint, and a description of where it came from for the model card.

    Like transformers: an existing file is used as is, an existing folder is searched for `filename`, anything
    else is a Hub repo id fetched with `hf_hub_download` (so the usual cache, token and offline settings hold;
    `token`, `cache_dir` and `endpoint` are passed on to it).
    """
    path = Path(source).expanduser()
    if path.is_file():
        return path, {"kind": "file", "filename": path.name}
    if path.is_dir():
        candidate = path / filename
        if not candidate.is_file():
            raise ConversionError(f"{source!r} is a folder without {filename!r}; pass the checkpoint file itself.")
        return candidate, {"kind": "file", "filename": filename}
    if path.suffix in _CHECKPOINT_SUFFIXES:
        raise ConversionError(f"No such file: {source!r}.")
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ConversionError(f"{source!r} is neither an existing file or folder nor a valid Hub repo id.") from None
    where = f"{filename!r} in the Hub repo {source!r}" + (f" at revision {revision!r}" if revision else "")
    try:
        local = hf_hub_download(
            source, filename, revision=revision, token=token, cache_dir=cache_dir, endpoint=endpoint
        )
    except GatedRepoError:
        raise ConversionError(f"Cannot download {where}: the repo is gated; accept its terms on the Hub.") from None
    except RepositoryNotFoundError:
        raise ConversionError(
            f"Cannot download {where}: no such repo, or it is private (log in with `hf auth login` or pass "
            "--token). If you meant a local file, check the path."
        ) from None
    except RevisionNotFoundError:
        raise ConversionError(f"Cannot download {where}: the repo has no revision {revision!r}.") from None
    except RemoteEntryNotFoundError:
        raise ConversionError(
            f"Cannot download {where}: the repo has no such file; pass the right --filename."
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError) as error:
        if isinstance(error.__cause__, OfflineModeIsEnabled):
            reason = "offline mode is on (HF_HUB_OFFLINE) and the file is not in the local cache"
        elif isinstance(error, LocalEntryNotFoundError):
            reason = "the Hub is unreachable and the file is not in the local cache"
        else:
            reason = f"the Hub answered with an error ({error})"
        raise ConversionError(
            f"Cannot download {where}: {reason}. Download the file yourself and pass its local path as SOURCE: "
            f"`hf-vae convert path/to/{Path(filename).name} --output_dir ...`."
        ) from None
    return Path(local), {"kind": "hub", "repo_id": source, "filename": filename, "revision": revision or "main"}


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as file:
        return sha_fileobj(file).hex()


# ---------------------------------------------------------------------------------------------- reading
def load_checkpoint_file(path: str | os.PathLike) -> Any:
    """`torch.load(weights_only=True)`, the only way this tool reads a checkpoint: a file that needs arbitrary
    unpickling is refused before any of its code can run.

    Whatever bytes the file holds, this returns what `weights_only=True` loads or raises `ConversionError` naming the
    file and what is wrong with it. The weights-only unpickler runs no code from the file, so any exception it raises
    (on damaged files it raises `IndexError`, `KeyError`, `UnicodeDecodeError`, `OSError`, ... as well as
    `UnpicklingError`) can only mean a damaged or foreign file, and all of them are turned into `ConversionError`."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            head = file.read(len(_LEGACY_TORCH_HEADER))
    except OSError as error:
        raise ConversionError(f"Cannot read {path}: {error.strerror or error}.") from None
    if not head:
        raise ConversionError(f"{path.name} is empty: not a PyTorch checkpoint.")
    try:
        with warnings.catch_warnings():  # torch's "unusual pickle protocol" hint: the error below says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module \S+ is blocked)", str(error))
        if unsafe:
            name = unsafe.group(1)
            raise ConversionError(
                f"Refused {path.name}: it is not plain tensors, it asks to run {name!r} when unpickled, which could "
                "execute arbitrary code. hf-vae reads checkpoints with `torch.load(weights_only=True)` only and has "
                "no option to turn that off. The tutorial's own checkpoints load this way; if you made this file "
                "and trust it, re-save just its tensors: "
                "`torch.save({'model_state_dict': sd, 'model_config': cfg}, 'clean.pth')`."
            ) from None
        failure = error
    except Exception as error:  # weights_only=True runs no code from the file: any failure means damaged bytes
        failure = error
    raise ConversionError(_unreadable_checkpoint_message(path.name, head, failure))


# What `torch.save` files start with: a zip archive (the format since torch 1.6) or, in the legacy format, a pickle
# (protocol 2) of torch's magic number.
_ZIP_HEADER = b"PK\x03\x04"
_LEGACY_TORCH_HEADER = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _unreadable_checkpoint_message(name: str, head: bytes, error: BaseException) -> str:
    """Why a file that torch cannot load is refused: a torch file that is damaged, or not a torch file at all."""
    reason = " ".join(str(error).split())
    reason = reason.split(". ")[0][:200] if reason else "no details"
    reason = f"{type(error).__name__}: {reason}"
    if head.startswith((_ZIP_HEADER, _LEGACY_TORCH_HEADER)):
        return (
            f"{name} is a PyTorch checkpoint that is truncated or corrupted ({reason}); download or copy it again. "
            "Nothing was written."
        )
    return (
        f"{name} is not a PyTorch checkpoint: it does not start like a file written by `torch.save`, and reading it "
        f"failed ({reason}). Pass the tutorial's `best_vae_model.pth` itself. Nothing was written."
    )


def _split_layout(obj: Any, name: str) -> tuple[Mapping, Mapping | None, str, list[str]]:
    """(state dict, model_config or None, layout, ignored top-level entries)."""
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{name} holds a {type(obj).__name__}, not a tutorial checkpoint: expected a dict with "
            "'model_state_dict' and 'model_config', or a state dict."
        )
    if "model_state_dict" in obj:
        state_dict, model_config = obj["model_state_dict"], obj.get("model_config")
        if not isinstance(state_dict, Mapping):
            raise ConversionError(f"{name}: 'model_state_dict' is a {type(state_dict).__name__}, not a state dict.")
        if model_config is not None and not isinstance(model_config, Mapping):
            raise ConversionError(f"{name}: 'model_config' is a {type(model_config).__name__}, not a dict.")
        ignored = sorted(str(key) for key in obj if key not in ("model_state_dict", "model_config"))
        return state_dict, model_config, "tutorial dict", ignored
    if obj and all(isinstance(value, torch.Tensor) for value in obj.values()):
        return obj, None, "bare state dict", []
    keys = sorted(str(key) for key in obj)[:10]
    raise ConversionError(
        f"{name} is not a tutorial checkpoint: a dict with keys {keys} but no 'model_state_dict', and not a state "
        "dict of tensors."
    )


def _checked_model_config(model_config: Mapping, name: str) -> dict[str, Any]:
    unknown = sorted(str(key) for key in model_config if key not in TUTORIAL_DEFAULTS)
    if unknown:
        raise ConversionError(
            f"{name}: 'model_config' has keys {unknown} that the tutorial's VAE does not take "
            f"(it takes {list(TUTORIAL_DEFAULTS)})."
        )
    config = dict(model_config)
    for key in _DIM_KEYS:
        value = config.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConversionError(f"{name}: model_config[{key!r}] must be a positive integer, got {value!r}.")
    beta = config.get("beta")
    if beta is not None and (
        isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0
    ):
        raise ConversionError(f"{name}: model_config['beta'] must be a finite number >= 0, got {beta!r}.")
    return config


def _tutorial_arguments(
    state_dict: Mapping, model_config: Mapping | None, beta: float | None, name: str
) -> dict[str, Any]:
    """The tutorial's constructor arguments: dims from the weight shapes, cross-checked with `model_config`."""
    config = _checked_model_config(model_config or {}, name)
    arguments = {**TUTORIAL_DEFAULTS, **{key: value for key, value in config.items() if value is not None}}
    # (dimension, tensor that sets it, index in that tensor's shape)
    for key, tensor_key, axis in (
        ("hidden_dim", "encoder.0.weight", 0),
        ("input_dim", "encoder.0.weight", 1),
        ("latent_dim", "fc_mu.weight", 0),
    ):
        tensor = state_dict.get(tensor_key)
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 2:
            continue  # reported by the key and shape check
        value = int(tensor.shape[axis])
        if config.get(key) not in (None, value):
            raise ConversionError(
                f"{name}: model_config says {key}={config[key]} but {tensor_key} has shape "
                f"{tuple(tensor.shape)}, which means {key}={value}."
            )
        arguments[key] = value
    if arguments["hidden_dim"] < 2:
        raise ConversionError(f"{name}: hidden_dim={arguments['hidden_dim']}; the tutorial's VAE needs at least 2.")
    if beta is not None:
        if config.get("beta") not in (None, beta):
            raise ConversionError(
                f"{name}: --beta {beta} contradicts the checkpoint's model_config beta={config['beta']}."
            )
        arguments["beta"] = beta
    arguments["beta"] = float(arguments["beta"])
    return arguments


def _check_tensors(state_dict: Mapping, expected: Mapping[str, torch.Tensor], arguments: dict, name: str) -> None:
    """One error listing every missing key, unexpected key, wrong shape and bad value."""
    problems = []
    missing = [key for key in expected if key not in state_dict]
    unexpected = [str(key) for key in state_dict if key not in expected]
    if missing:
        problems.append(f"missing keys: {missing}")
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    for key, reference in expected.items():
        value = state_dict.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif value.shape != reference.shape:
            problems.append(f"{key} has shape {tuple(value.shape)}, expected {tuple(reference.shape)}")
        elif reference.is_floating_point() and not (value.is_floating_point() and torch.isfinite(value).all()):
            problems.append(f"{key} is not a finite floating-point tensor ({value.dtype})")
    if problems:
        dims = ", ".join(f"{key}={arguments[key]}" for key in _DIM_KEYS)
        raise ConversionError(
            f"{name} does not match the tutorial's VAE ({dims}): " + "; ".join(problems) + ". Nothing was written."
        )


def read_tutorial_checkpoint(path: str | os.PathLike, beta: float | None = None) -> TutorialCheckpoint:
    """Read a tutorial checkpoint safely and check every tensor against the architecture it implies."""
    name = Path(path).name
    state_dict, model_config, layout, ignored = _split_layout(load_checkpoint_file(path), name)
    arguments = _tutorial_arguments(state_dict, model_config, beta, name)
    with torch.device("meta"):  # shapes only: a forged huge dim must not allocate anything
        expected = TutorialVAE(**arguments).state_dict()
    _check_tensors(state_dict, expected, arguments, name)
    return TutorialCheckpoint(dict(state_dict), arguments, layout, ignored)


# ---------------------------------------------------------------------------------------------- converting
def vae_config_from_tutorial(arguments: Mapping[str, Any]) -> VAEConfig:
    """The `mnist-2d` preset with the checkpoint's dims. The tutorial flattens square greyscale images."""
    input_dim = arguments["input_dim"]
    side = math.isqrt(input_dim)
    if side * side != input_dim:
        raise ConversionError(
            f"input_dim={input_dim} is not the pixel count of a square greyscale image (28x28 = 784, ...), so the "
            "checkpoint cannot become an image VAE; hf-vae models take (C, H, W) images with H = W."
        )
    hidden_dim = arguments["hidden_dim"]
    return VAEConfig.from_preset(
        "mnist-2d",
        image_size=side,
        num_channels=1,
        latent_dim=arguments["latent_dim"],
        hidden_sizes=[hidden_dim, hidden_dim // 2],
        beta=arguments["beta"],
        dropout=0.2,
        use_batch_norm=True,
        binarize="none",
    )


def _our_key(key: str) -> str:
    """Tutorial key -> VAEModel key: the Sequential indices are the same, our modules are nested one level down."""
    if key.startswith(("fc_mu.", "fc_logvar.")):
        return f"encoder.{key}"
    module, rest = key.split(".", 1)
    return f"{module}.layers.{rest}"


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {_our_key(key): value for key, value in state_dict.items()}


def convert_tutorial_checkpoint(checkpoint: TutorialCheckpoint) -> tuple[TutorialVAE, VAEModel]:
    """Both networks in eval mode, loaded strictly with the same tensors (BatchNorm statistics included)."""
    tutorial = TutorialVAE(**checkpoint.arguments)
    tutorial.load_state_dict(checkpoint.state_dict, strict=True)
    model = VAEModel(vae_config_from_tutorial(checkpoint.arguments))
    model.load_state_dict(convert_state_dict(tutorial.state_dict()), strict=True)
    return tutorial.eval(), model.eval()


@torch.no_grad()
def max_differences(tutorial: TutorialVAE, model: VAEModel, num_inputs: int = _NUM_CHECK_INPUTS) -> dict[str, float]:
    """Largest absolute differences between the two networks in eval mode on a fixed batch (all-black,
    all-white and uniform random images): posterior means, log-variances, and decoded probabilities of the same
    latents (the posterior means and draws from the prior)."""
    tutorial.eval()
    model.eval()
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(num_inputs, tutorial.input_dim, generator=generator)
    inputs[0], inputs[1] = 0.0, 1.0
    mu, logvar = tutorial.encode(inputs)
    ours = model.encode(inputs)
    latents = torch.cat([mu, torch.randn(mu.shape, generator=generator)])
    probabilities = tutorial.decode(latents)
    our_probabilities = model.decode(latents).images.flatten(1)
    return {
        "mean": (mu - ours.mean).abs().max().item(),
        "logvar": (logvar - ours.logvar).abs().max().item(),
        "probabilities": (probabilities - our_probabilities).abs().max().item(),
    }


# ---------------------------------------------------------------------------------------------- writing
def _check_output_dir(output_dir: Path, overwrite: bool, protected: list[Path]) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConversionError(f"--output_dir {output_dir} exists and is not a folder.")
    for path in protected:
        if output_dir.exists() and (path == output_dir or output_dir in path.parents):
            raise ConversionError(f"--output_dir {output_dir} contains {path}, which converting must not replace.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise ConversionError(
            f"--output_dir {output_dir} is not empty; pass --overwrite to replace it, or choose another folder."
        )


@contextmanager
def _staging_dir(output_dir: Path, overwrite: bool) -> Iterator[Path]:
    """An empty folder next to `output_dir` that replaces it only if the block succeeds; on any error it is
    removed, with any parent folders made for it, so a failed conversion leaves nothing behind."""
    missing_parent = None
    for parent in reversed(output_dir.parents):
        if not parent.exists():
            missing_parent = parent
            break
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = output_dir.parent / f".{output_dir.name}.converting-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        _check_output_dir(output_dir, overwrite, [])
        if output_dir.exists():
            previous = staging.with_name(staging.name + "-previous")
            os.replace(output_dir, previous)
            os.replace(staging, output_dir)
            shutil.rmtree(previous)
        else:
            os.replace(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if missing_parent is not None:
            shutil.rmtree(missing_parent, ignore_errors=True)
        raise


def conversion_record(
    checkpoint: TutorialCheckpoint, source: Mapping[str, str], sha256: str, differences: Mapping[str, float]
) -> dict[str, Any]:
    """The contents of `conversion.json`: enough to find the exact checkpoint again and to see how closely the model
    matches it. Local sources are recorded by file name only, as the file is uploaded with the model."""
    return {
        "converter": "hf-vae convert",
        "hf_vae_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": dict(source),
        "sha256": sha256,
        "layout": checkpoint.layout,
        "ignored_entries": checkpoint.ignored_entries,
        "tutorial_arguments": checkpoint.arguments,
        "max_differences": dict(differences),
        "tolerance": TOLERANCE,
        "num_inputs": _NUM_CHECK_INPUTS,
    }


def convert_checkpoint(
    checkpoint_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    source: Mapping[str, str] | None = None,
    beta: float | None = None,
    overwrite: bool = False,
) -> ConversionResult:
    """Convert a local tutorial checkpoint into a model folder, atomically.

    Everything is built in a staging folder next to `output_dir`; the saved model is reloaded from it and compared
    with the tutorial's network, and the folder is moved into place only if every difference is within
    `TOLERANCE`. On any error nothing is written.
    """
    checkpoint_path, output_dir = Path(checkpoint_path), Path(output_dir).expanduser().absolute()
    source = source or {"kind": "file", "filename": checkpoint_path.name}
    _check_output_dir(output_dir, overwrite, [checkpoint_path.absolute(), Path.cwd()])
    checkpoint = read_tutorial_checkpoint(checkpoint_path, beta=beta)
    tutorial, model = convert_tutorial_checkpoint(checkpoint)
    sha256 = file_sha256(checkpoint_path)
    with _staging_dir(output_dir, overwrite) as staging:
        model.save_pretrained(staging)
        differences = max_differences(tutorial, VAEModel.from_pretrained(staging))
        if not all(math.isfinite(value) for value in differences.values()):
            raise ConversionError(
                f"The checkpoint's network gives non-finite outputs on ordinary inputs (max |difference|: "
                f"{_format(differences)}), so the conversion cannot be checked. Nothing was written."
            )
        if not all(value <= TOLERANCE for value in differences.values()):
            raise ConversionError(
                f"The converted model disagrees with the tutorial's network (max |difference|: "
                f"{_format(differences)}; tolerance {TOLERANCE:g}). Nothing was written."
            )
        record = conversion_record(checkpoint, source, sha256, differences)
        (staging / CONVERSION_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        build_model_card(staging, output_dir.name).save(staging / CARD_NAME)
    return ConversionResult(checkpoint, output_dir, sha256, differences)


def _format(differences: Mapping[str, float]) -> str:
    return ", ".join(f"{key} {value:.3g}" for key, value in differences.items())


__all__ = [
    "ConversionError",
    "ConversionResult",
    "TutorialVAE",
    "conversion_record",
    "convert_checkpoint",
    "convert_state_dict",
    "read_tutorial_checkpoint",
    "resolve_source",
    "vae_config_from_tutorial",
]
