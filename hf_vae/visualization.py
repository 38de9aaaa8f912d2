"""Pictures of a trained VAE: prior samples, reconstructions, the latent space, the learned manifold,
interpolations and training curves, as PNG files of fixed pixel size.

Every picture `save_figures` writes carries a caption naming the model (and, when the caller knows it, the epoch or
step), because a PNG copied into a report or a model card no longer says where it came from.

Figures are drawn on `matplotlib.figure.Figure` objects (Agg rendering, no pyplot global state), so they can be
written from a training loop or a server without touching the process's matplotlib backend. Images are shown
as the model sees them: binarised (one seeded Bernoulli draw) for models trained on binarised data.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator
from torchvision.utils import make_grid

from .data import DataError, ImageTensors, evaluation_images, to_pixel_values
from .modeling_utils import HfVaePreTrainedModel, in_eval_mode

logger = logging.getLogger(__name__)

FIGURE_DPI = 100
# Inches; every PNG is exactly FIGURE_SIZES[name] * FIGURE_DPI pixels.
FIGURE_SIZES: dict[str, tuple[float, float]] = {
    "samples": (8.0, 8.0),
    "reconstructions": (10.0, 4.4),
    "latent_space": (8.0, 7.0),
    "latent_manifold": (8.0, 8.0),
    "interpolation": (10.0, 5.8),
    "training_curves": (11.0, 8.0),
    "layers": (12.0, 6.4),
}
# Titles of the training-curve panels of known loss terms; any other term of a family's `loss_terms` gets a panel
# titled with its name.
METRIC_TITLES = {
    "loss": "Loss (the training objective)",
    "recon_loss": "Reconstruction: -E_q[log p(x|z)]",
    "kl_loss": "KL(q(z|x) ‖ p(z))",
}
_GRID_PADDING = 2
_MAX_SAMPLE_ROWS = 20
PROJECTIONS = ("auto", "pca", "lda")
# Ridge added to the within-class scatter before LDA whitens by it, relative to its mean eigenvalue: large enough that
# latent dimensions the model does not use (posterior means ~0 for every image, so both scatters are ~0) cannot
# produce a large between/within ratio out of round-off, small enough to leave used dimensions alone.
_LDA_RIDGE = 1e-3
# Characters of a caption kept (from the end, where a path names the model) so that it fits the narrowest figure.
_MAX_CAPTION = 110
# Manifold grids up to this many steps label every row and column; larger ones label an even subset with both ends.
_MAX_LABELLED_STEPS = 25


def figure_pixel_size(name: str) -> tuple[int, int]:
    """(width, height) in pixels of the PNG `save_figures` writes for `name`."""
    width, height = FIGURE_SIZES[name]
    return round(width * FIGURE_DPI), round(height * FIGURE_DPI)


def _figure(name: str) -> Figure:
    return Figure(figsize=FIGURE_SIZES[name], dpi=FIGURE_DPI, layout="constrained")


def _default_caption(model: HfVaePreTrainedModel) -> str:
    """What a picture can say about its model unaided: where it was loaded from, else its class."""
    return str(getattr(model, "name_or_path", "") or "") or type(model).__name__


def _add_caption(figure: Figure, caption: str) -> None:
    """A small grey line at the bottom of the figure. `supxlabel` rather than `figure.text`: constrained layout
    makes room for it, so it never overlaps the axes, and the figure keeps its pixel size."""
    if len(caption) > _MAX_CAPTION:
        caption = "…" + caption[-(_MAX_CAPTION - 1) :]
    figure.supxlabel(caption, x=0.01, ha="left", fontsize=8, color="0.35")


def _format_value(value: float) -> str:
    """`value` in scientific notation with the fewest digits that still give it back (1e-03, 2.5e-04): learning
    rates are read as written in the configuration, not as 0.96 x 1e-3."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    for digits in range(7):
        text = f"{value:.{digits}e}"
        if abs(float(text) - value) <= 1e-9 * abs(value):
            return text
    return f"{value:.6e}"


