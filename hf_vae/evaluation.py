"""Evaluation of a trained VAE: negative ELBO, the importance-weighted log-likelihood, active units, anomaly scores.

Every figure is computed in eval mode, without gradients, from one seeded `torch.Generator`, so the same model,
data, seed and batch size give the same numbers on every run. Models trained on binarised data are evaluated on
one fixed Bernoulli draw of the split (`binarize_statically(images, seed)`), which makes their negative
log-likelihoods comparable between runs and with the literature on binarised MNIST.

`hf-vae evaluate` (see `main`) writes the figures as JSON, prints a summary, and can write per-image anomaly scores
for a dataset split or a folder of images, flagged against a threshold fit on the training split.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data import (
    DataError,
    ImageTensors,
    check_matches_config,
    decode_split,
    evaluation_images,
    load_image_dataset,
    resolve_columns,
    tensor_batches,
    to_pixel_values,
)
from .estimators import (
    ANOMALY_METHODS,
    DEFAULT_MAX_BATCH_ELEMENTS,
    anomaly_score,
    bits_per_dim,
    log_likelihood,
    negative_elbo,
)
from .families import check_model_location, load_pretrained
from .image_processing_vae import ImageDecodeError, VAEImageProcessor
from .modeling_utils import evaluating

logger = logging.getLogger(__name__)

ACTIVE_UNIT_THRESHOLD = 0.01


class EvaluationError(ValueError):
    """An evaluation that cannot run as asked; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------- inputs
def load_model(model_name_or_path: str, revision: str | None = None, device: str | torch.device = "cpu"):
    """A trained model of any hf-vae family from a local folder or a Hub repo id (the Hub cache and
    `HF_HUB_OFFLINE` apply), in eval mode on `device`."""
    try:
        check_model_location(model_name_or_path, revision)
    except OSError as error:
        raise EvaluationError(str(error)) from None
    try:
        model = load_pretrained(model_name_or_path, revision=revision)
    except Exception as error:  # loading only reads the model's files: any failure means they are damaged
        raise EvaluationError(
            f"Could not load a hf-vae model from {model_name_or_path!r}: {error} Pass a folder written by "
            "`hf-vae train` / `save_pretrained` (config.json and model.safetensors) or a Hub repo id."
        ) from error
    return model.to(device).eval()


def describe_binarization(binarize: str, seed: int) -> str:
    if binarize in ("dynamic", "static"):
        return f"binarised: one Bernoulli draw with seed {seed} (model trained with {binarize} binarisation)"
    return "grey pixels in [0, 1], not binarised"


def load_split(
    dataset_name: str,
    config,
    split: str = "test",
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    max_samples: int | None = None,
    cache_dir: str | None = None,
) -> ImageTensors:
    """One split of a dataset, decoded to the model's image size and channels (the first `max_samples` rows when
    given). Conditional models need its labels."""
    dataset_dict = load_image_dataset(dataset_name, dataset_config_name, cache_dir)
    if split not in dataset_dict:
        raise DataError(f"Dataset {dataset_name!r} has no split {split!r}; its splits are {list(dataset_dict)}.")
    dataset = dataset_dict[split]
    image_column, label_column = resolve_columns(dataset, image_column, label_column)
    if config.num_classes is not None and label_column is None:
        raise DataError(
            f"The model is conditional (num_classes={config.num_classes}) but split {split!r} has no label column "
            f"(columns: {dataset.column_names}); pass --label_column NAME."
        )
    subset = max_samples is not None and max_samples < len(dataset)
    if max_samples is not None and max_samples < 1:
        raise DataError(f"max_samples must be a positive number of images, got {max_samples}.")
    if subset:
        dataset = dataset.select(range(max_samples))
    # A subset has its own fingerprint; caching it would leave one decoded copy per size on disk.
    data = decode_split(dataset, image_column, label_column, config.image_size, config.num_channels, cache=not subset)
    check_matches_config(data, config.image_size, config.num_channels, split)
    return data


def _image_extensions() -> set[str]:
    opened = set(Image.OPEN)
    return {extension for extension, image_format in Image.registered_extensions().items() if image_format in opened}


