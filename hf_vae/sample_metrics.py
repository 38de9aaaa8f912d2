"""How good a model's samples are, measured in a feature network's feature space against real images: the Fréchet
distance (Heusel et al. 2017, FID's formula with a digit classifier instead of Inception), precision and recall
(Kynkäänniemi et al. 2019) and, for conditional models, class fidelity (the share of samples the classifier assigns to
the class they were drawn for).

The math is plain torch in float64 (an eigendecomposition instead of scipy's `sqrtm`), so nothing beyond torch is
needed; every draw comes from one seeded generator, so the same model, network, seed and sizes give the same figures.
"""

from __future__ import annotations

import time
from typing import Any

import torch

DEFAULT_NUM_SAMPLES = 10_000
DEFAULT_NEIGHBOURS = 3


# ---------------------------------------------------------------------------------------------- the math
def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {tuple(features.shape)}.")
    features = features.double()
    return features.mean(0), torch.cov(features.T).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor) -> float:
    """||m1 - m2||^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)), the squared 2-Wasserstein distance between two Gaussians.

    tr((C1 C2)^(1/2)) is computed as the sum of the square roots of the eigenvalues of C1^(1/2) C2 C1^(1/2), a
    symmetric positive semi-definite matrix with the same eigenvalues as C1 C2: no complex parts to drop."""
    mean1, cov1, mean2, cov2 = (tensor.double() for tensor in (mean1, cov1, mean2, cov2))
    root = _psd_sqrt(cov1)
    middle = root @ cov2 @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return float(distance.clamp(min=0))


def frechet_distance_of_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """The Fréchet distance between the Gaussians fitted to two feature sets."""
    return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2))