def _grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] tiled `nrow` per row, white between them: (H', W') grey or (H', W', 3)."""
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=_GRID_PADDING, pad_value=1.0)
    array = grid.permute(1, 2, 0).clamp(0, 1).numpy()
    return array[..., 0] if images.shape[1] == 1 else array


def _cell_centres(count: int, size: int) -> list[float]:
    """Pixel coordinates of the centres of `count` grid cells of side `size` along one axis of a `_grid`."""
    return [_GRID_PADDING + index * (size + _GRID_PADDING) + (size - 1) / 2 for index in range(count)]


def _show_grid(axes, grid: np.ndarray, title: str) -> None:
    axes.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)


def _encode_means(
    model: HfVaePreTrainedModel, pixel_values: torch.Tensor, labels: torch.Tensor | None, batch_size: int = 1000
) -> torch.Tensor:
    """The posterior's mode for each image (its mean, for a Gaussian posterior)."""
    means = []
    for start in range(0, len(pixel_values), batch_size):
        batch_labels = None if labels is None else labels[start : start + batch_size]
        posterior = model.encode(pixel_values[start : start + batch_size].to(model.device), batch_labels).latent_dist
        means.append(posterior.mode().cpu())
    return torch.cat(means)


def _prior_name(model: HfVaePreTrainedModel) -> str:
    """How a samples picture names the prior it drew from."""
    if hasattr(model, "decode_top_down"):
        return "the top-down prior"
    names = {"StandardNormal": "N(0, I)", "VampPrior": "the VampPrior", "MixtureOfGaussians": "a mixture of Gaussians"}
    return names.get(type(getattr(model, "prior", None)).__name__, "p(z)")


# ---------------------------------------------------------------------------------------------- figures
@in_eval_mode
def plot_samples(model: HfVaePreTrainedModel, seed: int = 0, per_row: int = 10) -> Figure:
    """Images decoded from z ~ N(0, I): a per_row x per_row grid, or one row per class for conditional models."""
    generator = torch.Generator().manual_seed(seed)
    figure = _figure("samples")
    axes = figure.add_subplot()
    num_classes = model.config.num_classes
    if num_classes is None:
        images = model.sample(per_row * per_row, generator=generator)
        _show_grid(axes, _grid(images, per_row), f"Samples from the prior: decoder means at z ~ {_prior_name(model)}")
        return figure
    classes = list(range(min(num_classes, _MAX_SAMPLE_ROWS)))
    images = torch.cat([model.sample(per_row, generator=generator, labels=label) for label in classes])
    shown = "" if len(classes) == num_classes else f" (first {len(classes)} of {num_classes} classes)"
    _show_grid(axes, _grid(images, per_row), f"Samples from the prior, one row per class{shown}")
    axes.set_yticks(_cell_centres(len(classes), model.config.image_size), [str(label) for label in classes])
    axes.set_ylabel("class")
    return figure


@in_eval_mode
def plot_reconstructions(
    model: HfVaePreTrainedModel,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    per_row: int = 10,
    blocks: int = 2,
    title: str = "Images and their reconstructions (decoder means at the posterior mean)",
) -> Figure:
    """The first images above their reconstructions (the decoder's mean at the posterior mean)."""
    count = min(len(pixel_values), per_row * blocks)
    originals = pixel_values[:count]
    reconstructions = model.reconstruct(originals.to(model.device), None if labels is None else labels[:count]).cpu()
    rows, names = [], []
    for start in range(0, count, per_row):
        rows += [originals[start : start + per_row], reconstructions[start : start + per_row]]
        names += ["original", "reconstruction"]
    width = min(count, per_row)
    rows = [torch.cat([row, torch.ones(width - len(row), *row.shape[1:])]) for row in rows]  # pad a short last row
    figure = _figure("reconstructions")
    axes = figure.add_subplot()
    _show_grid(axes, _grid(torch.cat(rows), width), title)
    axes.set_yticks(_cell_centres(len(rows), model.config.image_size), names)
    return figure


def _fix_signs(directions: torch.Tensor) -> torch.Tensor:
    """Columns flipped so that each one's largest component is positive: SVD and eigh leave the sign of a direction
    arbitrary, which would mirror the picture from one run or machine to the next."""
    largest = directions.abs().argmax(0)
    signs = directions.gather(0, largest.unsqueeze(0)).sign()
    return directions * torch.where(signs == 0, torch.ones_like(signs), signs)