def load_image_folder(
    folder: str | Path, image_size: int, num_channels: int, processor: VAEImageProcessor | None = None
) -> tuple[list[Path], torch.Tensor]:
    """Every image file under `folder` (recursively, sorted by path), decoded by the model's image processor
    (converted to its channels, resized/centre-cropped to its size): the paths and a uint8 tensor (N, C, H, W). A
    file that cannot be decoded (damaged, truncated, over PIL's decompression-bomb limit) is an `EvaluationError`
    naming it, before any score."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EvaluationError(f"--image_folder {str(folder)!r} is not a folder.")
    extensions = _image_extensions()
    paths = sorted(path for path in folder.rglob("*") if path.is_file() and path.suffix.lower() in extensions)
    if not paths:
        raise EvaluationError(
            f"No image files found under {str(folder)!r} (looked for {', '.join(sorted(extensions)[:12])}, ...)."
        )
    processor = processor or VAEImageProcessor(image_size=image_size, num_channels=num_channels)
    images = []
    for path in paths:
        try:
            images.append(processor.load_images(path))
        except ImageDecodeError as error:  # damaged, truncated, too large, or 32-bit pixels out of range
            reason = str(error).removeprefix("Cannot read the image: ").rstrip(".")
            raise EvaluationError(f"Cannot read image {str(path)!r}: {reason}. Fix or remove the file.") from None
    return paths, torch.cat(images)


# ---------------------------------------------------------------------------------------------- figures
@torch.no_grad()
def per_image_figures(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    seed: int = 0,
    *,
    elbo_samples: int = 0,
    iwae_samples: int = 0,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_batch_elements: int = DEFAULT_MAX_BATCH_ELEMENTS,
    progress: tqdm | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image figures in nats over uint8 batch dicts, in eval mode: the one evaluator of training's validation
    and of `hf-vae evaluate`. Written against the family contract only.

    Always: `loss` and each of `loss_terms`, from `forward` with one posterior draw per image (the model's own
    objective, as validation reports it). With `elbo_samples` / `iwae_samples` (evaluation): `negative_elbo`
    (averaged over that many draws), `iwae_nll` (the IWAE estimate of -log p(x) with K draws),
    `reference_style_loss` (the -ELBO from one draw: the reference tutorial's loss for beta = 1),
    `reference_style_loss_posterior_mean` (the loss at the posterior's mode), and, for families with a continuous
    posterior, `posterior_means` and `kl_per_dimension` (N, D).

    Draws come from two generators seeded with `seed`: one for the estimates (on the CPU, so figures do not depend on
    the device), one for the objective (on the model's device, as the training loop's validation has always drawn).
    Under several processes `gather` (`accelerator.gather_for_metrics`) collects each image exactly once.
    """
    estimates = bool(elbo_samples or iwae_samples)
    estimate_generator = torch.Generator().manual_seed(seed)
    objective_generator = torch.Generator(device=model.device).manual_seed(seed)
    columns: dict[str, list[torch.Tensor]] = {}
    with evaluating(model):
        for batch in batches:
            pixel_values = to_pixel_values(batch["pixel_values"].to(model.device))
            labels = batch["labels"].to(model.device) if model.config.num_classes is not None else None
            figures: dict[str, torch.Tensor] = {}
            draws = {"generator": estimate_generator, "labels": labels, "max_batch_elements": max_batch_elements}
            if estimates:
                figures["negative_elbo"] = negative_elbo(model, pixel_values, max(elbo_samples, 1), **draws)
                figures["iwae_nll"] = -log_likelihood(model, pixel_values, max(iwae_samples, 1), **draws)
                figures["reference_style_loss"] = negative_elbo(model, pixel_values, 1, **draws)
                at_mode = model(pixel_values, labels, sample_posterior=False, reduction="none")
                figures["reference_style_loss_posterior_mean"] = at_mode.loss
                posterior = getattr(at_mode, "latent_dist", None)
                if posterior is not None:
                    figures["posterior_means"] = posterior.mode()
                    if getattr(getattr(model, "prior", None), "has_closed_form_kl", False):
                        figures["kl_per_dimension"] = model.prior.kl_per_dimension(posterior)
            outputs = model(pixel_values, labels, generator=objective_generator, reduction="none")
            figures["loss"] = outputs.loss
            figures.update(outputs.loss_terms)
            for name, values in figures.items():
                values = values.double()
                columns.setdefault(name, []).append((gather(values) if gather is not None else values).cpu())
            if progress is not None:
                progress.update(1)
    if not columns:
        raise EvaluationError("No images to evaluate.")
    return {name: torch.cat(values) for name, values in columns.items()}


