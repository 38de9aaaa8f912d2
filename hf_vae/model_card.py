"""The model card (`README.md`) of an hf-vae model folder, filled from whatever the folder holds.

The text lives in the Jinja template `hf_vae/templates/model_card.md` (the repository's top-level `model_card.md`
links to it); this module only gathers the facts: the config, the parameter count, the dataset, the training
arguments and curves, the evaluation results, the pictures, and for a converted model where it was converted from
(`conversion.json`, written by `hf-vae convert`). Every file except `config.json` is optional, so the card of a freshly
converted model and the card of a fully trained and evaluated one come from the same code.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open

from .families import config_class, model_class, model_type_of, remote_code_files

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card.md"
CARD_NAME = "README.md"
CONVERSION_NAME = "conversion.json"
LIBRARY_NAME = "hf-vae"
DEFAULT_LICENSE = "apache-2.0"
UNCONDITIONAL_TASK = "unconditional-image-generation"

# (file, caption) in the order the card shows them.
PICTURES = (
    ("samples.png", "Samples from the prior"),
    ("reconstructions.png", "Test images and their reconstructions"),
    ("latent_space.png", "Test images in the latent space (posterior means), coloured by label"),
    ("latent_manifold.png", "The decoder over a grid of the latent space"),
    ("interpolation.png", "Walks through the latent space between pairs of test images"),
    ("training_curves.png", "Training curves"),
    ("layers.png", "What each layer learned: the top layer fixed per row (left), the lower layers fixed (right)"),
)
FILE_DESCRIPTIONS = {
    "config.json": "the architecture and hyper-parameters",
    "model.safetensors": "the weights",
    "metrics.csv": "one row per training epoch: losses, learning rate, epoch time",
    "training_args.json": "the arguments of the training run",
    "train_results.json": "a summary of the training run",
    "eval_results.json": "the evaluation of the best model at the end of training",
    "evaluation.json": "the results of `hf-vae evaluate`",
    "build.json": "the commands that trained and evaluated this model, and their wall times",
    CONVERSION_NAME: "where the weights were converted from and how the conversion was checked (`hf-vae convert`)",
    **{file: caption.lower() for file, caption in PICTURES},
}
# (evaluation.json key, label in the results table, model-index metric name or None, unit)
EVALUATION_METRICS = (
    ("negative_elbo", "Negative ELBO", "Negative ELBO", "nats/image"),
    ("reconstruction", "Reconstruction term, -E_q[log p(x\\|z)]", None, "nats/image"),
    ("kl", "KL(q(z\\|x) \\|\\| p(z))", None, "nats/image"),
    ("iwae_nll", "IWAE estimate of the negative log-likelihood", "IWAE negative log-likelihood", "nats/image"),
    ("bits_per_dim", "Bits per dimension", "Bits per dimension", "bits/dim"),
)
# config.json entries that are transformers bookkeeping rather than the model's hyper-parameters.
CONFIG_BOOKKEEPING = {"architectures", "auto_map", "model_type", "transformers_version", "dtype", "torch_dtype"}
# Never put values of such keys into a card, whatever a training script recorded.
SECRET_KEY = re.compile(r"token|secret|password|passwd|api[_-]?key|credential|auth", re.IGNORECASE)
HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
LIKELIHOODS = {"bernoulli": "a Bernoulli distribution over each pixel"}
BINARIZATIONS = {"dynamic": "dynamically", "static": "statically"}
FLOAT_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# conversion.json's `max_differences` keys, as the card names them.
DIFFERENCE_LABELS = {"mean": "posterior mean", "logvar": "log-variance", "probabilities": "decoded probabilities"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        logger.warning("Leaving %s out of the model card: it is not valid JSON (%s).", path.name, error)
        return None
    if not isinstance(data, dict):
        logger.warning("Leaving %s out of the model card: it is not a JSON object.", path.name)
        return None
    return data


def _read_metrics(path: Path) -> list[dict[str, float]]:
    """Rows of `metrics.csv` as floats (cells that are not numbers are dropped)."""
    if not path.is_file():
        return []
    rows = []
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            values = {}
            for key, value in row.items():
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(values)
    return rows


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}" if abs(value) < 10 else f"{value:,.2f}"


def _cell(value: Any) -> str:
    """A value as a Markdown table cell. Absolute paths keep only their last component: a card is public."""
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    elif isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        value = f"{Path(value).name} (local path)"
    text = _number(value) if isinstance(value, (int, float)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """One level of `{"group": {...}}` nesting (e.g. arguments saved per dataclass) flattened to `group.key`."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and not prefix:
            flat.update(_flatten(value, f"{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _public_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (key, _cell(value)) for key, value in _flatten(data).items() if value is not None and not SECRET_KEY.search(key)
    ]


def _find(data: dict[str, Any] | None, *keys: str) -> Any:
    """The first non-empty value among `keys`, looked up at the top level and one level down."""
    if not data:
        return None
    flat = _flatten(data)
    for key in keys:
        for name, value in flat.items():
            if (name == key or name.endswith(f".{key}")) and value not in (None, ""):
                return value
    return None


def _dataset(training_args: dict | None, evaluation: dict | None) -> tuple[str | None, str | None]:
    """(Hub dataset id or None, how the card names the dataset). Local paths are shown by their last component only:
    a card is public, the layout of someone's disk is not."""
    name = _find(training_args, "dataset_name", "dataset") or _find(evaluation, "dataset", "dataset_name")
    if not isinstance(name, str):
        return None, None
    config = _find(training_args, "dataset_config_name")
    suffix = f" (configuration `{config}`)" if isinstance(config, str) else ""
    if HUB_DATASET_ID.match(name) and not os.path.isabs(name):
        return name, f"[`{name}`](https://huggingface.co/datasets/{name}){suffix}"
    local_name = Path(name.rstrip("/\\")).name or name
    return None, f"a local copy of the dataset `{local_name}`{suffix}"


def _training_summary(rows: list[dict[str, float]]) -> str | None:
    if not rows:
        return None
    last = rows[-1]
    parts = [f"Trained for {len(rows)} epoch{'s' if len(rows) != 1 else ''}"]
    if "epoch_time" in last:
        parts[0] += f" in {_number(sum(row.get('epoch_time', 0.0) for row in rows))} s"
    parts[0] += " (`metrics.csv`)."
    with_val = [row for row in rows if "val_loss" in row]
    if with_val:
        best = min(with_val, key=lambda row: row["val_loss"])
        epoch = int(best["epoch"]) if "epoch" in best else rows.index(best) + 1
        parts.append(f"Best validation loss {_number(best['val_loss'])} nats per image at epoch {epoch}.")
    if "train_loss" in last:
        parts.append(f"Last epoch: training loss {_number(last['train_loss'])}")
        if "val_loss" in last:
            parts[-1] += f", validation loss {_number(last['val_loss'])}"
        parts[-1] += "."
    return " ".join(parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _evaluation(evaluation: dict | None, latent_dim: int) -> tuple[list[tuple[str, str]], str | None]:
    """Rows of the results table ("148.61 ± 0.35 nats/image") and the sentence saying how they were measured."""
    if not evaluation:
        return [], None
    errors = evaluation.get("standard_errors") if isinstance(evaluation.get("standard_errors"), dict) else {}
    rows = []
    for key, label, _, unit in EVALUATION_METRICS:
        value = evaluation.get(key)
        if _is_number(value):
            if key == "iwae_nll" and _is_number(evaluation.get("iwae_samples")):
                label += f" (K = {_number(evaluation['iwae_samples'])})"
            error = f" ± {_number(errors[key])}" if _is_number(errors.get(key)) else ""
            rows.append((label, f"{_number(value)}{error} {unit}"))
    if _is_number(evaluation.get("active_units")):
        rows.append(
            ("Active latent units (posterior-mean variance > 0.01)", f"{evaluation['active_units']} of {latent_dim}")
        )
    if not rows:
        return [], None
    where = []
    if evaluation.get("split"):
        where.append(f"the `{evaluation['split']}` split")
    _, dataset_display = _dataset(None, evaluation)
    if dataset_display:
        where.append(f"of {dataset_display}")
    settings = "Measured with `hf-vae evaluate`" + (f" on {' '.join(where)}" if where else "")
    if _is_number(evaluation.get("num_images")):
        settings += f" ({_number(evaluation['num_images'])} images)"
    if evaluation.get("binarize"):
        settings += f", binarisation `{evaluation['binarize']}`"
    if errors:
        settings += "; ± is one standard error over the images"
    return rows, settings + "."


def _per_class(evaluation: dict | None) -> list[tuple[str, str, str, str]]:
    """(class, images, negative ELBO, IWAE NLL) rows from `evaluation.json`'s `per_class` figures."""
    per_class = evaluation.get("per_class") if evaluation else None
    if not isinstance(per_class, dict):
        return []
    rows = []
    for label, figures in per_class.items():
        if isinstance(figures, dict):
            cells = [figures.get(key) for key in ("count", "negative_elbo", "iwae_nll")]
            rows.append((str(label), *(_number(cell) if _is_number(cell) else "" for cell in cells)))
    return rows


def _eval_results(evaluation: dict | None, conditional: bool, fallback_dataset: str | None) -> list[EvalResult]:
    """The headline figures as `model-index` entries, so the Hub shows them and leaderboards can read them."""
    if not evaluation:
        return []
    dataset_id, _ = _dataset(None, evaluation)
    dataset = evaluation.get("dataset") if isinstance(evaluation.get("dataset"), str) else fallback_dataset
    dataset_type = dataset_id or (Path(dataset.rstrip("/\\")).name if dataset else "unknown")
    results = []
    for key, _, metric_name, unit in EVALUATION_METRICS:
        value = evaluation.get(key)
        if metric_name is None or not _is_number(value):
            continue
        results.append(
            EvalResult(
                task_type="image-generation" if conditional else UNCONDITIONAL_TASK,
                task_name="Density estimation",
                dataset_type=dataset_type,
                dataset_name=dataset_type.split("/")[-1],
                dataset_split=evaluation.get("split") if isinstance(evaluation.get("split"), str) else None,
                dataset_args={"binarize": evaluation["binarize"]}
                if isinstance(evaluation.get("binarize"), str)
                else None,
                metric_type=key,
                metric_name=f"{metric_name} ({unit})",
                metric_value=round(float(value), 4),
            )
        )
    return results


def _conversion_source(source: Any) -> str | None:
    """How the card names a conversion's source. Local files are named by their last component only."""
    if not isinstance(source, dict) or not isinstance(source.get("filename"), str):
        return None
    filename = source["filename"]
    if source.get("kind") == "hub" and isinstance(source.get("repo_id"), str):
        repo_id = source["repo_id"]
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            return None
        text = f"`{filename}` from the Hub repo [{repo_id}](https://huggingface.co/{repo_id})"
        return text + (f", revision `{source['revision']}`" if isinstance(source.get("revision"), str) else "")
    if source.get("kind") == "file":
        name = Path(filename).name if os.path.isabs(filename) or filename.startswith("~") else filename
        return f"the local file `{name}`"
    return None


def _conversion(conversion: dict[str, Any]) -> dict[str, Any]:
    """The facts of `conversion.json` the card shows; a malformed field is left out rather than guessed."""
    arguments, differences = conversion.get("tutorial_arguments"), conversion.get("max_differences")
    arguments = arguments if isinstance(arguments, dict) else {}
    differences = differences if isinstance(differences, dict) else {}
    sha256 = conversion.get("sha256")
    text = {key: value for key in ("layout", "hf_vae_version", "date") if isinstance(value := conversion.get(key), str)}
    return {
        **text,
        "source": _conversion_source(conversion.get("source")),
        "sha256": sha256 if isinstance(sha256, str) and SHA256.match(sha256) else None,
        "arguments": ", ".join(f"{key}={value}" for key, value in arguments.items()),
        "differences": [
            (DIFFERENCE_LABELS.get(key, key), _number(value)) for key, value in differences.items() if _is_number(value)
        ],
        "tolerance": _number(conversion["tolerance"]) if _is_number(conversion.get("tolerance")) else None,
        "num_inputs": _number(conversion["num_inputs"]) if _is_number(conversion.get("num_inputs")) else None,
    }


def _weights(model_dir: Path) -> str:
    """'float32, 1.8 MB': the floating-point dtypes of the weights (integer counters left out) and the file size."""
    path = model_dir / "model.safetensors"
    with safe_open(path, framework="pt") as file:
        dtypes = {FLOAT_DTYPES.get(file.get_slice(name).get_dtype()) for name in file.keys()} - {None}
    return ", ".join([*sorted(dtypes), f"{path.stat().st_size / 2**20:.1f} MB"])


def _prior_description(config: Any) -> str:
    prior = getattr(config, "prior", "standard_normal")
    if hasattr(config, "latent_dims"):
        layers = f"top-down over {len(config.latent_dims)} stochastic layers ({config.latent_dims}, bottom first)"
        if prior == "vamp":
            return f"{layers}, with the VampPrior of {config.num_pseudo_inputs} learned pseudo-inputs on the top layer"
        return layers
    if prior == "vamp":
        return (
            "the VampPrior (Tomczak & Welling 2018), a mixture of the posteriors of "
            f"{config.num_pseudo_inputs} learned pseudo-inputs"
        )
    if prior == "mog":
        return f"a learned mixture of {config.num_pseudo_inputs} diagonal Gaussians"
    return "`N(0, I)`"


def build_model_card(
    model_dir: str | os.PathLike,
    repo_id: str | None = None,
    *,
    license: str | None = None,
) -> ModelCard:
    """Build the model card of a model folder written by `save_pretrained` / `hf-vae train`.

    Args:
        model_dir: the folder; `config.json` and `model.safetensors` are required, everything else (metrics.csv,
            training_args.json, train/eval_results.json, evaluation.json, the pictures, conversion.json) is used
            when present.
        repo_id: the Hub repo the card is for, used in the loading snippets (defaults to the folder's name).
        license: the license identifier in the metadata. Defaults to apache-2.0 for a model trained with hf-vae, and to
            none for a converted one (with `conversion.json`): its weights are under the terms of their source.

    Returns:
        A `huggingface_hub.ModelCard`; `str(card)` is the README.md text. Nothing is written.
    """
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() or not (model_dir / "model.safetensors").is_file():
        raise ValueError(
            f"{model_dir} is not an hf-vae model folder: it needs config.json and model.safetensors, as written by "
            "`hf-vae train --output_dir DIR` or `model.save_pretrained(DIR)`."
        )
    try:
        model_type = model_type_of(model_dir) or "hf_vae"
        config = config_class(model_type).from_pretrained(model_dir)
        model_cls = model_class(model_type)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{model_dir / 'config.json'} is not a valid hf-vae config: {error}") from error
    raw_config = _read_json(model_dir / "config.json") or {}
    with torch.device("meta"):
        num_parameters = sum(parameter.numel() for parameter in model_cls(config).parameters())
    code_files = remote_code_files(model_type)  # what save_pretrained writes and a push uploads

    training_args = _read_json(model_dir / "training_args.json")
    evaluation = _read_json(model_dir / "evaluation.json")
    metrics = _read_metrics(model_dir / "metrics.csv")
    converted = (model_dir / CONVERSION_NAME).is_file()
    conversion = _conversion(_read_json(model_dir / CONVERSION_NAME) or {}) if converted else None
    if license is None and not converted:
        license = DEFAULT_LICENSE
    dataset_id, dataset_display = _dataset(training_args, evaluation)
    conditional = config.num_classes is not None
    repo_id = repo_id or model_dir.resolve().name
    model_name = repo_id.split("/")[-1]

    eval_results = _eval_results(evaluation, conditional, _find(training_args, "dataset_name"))
    card_data = ModelCardData(
        library_name=LIBRARY_NAME,
        license=license,
        tags=["vae", "variational-autoencoder", "generative", "image-generation", "pytorch", LIBRARY_NAME]
        + (["conditional"] if conditional else [])
        + (["converted"] if conversion else []),
        datasets=[dataset_id] if dataset_id else None,
        pipeline_tag=None if conditional else UNCONDITIONAL_TASK,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
    )
    evaluation_rows, evaluation_settings = _evaluation(evaluation, config.latent_dim)
    result_tables = []
    for file, title in (
        ("train_results.json", "Training run"),
        ("eval_results.json", "Evaluation at the end of training"),
    ):
        data = _read_json(model_dir / file)
        if data and (rows := _public_rows(data)):
            result_tables.append((f"{title} (<code>{file}</code>)", rows))
    channels = {1: "greyscale", 3: "RGB"}.get(config.num_channels, f"{config.num_channels}-channel")
    present = {path.name for path in model_dir.iterdir() if path.is_file()}

    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        model_class=model_cls.__name__,
        code_files=", ".join(f"`{name}`" for name in code_files),
        repo_id=repo_id,
        conditional=conditional,
        num_classes=config.num_classes,
        latent_dim=config.latent_dim,
        num_importance_samples=config.num_importance_samples,
        likelihood=config.likelihood,
        prior_description=_prior_description(config),
        likelihood_description=LIKELIHOODS.get(config.likelihood, f"a {config.likelihood} likelihood over pixels"),
        binarization=BINARIZATIONS.get(config.binarize),
        image_description=f"{config.image_size}x{config.image_size} {channels} images",
        image_shape=f"{config.num_channels}, {config.image_size}, {config.image_size}",
        num_parameters=f"{num_parameters:,}",
        weights_description=_weights(model_dir),
        config_rows=[(key, _cell(value)) for key, value in raw_config.items() if key not in CONFIG_BOOKKEEPING],
        dataset_display=dataset_display,
        training_summary=_training_summary(metrics),
        training_args_rows=_public_rows(training_args) if training_args else [],
        result_tables=result_tables,
        evaluation_rows=evaluation_rows,
        evaluation_settings=evaluation_settings,
        per_class_rows=_per_class(evaluation),
        conversion=conversion,
        license=license,
        pictures=[(file, caption) for file, caption in PICTURES if file in present],
        files=[(file, description) for file, description in FILE_DESCRIPTIONS.items() if file in present]
        + [(file, "model code, for `trust_remote_code=True`") for file in code_files],
    )
    # Optional sections leave runs of blank lines behind; Markdown does not need more than one.
    return ModelCard(re.sub(r"\n{3,}", "\n\n", str(card)).rstrip() + "\n")


def write_model_card(
    model_dir: str | os.PathLike,
    output_path: str | os.PathLike | None = None,
    *,
    repo_id: str | None = None,
    license: str | None = None,
) -> Path:
    """Build the card of `model_dir` (see `build_model_card`) and write it, by default to `model_dir/README.md`."""
    path = Path(output_path) if output_path is not None else Path(model_dir) / CARD_NAME
    build_model_card(model_dir, repo_id, license=license).save(path)
    return path


__all__ = ["build_model_card", "write_model_card", "CONVERSION_NAME", "TEMPLATE_PATH", "PICTURES"]