def _pca(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection on the first two principal components and the fraction of variance each explains."""
    centred = points - points.mean(0)
    _, singular_values, right = torch.linalg.svd(centred, full_matrices=False)
    explained = singular_values.pow(2) / singular_values.pow(2).sum()
    return centred @ _fix_signs(right[:2].T), explained[:2]


def _lda(points: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projection on Fisher's top two linear discriminants and each one's between/within-class variance ratio.

    PCA keeps the directions of largest variance, which in a VAE's latent are often spread within every class; LDA
    keeps those along which class means differ most relative to the spread inside the classes. Within-class scatter
    S_W (plus a small ridge) is factored as L L^T; the eigenvectors of L^-1 S_B L^-T (S_B the between-class scatter)
    mapped back through L^-T are the discriminants, scaled so that the within-class spread along each is ~1. Needs at
    least three classes for two meaningful directions."""
    points = points.double()
    mean = points.mean(0)
    classes, inverse = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(classes)).double()
    class_means = torch.zeros(len(classes), points.shape[1], dtype=points.dtype).index_add_(0, inverse, points)
    class_means /= counts.unsqueeze(1)
    within = points - class_means[inverse]
    scatter_within = within.T @ within / len(points)
    between = (class_means - mean) * (counts / len(points)).sqrt().unsqueeze(1)
    scatter_between = between.T @ between
    dim = points.shape[1]
    ridge = _LDA_RIDGE * scatter_within.trace() / dim + torch.finfo(points.dtype).tiny
    cholesky = torch.linalg.cholesky(scatter_within + ridge * torch.eye(dim, dtype=points.dtype))
    half = torch.linalg.solve_triangular(cholesky, scatter_between, upper=False)  # L^-1 S_B
    whitened = torch.linalg.solve_triangular(cholesky, half.T, upper=False)  # L^-1 S_B L^-T (symmetric)
    ratios, vectors = torch.linalg.eigh((whitened + whitened.T) / 2)
    top = vectors[:, -2:].flip(1)  # eigh sorts ascending
    directions = _fix_signs(torch.linalg.solve_triangular(cholesky.T, top, upper=True))  # L^-T v
    return (points - mean) @ directions, ratios[-2:].flip(0).clamp_min(0)