def active_units(posterior_means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, torch.Tensor]:
    """Burda et al. (2015)'s active units: latent dimensions whose posterior mean varies across the data,
    Var_x(E_q[z_d | x]) > threshold. Returns the count and each dimension's variance."""
    if posterior_means.shape[0] < 2:
        raise EvaluationError("Counting active units needs at least 2 images.")
    variances = posterior_means.double().var(dim=0)
    return int((variances > threshold).sum()), variances


def _standard_error(values: torch.Tensor) -> float | None:
    return float(values.std() / math.sqrt(len(values))) if len(values) > 1 else None


def summarize_figures(
    figures: dict[str, torch.Tensor],
    num_pixels: int,
    labels: torch.Tensor | None = None,
    latent_layers: list[int] | None = None,
) -> dict[str, Any]:
    """Means over images (nats per image), bits per dimension, active units (per layer too, for a hierarchy of
    `latent_layers` sizes, bottom first) and per-class figures."""
    iwae_nll = float(figures["iwae_nll"].mean())
    summary: dict[str, Any] = {"negative_elbo": float(figures["negative_elbo"].mean())}
    if "kl_loss" in figures:
        summary["reconstruction"] = float((figures["negative_elbo"] - figures["kl_loss"]).mean())
        summary["kl"] = float(figures["kl_loss"].mean())
    summary.update(
        {
            "iwae_nll": iwae_nll,
            "bits_per_dim": bits_per_dim(iwae_nll, num_pixels),
            "reference_style_loss": float(figures["reference_style_loss"].mean()),
            "reference_style_loss_posterior_mean": float(figures["reference_style_loss_posterior_mean"].mean()),
            "standard_errors": {
                "negative_elbo": _standard_error(figures["negative_elbo"]),
                "iwae_nll": _standard_error(figures["iwae_nll"]),
            },
            "loss": float(figures["loss"].mean()),
        }
    )
    if "posterior_means" in figures:
        count, variances = active_units(figures["posterior_means"])
        summary.update(
            active_units=count, active_unit_threshold=ACTIVE_UNIT_THRESHOLD, posterior_mean_variance=variances.tolist()
        )
        if latent_layers and sum(latent_layers) == len(variances):
            per_layer = variances.split(list(latent_layers))
            summary["active_units_per_layer"] = [int((layer > ACTIVE_UNIT_THRESHOLD).sum()) for layer in per_layer]
    if "kl_per_dimension" in figures:
        summary["kl_per_dimension"] = figures["kl_per_dimension"].mean(0).tolist()
    if labels is not None:
        per_class = {}
        for label in torch.unique(labels).tolist():
            mask = labels == label
            per_class[str(label)] = {
                "negative_elbo": float(figures["negative_elbo"][mask].mean()),
                "iwae_nll": float(figures["iwae_nll"][mask].mean()),
                "count": int(mask.sum()),
            }
        summary["per_class"] = per_class
    return summary