def _kth_neighbour_radii(features: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point of the same set."""
    if features.shape[0] <= k:
        raise ValueError(f"k={k} nearest neighbours need more than {k} points, got {features.shape[0]}.")
    radii = [
        torch.cdist(block, features).topk(k + 1, dim=1, largest=False).values[:, k] for block in features.split(chunk)
    ]
    return torch.cat(radii)


def _coverage(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Share of `points` inside at least one ball (centre, radius)."""
    inside = [(torch.cdist(block, centres) <= radii).any(dim=1) for block in points.split(chunk)]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: torch.Tensor,
    fake: torch.Tensor,
    k: int = DEFAULT_NEIGHBOURS,
    chunk: int = 1000,
    real_radii: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around
    its points reaching their k-th nearest neighbour. Precision: the share of `fake` points inside the real manifold
    (samples look real); recall: the share of `real` points inside the fake one (the samples cover the data).
    `real_radii` (`_kth_neighbour_radii(real, k)`) may be passed to reuse them across sample sets."""
    real, fake = real.double(), fake.double()
    if real_radii is None:
        real_radii = _kth_neighbour_radii(real, k, chunk)
    precision = _coverage(fake, real, real_radii, chunk)
    recall = _coverage(real, fake, _kth_neighbour_radii(fake, k, chunk), chunk)
    return precision, recall


def class_fidelity(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose predicted class is the one they were drawn for."""
    return float((logits.argmax(dim=1) == labels.to(logits.device)).double().mean())


# ---------------------------------------------------------------------------------------------- on a model
@torch.no_grad()
def _features(network: torch.nn.Module, pixel_values: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    pairs = [network.features_and_logits(batch) for batch in pixel_values.split(batch_size)]
    features, logits = zip(*pairs, strict=True)
    return torch.cat(features).cpu(), torch.cat(logits).cpu()


def balanced_labels(num_samples: int, num_classes: int) -> torch.Tensor:
    """0, 1, ..., num_classes - 1, 0, 1, ...: every class asked for equally often (to within one sample)."""
    return torch.arange(num_samples) % num_classes


@torch.no_grad()
def draw_samples(
    model: Any,
    num_samples: int,
    seed: int = 0,
    batch_size: int = 1000,
    sampler: str = "prior",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`num_samples` images from `model.sample` in batches, from one generator seeded with `seed` (on the CPU, so
    the draws do not depend on the device), with balanced class labels for conditional models."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = model.config.num_classes or getattr(model, "sample_classes", None)  # a VQ-VAE's code prior
    labels = balanced_labels(num_samples, num_classes) if num_classes is not None else None
    images = []
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        batch_labels = None if labels is None else labels[start : start + count]
        images.append(
            model.sample(count, generator=generator, labels=batch_labels, temperature=temperature, sampler=sampler)
        )
    return torch.cat(images), labels


def sample_metrics(
    model: Any,
    real_pixel_values: torch.Tensor,
    network: torch.nn.Module,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    seed: int = 0,
    batch_size: int = 1000,
    samplers: tuple[str, ...] | None = None,
    neighbours: int | None = DEFAULT_NEIGHBOURS,
    temperature: float = 1.0,
) -> dict[str, Any]:
    """Fréchet distance, precision / recall (unless `neighbours` is None) and, for conditional models, class fidelity
    of `num_samples` samples of each of `samplers` (default: every sampler the model has) against
    `real_pixel_values` (floats in [0, 1], e.g. the test split's grey levels). Each sampler draws with the same seed.
    """
    started = time.perf_counter()
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2 (a covariance needs two points), got {num_samples}.")
    network = network.eval()
    real_features, _ = _features(network, real_pixel_values.to(network.device), batch_size)
    real_statistics = gaussian_statistics(real_features)
    real_radii = _kth_neighbour_radii(real_features.double(), neighbours, 1000) if neighbours is not None else None
    results: dict[str, Any] = {}
    for sampler in samplers or tuple(model.samplers):
        images, labels = draw_samples(model, num_samples, seed, batch_size, sampler, temperature)
        fake_features, logits = _features(network, images.to(network.device), batch_size)
        figures: dict[str, Any] = {
            "frechet_distance": frechet_distance(*real_statistics, *gaussian_statistics(fake_features))
        }
        if neighbours is not None:
            figures["precision"], figures["recall"] = precision_recall(
                real_features, fake_features, neighbours, real_radii=real_radii
            )
        if labels is not None:
            figures["class_fidelity"] = class_fidelity(logits, labels)
            figures["class_fidelity_per_class"] = {
                str(label): class_fidelity(logits[labels == label], labels[labels == label])
                for label in labels.unique().tolist()
            }
        results[sampler] = figures
    return {
        "samplers": results,
        "num_samples": num_samples,
        "num_real_images": len(real_pixel_values),
        "seed": seed,
        "temperature": temperature,
        "neighbours": neighbours,
        "feature_dim": real_features.shape[1],
        "seconds": round(time.perf_counter() - started, 2),
    }


def format_sample_metrics(report: dict[str, Any]) -> str:
    """The summary lines of `sample_metrics`' report, one per sampler."""
    lines = [
        f"  samples ({report['num_samples']} per sampler, seed {report['seed']}) against {report['num_real_images']} "
        f"real images, in the {report['feature_dim']} features of {report.get('feature_network', 'the network')}:"
    ]
    for sampler, figures in report["samplers"].items():
        line = f"    {sampler:<6} Fréchet distance {figures['frechet_distance']:8.3f}"
        if "precision" in figures:
            line += f"   precision {figures['precision']:.3f}   recall {figures['recall']:.3f}"
        if "class_fidelity" in figures:
            line += f"   class fidelity {figures['class_fidelity']:.2%}"
        lines.append(line)
    return "\n".join(lines)


__all__ = [
    "format_sample_metrics",
    "balanced_labels",
    "class_fidelity",
    "draw_samples",
    "frechet_distance",
    "frechet_distance_of_features",
    "gaussian_statistics",
    "precision_recall",
    "sample_metrics",
]