@in_eval_mode
def plot_latent_space(
    model: HfVaePreTrainedModel,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    max_points: int = 5000,
    projection: str = "auto",
) -> Figure:
    """Posterior means of up to `max_points` images (a seeded random subset), coloured by label.

    `projection` chooses how a latent of more than two dimensions is drawn: "pca" (the two directions of largest
    variance), "lda" (Fisher's two linear discriminants: the directions that separate the classes, which in a
    VAE's latent are often not those of largest variance), or "auto": LDA when there are labels of at least three
    classes and the latent has more than two dimensions, else PCA. Without labels of three classes LDA falls back
    to PCA, and the title says which was drawn. A 2-D latent is drawn as it is unless a projection is asked for;
    a 1-D latent against its label, jittered."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}.")
    count = min(len(pixel_values), max_points)
    chosen = torch.randperm(len(pixel_values), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    chosen_labels = None if labels is None else labels[chosen]
    means = _encode_means(model, pixel_values[chosen], chosen_labels).double()
    latent_dim = means.shape[1]
    figure = _figure("latent_space")
    axes = figure.add_subplot()
    if latent_dim == 1:
        jitter = torch.rand(count, generator=torch.Generator().manual_seed(seed)) - 0.5
        height = (chosen_labels.double() if chosen_labels is not None else torch.zeros(count)) + 0.8 * jitter
        coordinates = torch.stack([means[:, 0], height], dim=1)
        title = f"Latent space: posterior means of {count} images (1-D latent, jittered by class)"
        axes.set_xlabel("z₁")
        axes.set_ylabel("class" if chosen_labels is not None else "")
    elif latent_dim == 2 and projection == "auto":
        coordinates = means
        title = f"Latent space: posterior means of {count} images"
        axes.set_xlabel("z₁")
        axes.set_ylabel("z₂")
    else:
        separable = chosen_labels is not None and len(torch.unique(chosen_labels)) >= 3
        if projection != "pca" and separable:
            coordinates, ratios = _lda(means, chosen_labels)
            title = (
                f"Latent space: posterior means of {count} images,\n"
                f"linear discriminant analysis (LDA) of the {latent_dim}-D latent"
            )
            axes.set_xlabel(f"discriminant 1 (between/within-class variance ratio {ratios[0]:.3g})")
            axes.set_ylabel(f"discriminant 2 (between/within-class variance ratio {ratios[1]:.3g})")
        else:
            coordinates, explained = _pca(means)
            fallback = " (LDA needs labels of 3 or more classes)" if projection == "lda" else ""
            title = (
                f"Latent space: posterior means of {count} images,\n"
                f"PCA of the {latent_dim}-D latent: 2 components explain {explained.sum():.0%} of the variance"
                f"{fallback}"
            )
            axes.set_xlabel(f"principal component 1 ({explained[0]:.0%} of variance)")
            axes.set_ylabel(f"principal component 2 ({explained[1]:.0%} of variance)")
    points = coordinates.numpy()
    if chosen_labels is None:
        axes.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6, color="tab:blue", linewidths=0)
    else:
        classes = int(chosen_labels.max()) + 1
        if classes <= 20:
            colours = ListedColormap(colormaps["tab10" if classes <= 10 else "tab20"].colors[:classes])
            norm = BoundaryNorm(np.arange(classes + 1) - 0.5, classes)
        else:
            colours, norm = colormaps["viridis"], None
        scatter = axes.scatter(
            points[:, 0], points[:, 1], c=chosen_labels.numpy(), cmap=colours, norm=norm, s=4, alpha=0.7, linewidths=0
        )
        colour_bar = figure.colorbar(scatter, ax=axes, ticks=range(classes) if classes <= 20 else None)
        colour_bar.set_label("label")
        colour_bar.solids.set_alpha(1.0)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    return figure


@in_eval_mode
def plot_latent_manifold(model: HfVaePreTrainedModel, steps: int = 20, label: int | None = None) -> Figure:
    """The decoder over a 2-D latent grid, as in Kingma & Welling (2013): an evenly spaced grid in (0, 1)^2
    mapped through the Gaussian inverse CDF, so that each cell covers equal prior mass. z₂ grows upwards."""
    if model.config.latent_dim != 2:
        raise ValueError(
            f"The latent manifold is drawn for 2-D latents only; this model has {model.config.latent_dim}."
        )
    probabilities = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
    values = torch.distributions.Normal(0.0, 1.0).icdf(probabilities)
    z1, z2 = torch.meshgrid(values, values.flip(0), indexing="xy")
    latents = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1).float()
    if model.config.num_classes is not None and label is None:
        label = 0
    images = model.decode(latents.to(model.device), labels=label).images
    figure = _figure("latent_manifold")
    axes = figure.add_subplot()
    suffix = "" if model.config.num_classes is None else f", class {label}"
    _show_grid(axes, _grid(images, steps), f"Learned manifold: decoder means at z = Φ⁻¹(u), u on an even grid{suffix}")
    centres = _cell_centres(steps, model.config.image_size)
    # Every row and column, or an even subset that keeps both ends: the extreme cells are where the prior's tails
    # are, and a reader needs to know how far out they are.
    shown = range(steps) if steps <= _MAX_LABELLED_STEPS else sorted(set(np.linspace(0, steps - 1, 11).round()))
    shown = [int(i) for i in shown]
    axes.set_xticks([centres[i] for i in shown], [f"{values[i]:.2f}" for i in shown], fontsize=7, rotation=90)
    axes.set_yticks([centres[i] for i in shown], [f"{values.flip(0)[i]:.2f}" for i in shown], fontsize=7)
    axes.set_xlabel("z₁")
    axes.set_ylabel("z₂")
    return figure


def _interpolation_pairs(
    count: int, labels: torch.Tensor | None, same_class: bool, generator: torch.Generator, pairs: int
) -> list[tuple[int, int]]:
    """Index pairs: of one class each (conditional models), of two different classes when labels exist, else any."""
    order = torch.randperm(count, generator=generator).tolist()
    if labels is None:
        return [(order[2 * i], order[2 * i + 1]) for i in range(min(pairs, count // 2))]
    chosen: list[tuple[int, int]] = []
    used: set[int] = set()
    for first in order:
        if first in used:
            continue
        partner = next(
            (j for j in order if j not in used and j != first and bool(labels[j] == labels[first]) == same_class),
            None,
        )
        if partner is not None:
            chosen.append((first, partner))
            used.update((first, partner))
        if len(chosen) == pairs:
            break
    return chosen


@in_eval_mode
def plot_interpolation(
    model: HfVaePreTrainedModel,
    pixel_values: torch.Tensor,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    pairs: int = 6,
    steps: int = 10,
) -> Figure:
    """Rows walking the latent space in a straight line between the posterior means of pairs of test images,
    each row framed by the two originals. Conditional models interpolate within one class (the label is fixed
    along a row); unconditional ones between images of different classes."""
    conditional = model.config.num_classes is not None
    chosen = _interpolation_pairs(len(pixel_values), labels, conditional, torch.Generator().manual_seed(seed), pairs)
    if not chosen:
        raise DataError("Interpolation needs at least two images.")
    starts = torch.stack([pixel_values[i] for i, _ in chosen])
    ends = torch.stack([pixel_values[j] for _, j in chosen])
    path_labels = None
    if conditional:
        path_labels = torch.stack([labels[i] for i, _ in chosen])
    paths = model.interpolate(starts.to(model.device), ends.to(model.device), steps, labels=path_labels).cpu()
    rows = torch.cat([starts.unsqueeze(1), paths, ends.unsqueeze(1)], dim=1)
    figure = _figure("interpolation")
    axes = figure.add_subplot()
    what = "within a class" if conditional else "between test images"
    _show_grid(axes, _grid(rows.flatten(0, 1), steps + 2), f"Latent interpolation {what} ({steps} steps)")
    size = model.config.image_size
    weights = [f"{t:.2f}" for t in torch.linspace(0, 1, steps).tolist()]
    axes.set_xticks(_cell_centres(steps + 2, size), ["start"] + weights + ["end"], fontsize=8)
    axes.set_xlabel("original | weight t of z = (1 - t) z_start + t z_end | original")
    if labels is not None:
        names = [
            f"class {int(labels[i])}" if conditional else f"{int(labels[i])} → {int(labels[j])}" for i, j in chosen
        ]
        axes.set_yticks(_cell_centres(len(chosen), size), names)
    return figure


def read_metrics(path: str | Path) -> dict[str, list[float]]:
    """The columns of a training `metrics.csv` as lists of floats (empty cells become NaN)."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise DataError(f"{path} has no rows: nothing to plot.")

    def number(text: str | None) -> float:
        try:
            return float(text)
        except (TypeError, ValueError):
            return math.nan

    return {column: [number(row.get(column)) for row in rows] for column in rows[0]}