def evaluate_model(
    model: torch.nn.Module,
    data: ImageTensors,
    iwae_samples: int = 1000,
    elbo_samples: int = 10,
    seed: int = 0,
    batch_size: int = 100,
    max_batch_elements: int = DEFAULT_MAX_BATCH_ELEMENTS,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate `model` on uint8 `data` as it is evaluated everywhere (`evaluation_images`: one fixed Bernoulli draw
    for binarised models): the summary figures of `summarize_figures` plus the settings that produced them."""
    if iwae_samples < 1 or elbo_samples < 1 or batch_size < 1:
        raise EvaluationError(
            f"iwae_samples, elbo_samples and batch_size must be positive, got {iwae_samples}, {elbo_samples}, "
            f"{batch_size}."
        )
    if len(data) == 0:
        raise EvaluationError("No images to evaluate.")
    started = time.perf_counter()
    config = model.config
    images = evaluation_images(data, config.binarize, seed)
    bar = tqdm(total=math.ceil(len(data) / batch_size), desc=f"evaluate (IWAE K={iwae_samples})", unit="batch")
    bar.disable = not progress or bar.disable
    with bar:
        figures = per_image_figures(
            model,
            tensor_batches(images, batch_size),
            seed,
            elbo_samples=elbo_samples,
            iwae_samples=iwae_samples,
            max_batch_elements=max_batch_elements,
            progress=bar,
        )
    num_pixels = config.num_channels * config.image_size**2
    results = summarize_figures(figures, num_pixels, data.labels, getattr(config, "latent_dims", None))
    results.update(
        {
            "iwae_samples": iwae_samples,
            "elbo_samples": elbo_samples,
            "binarize": config.binarize,
            "evaluation_pixels": describe_binarization(config.binarize, seed),
            "seed": seed,
            "batch_size": batch_size,
            "num_images": len(data),
            "latent_dim": getattr(config, "latent_dim", None),
            "num_parameters": model.num_parameters(),
            "beta": getattr(config, "beta", None),
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    return results


# ---------------------------------------------------------------------------------------------- anomalies
def _batches(count: int, batch_size: int, progress: bool, description: str):
    starts = range(0, count, batch_size)
    return tqdm(starts, desc=description, unit="batch", disable=None if progress else True)


def anomaly_scores(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    method: str = "elbo",
    num_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 100,
    progress: bool = False,
) -> torch.Tensor:
    """Per-image anomaly scores (N,) in nats, higher = less like the training data: `model.anomaly_score` in
    seeded batches. A conditional model given no labels scores -log of the class mixture with a uniform class
    prior, -log(1/C sum_c exp(-score_c)), so unlabelled images can be scored."""
    if method not in ANOMALY_METHODS:
        raise EvaluationError(f"The anomaly method must be one of {list(ANOMALY_METHODS)}, got {method!r}.")
    num_samples = num_samples or ANOMALY_METHODS[method]
    num_classes = model.config.num_classes
    generator = torch.Generator().manual_seed(seed)
    scores = []
    with evaluating(model):
        for start in _batches(len(pixel_values), batch_size, progress, f"anomaly scores ({method})"):
            batch = pixel_values[start : start + batch_size].to(model.device)
            if labels is not None or num_classes is None:
                batch_labels = None if labels is None else labels[start : start + batch_size].to(model.device)
                scores.append(anomaly_score(model, batch, batch_labels, method, num_samples, generator).cpu())
                continue
            per_class = torch.stack(
                [anomaly_score(model, batch, label, method, num_samples, generator) for label in range(num_classes)]
            )
            scores.append((math.log(num_classes) - torch.logsumexp(-per_class.double(), dim=0)).cpu())
    return torch.cat(scores).double()


def fit_anomaly_threshold(scores: torch.Tensor | Sequence[float], quantile: float = 0.99) -> float:
    """The score above which an image is flagged: the `quantile` of scores of normal (training) images, so that
    about a fraction 1 - quantile of normal images is flagged."""
    if not 0.0 < quantile < 1.0:
        raise EvaluationError(f"quantile must be in (0, 1), got {quantile}.")
    values = np.asarray(torch.as_tensor(scores, dtype=torch.float64).cpu()).ravel()
    if values.size == 0:
        raise EvaluationError("Cannot fit an anomaly threshold on zero scores.")
    if not np.isfinite(values).all():
        raise EvaluationError("Cannot fit an anomaly threshold: some scores are NaN or infinite.")
    return float(np.quantile(values, quantile))


def write_scores_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------------------------------------- command line
def _fit_threshold(args: Any, model: torch.nn.Module, use_labels: bool) -> dict[str, Any] | None:
    """The threshold to flag anomalies with: given, fit on the threshold split's scores, or none."""
    if args.threshold is not None:
        return {"threshold": args.threshold, "source": "--threshold"}
    if args.dataset_name is None or args.threshold_split in (None, "", "none"):
        return None
    try:
        normal = load_split(
            args.dataset_name,
            model.config,
            args.threshold_split,
            args.dataset_config_name,
            args.image_column,
            args.label_column,
            args.max_threshold_samples,
            args.cache_dir,
        )
    except DataError as error:
        logger.warning("No anomaly threshold fit (%s); scores are written without flags.", error)
        return None
    pixel_values = to_pixel_values(evaluation_images(normal, model.config.binarize, args.seed).images)
    scores = anomaly_scores(
        model,
        pixel_values,
        normal.labels if use_labels else None,
        args.anomaly_method,
        args.anomaly_samples,
        args.seed,
        args.per_device_eval_batch_size,
        progress=True,
    )
    return {
        "threshold": fit_anomaly_threshold(scores, args.threshold_quantile),
        "source": f"quantile {args.threshold_quantile} of {len(scores)} {args.threshold_split!r} images",
        "quantile": args.threshold_quantile,
    }


def _score_rows(
    scores: torch.Tensor, threshold: float | None, keys: dict[str, list[Any]]
) -> tuple[list[dict[str, Any]], int | None]:
    rows = []
    for index, score in enumerate(scores.tolist()):
        row = {name: values[index] for name, values in keys.items()}
        row["score"] = round(score, 4)
        if threshold is not None:
            row["is_anomaly"] = int(score > threshold)
        rows.append(row)
    flagged = None if threshold is None else int((scores > threshold).sum())
    return rows, flagged


def run_anomaly_scoring(
    args: Any, model: torch.nn.Module, data: ImageTensors | None = None
) -> dict[str, Any]:
    """Score --image_folder (else the evaluated split `data`), flag against the threshold, write the CSV."""
    folder = args.image_folder is not None
    use_labels = not folder and data is not None and data.labels is not None
    threshold = _fit_threshold(args, model, use_labels)
    limit = None if threshold is None else threshold["threshold"]
    if folder:
        processor = VAEImageProcessor.for_model(model)
        paths, images = load_image_folder(args.image_folder, processor.image_size, processor.num_channels, processor)
        pixel_values = processor.to_pixel_values(images, seed=args.seed)
        labels, keys = None, {"file": [str(path.relative_to(args.image_folder)) for path in paths]}
    else:
        labels = data.labels
        keys = {"index": list(range(len(data)))}
        if labels is not None:
            keys["label"] = labels.tolist()
        pixel_values = to_pixel_values(evaluation_images(data, model.config.binarize, args.seed).images)
    scores = anomaly_scores(
        model,
        pixel_values,
        labels,
        args.anomaly_method,
        args.anomaly_samples,
        args.seed,
        args.per_device_eval_batch_size,
        progress=True,
    )
    rows, flagged = _score_rows(scores, limit, keys)
    path = write_scores_csv(args.anomaly_scores_output, rows)
    report = {
        "scored": args.image_folder if folder else f"{args.dataset_name} [{args.split}]",
        "method": args.anomaly_method,
        "num_samples": args.anomaly_samples or ANOMALY_METHODS[args.anomaly_method],
        "num_images": len(rows),
        "mean_score": float(scores.mean()),
        "scores_csv": str(path),
    }
    if threshold is not None:
        report.update(threshold)
        report["num_flagged"] = flagged
    return report


def format_summary(results: dict[str, Any]) -> str:
    """A readable summary of `evaluate_model`'s results."""
    lines = [
        f"hf-vae evaluation of {results.get('model', 'the model')} on {results.get('dataset', 'the data')} "
        f"[{results.get('split', '?')}]: {results['num_images']} images, {results['evaluation_pixels']}",
        f"  negative ELBO            {results['negative_elbo']:9.3f} nats/image  (reconstruction "
        f"{results['reconstruction']:.3f} + KL {results['kl']:.3f}; {results['elbo_samples']} z per image)",
        f"  {'IWAE NLL (K=' + str(results['iwae_samples']) + ')':<24} {results['iwae_nll']:9.3f} nats/image  "
        f"({results['bits_per_dim']:.4f} bits/dim; s.e. over images {results['standard_errors']['iwae_nll']:.3f})",
        f"  reference-style loss     {results['reference_style_loss']:9.3f} nats/image  (one z per image, BCE + "
        f"beta*KL; {results['reference_style_loss_posterior_mean']:.3f} at the posterior mean)",
        f"  active units             {results['active_units']:>9d} of {results['latent_dim']} "
        f"(posterior-mean variance > {results['active_unit_threshold']})",
    ]
    if "per_class" in results:
        lines.append("  per class:  label   count   -ELBO   IWAE NLL")
        for label, figures in results["per_class"].items():
            lines.append(
                f"             {label:>5} {figures['count']:>7} {figures['negative_elbo']:>7.2f} "
                f"{figures['iwae_nll']:>10.2f}"
            )
    lines.append(f"  seed {results['seed']}, batch {results['batch_size']}, {results['seconds']:.1f} s")
    return "\n".join(lines)


__all__ = [
    "ANOMALY_METHODS",
        "EvaluationError",
    "active_units",
    "anomaly_scores",
    "evaluate_model",
    "fit_anomaly_threshold",
    "format_summary",
    "load_image_folder",
    "load_model",
    "load_split",
    "per_image_figures",
    "summarize_figures",
]