def _draw_learning_rate(axes, epochs: list[float], rates: list[float], marker: str | None) -> None:
    """The learning rate, without inventing variation: a constant rate is a flat line with its one value written
    out (matplotlib would otherwise stretch a 0.96-1.04 axis under a "1e-3" offset, as if it moved); a rate that
    spans more than a factor 10 is drawn on a log axis; any other has every tick written in full, without offset."""
    axes.plot(epochs, rates, marker=marker, markersize=3, color="tab:green")
    finite = [rate for rate in rates if math.isfinite(rate)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    if high - low <= 1e-9 * max(abs(high), abs(low)):
        axes.yaxis.set_major_locator(FixedLocator([high]))
        axes.yaxis.set_minor_locator(FixedLocator([]))
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _format_value(value)))
        margin = abs(high) / 2 if high else 1.0
        axes.set_ylim(high - margin, high + margin)
        axes.set_title(f"Learning rate (constant {_format_value(high)})")
        return
    if low > 0 and high / low > 10:
        axes.set_yscale("log")
    else:
        axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: _format_value(value)))


def plot_training_curves(metrics: dict[str, list[float]]) -> Figure:
    """Loss, reconstruction and KL (train and validation) and the learning rate per epoch."""
    if "epoch" not in metrics:
        raise DataError(f"metrics.csv needs an 'epoch' column; its columns are {sorted(metrics)}.")
    epochs = metrics["epoch"]
    marker = "o" if len(epochs) <= 30 else None
    figure = _figure("training_curves")
    terms = ["loss"] + [
        column[len("train_") :]
        for column in metrics
        if column.startswith("train_") and column != "train_loss"
    ]
    columns = 2 if len(terms) + 1 <= 4 else 3
    grid = figure.subplots(math.ceil((len(terms) + 1) / columns), columns, sharex=True, squeeze=False)
    for axes, term in zip(grid.flat, terms, strict=False):
        for split, name in (("train", "train"), ("val", "validation")):
            values = metrics.get(f"{split}_{term}")
            if values is not None and not all(math.isnan(value) for value in values):
                axes.plot(epochs, values, marker=marker, markersize=3, label=name)
        axes.set_title(METRIC_TITLES.get(term, term))
        axes.set_ylabel("nats per image")
        axes.legend()
    for axes in grid.flat[len(terms) + 1 :]:
        axes.set_visible(False)
    rate_axes = grid.flat[len(terms)]
    rate_axes.set_title("Learning rate")
    if "learning_rate" in metrics:
        _draw_learning_rate(rate_axes, epochs, metrics["learning_rate"], marker)
    for axes in grid.flat:
        axes.grid(True, alpha=0.3)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    for axes in grid[-1]:
        axes.set_xlabel("epoch")
    figure.suptitle("Training curves")
    return figure


# ---------------------------------------------------------------------------------------------- all at once
def draw_figures(
    model: HfVaePreTrainedModel,
    data: ImageTensors,
    metrics_csv: str | Path | None = None,
    seed: int = 0,
    caption: str | None = None,
) -> dict[str, Figure]:
    """The figures `save_figures` writes, as name -> `Figure`, each captioned with `caption` (default: the model's
    `name_or_path`, else its class name)."""
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        return _draw_figures(model, data, metrics_csv, seed, caption)


def save_figures(
    model: HfVaePreTrainedModel,
    data: ImageTensors,
    output_dir: str | Path,
    metrics_csv: str | Path | None = None,
    seed: int = 0,
    caption: str | None = None,
) -> dict[str, Path]:
    """Write samples.png, reconstructions.png, latent_space.png, latent_manifold.png (2-D latents only),
    interpolation.png and training_curves.png (when `metrics_csv` exists) into `output_dir`; return name -> path.

    `data` holds uint8 images (a test or validation split); they are shown binarised with `seed` (one Bernoulli
    draw, which the reconstructions' title names) when the model was trained on binarised data. Every picture is
    captioned with `caption`, e.g. "pretrained/mnist, epoch 12 (step 5520)"; without one, with the model's
    `name_or_path` or class name. The model draws in eval mode and is handed back in the mode it came in, and the
    global RNG streams are left as they were, so a training run with pictures trains exactly as one without."""
    logger.info("Drawing the pictures into %s.", output_dir)
    figures = draw_figures(model, data, metrics_csv, seed, caption)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, figure in figures.items():
        paths[name] = output_dir / f"{name}.png"
        figure.savefig(paths[name], dpi=FIGURE_DPI)
    return paths


def _draw_figures(
    model: HfVaePreTrainedModel,
    data: ImageTensors,
    metrics_csv: str | Path | None,
    seed: int,
    caption: str | None,
) -> dict[str, Figure]:
    if len(data) < 2:
        raise DataError(f"Pictures need at least 2 images, got {len(data)}.")
    if model.config.num_classes is not None and data.labels is None:
        raise DataError(
            f"The model is conditional (num_classes={model.config.num_classes}): the images need labels to be "
            "encoded and reconstructed; pass a split with a label column."
        )
    # One `seed` both binarises the images and is named in the reconstructions' title, so the title cannot
    # claim another draw than the one shown.
    pixel_values = to_pixel_values(evaluation_images(data, model.config.binarize, seed).images)
    labels = data.labels
    figures: dict[str, Figure] = {}
    figures["samples"] = plot_samples(model, seed)
    binarized = model.config.binarize in ("dynamic", "static")
    title = (
        f"Binarised images (one Bernoulli draw, seed {seed}) and their reconstructions (pixel probabilities)"
        if binarized
        else "Images and their reconstructions (decoder means at the posterior mean)"
    )
    figures["reconstructions"] = plot_reconstructions(model, pixel_values, labels, title=title)
    figures["latent_space"] = plot_latent_space(model, pixel_values, labels, seed, projection="auto")
    if getattr(model.config, "latent_dim", None) == 2:
        figures["latent_manifold"] = plot_latent_manifold(model)
    figures["interpolation"] = plot_interpolation(model, pixel_values, labels, seed)
    if hasattr(model, "decode_top_down"):
        figures["layers"] = plot_layers(model, seed)
    if metrics_csv is not None and Path(metrics_csv).is_file():
        figures["training_curves"] = plot_training_curves(read_metrics(metrics_csv))
    caption = _default_caption(model) if caption is None else caption
    for figure in figures.values():
        _add_caption(figure, caption)
    return figures


@in_eval_mode
def plot_layers(model: HfVaePreTrainedModel, seed: int = 0, rows: int = 6, columns: int = 8) -> Figure:
    """What each level of a hierarchical model decides, two grids of prior samples. Left: each row keeps one draw of
    the top latents and resamples the layers below (what varies within a row is the lower layers' part). Right: each
    row keeps the lower layers' noise and resamples the top (what varies is the top layer's part)."""
    generator = torch.Generator().manual_seed(seed)
    like = next(model.parameters())
    dims = model.config.latent_dims
    tops = model.top_prior.sample(max(rows, columns), generator, like=like)  # N(0, I) or a learned top prior
    noises = [torch.randn(max(rows, columns), dim, generator=generator).to(like) for dim in dims[:-1]]

    def grid(top_index, noise_index):
        top = tops[top_index]
        return model.decode_top_down(top, [noise[noise_index] for noise in noises])

    row, column = torch.arange(rows).repeat_interleave(columns), torch.arange(columns).repeat(rows)
    fixed_top = grid(row, column)
    fixed_lower = grid(column, row)
    figure = _figure("layers")
    left, right = figure.subplots(1, 2)
    _show_grid(left, _grid(fixed_top, columns), "Top layer fixed per row, lower layers resampled")
    _show_grid(right, _grid(fixed_lower, columns), "Lower layers fixed per row, top layer resampled")
    return figure


# ---------------------------------------------------------------------------------------------- command line
def _find_model_file(model: str, revision: str | None, name: str) -> str | None:
    """A file written next to the model by `hf-vae train`: in a local model folder, else in its Hub repo."""
    local = Path(model).expanduser() / name
    if local.is_file():
        return str(local)
    if Path(model).expanduser().exists():
        return None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(model, name, revision=revision)
    except (OSError, ValueError) as error:
        logger.info("No %s for %s (%s).", name, model, error)
        return None


def _find_metrics(model: str, revision: str | None) -> str | None:
    """The model's own metrics.csv: next to a local model, else from its Hub repo when it has one."""
    found = _find_model_file(model, revision, "metrics.csv")
    if found is None:
        logger.info("No metrics.csv for %s: training_curves.png is skipped.", model)
    return found


def command_caption(model: str, revision: str | None = None) -> str:
    """The caption `hf-vae visualize` puts on its pictures: the --model argument (and revision) and, when the run's
    train_results.json is there, the epoch and step of the weights (the best model `hf-vae train` kept)."""
    caption = model if revision is None else f"{model}@{revision}"
    found = _find_model_file(model, revision, "train_results.json")
    if found is None:
        return caption
    try:
        results = json.loads(Path(found).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        logger.info("Unreadable train_results.json for %s (%s): the pictures name no epoch.", model, error)
        return caption
    if not isinstance(results, dict):
        return caption
    epoch, step, epochs = results.get("best_epoch"), results.get("best_step"), results.get("epochs_completed")
    if isinstance(epoch, int) and not isinstance(epoch, bool):
        caption += f", best model of epoch {epoch}"
        if isinstance(epochs, int) and not isinstance(epochs, bool):
            caption += f" of {epochs}"
        if isinstance(step, int) and not isinstance(step, bool):
            caption += f" (step {step})"
    return caption


__all__ = [
    "FIGURE_DPI",
    "FIGURE_SIZES",
    "PROJECTIONS",
    "command_caption",
    "draw_figures",
    "figure_pixel_size",
    "plot_interpolation",
    "plot_layers",
    "plot_latent_manifold",
    "plot_latent_space",
    "plot_reconstructions",
    "plot_samples",
    "plot_training_curves",
    "read_metrics",
    "save_figures",
]
