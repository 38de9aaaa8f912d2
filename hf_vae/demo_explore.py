"""What the demo's Explore tab moves through, per family, without any UI code: a set of named slider rows and a
function from slider values to a decoded image.

- a 2-D Gaussian VAE: x/y sliders over its latent plane, plus a latent map (the test set's posterior means coloured
  by digit) on which a click picks a point;
- a larger Gaussian latent: sliders along the top principal components of the posterior means, in standard
  deviations from their mean;
- a hierarchical VAE: one row of sliders per stochastic layer (the top latents, then the noise of each lower layer's
  draw from p(z_l | z_l+1)), decoded top-down;
- a VQ-VAE: the code grid of a test image, as a table of codebook indices to edit (`CodeGrid`), decoded by
  `decode_indices`; its cloud holds code grids instead of posterior means.

Without data (the dataset cannot be loaded) the point cloud is a sample of the prior instead of posterior means.
A new family adds one builder to `EXPLORERS`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .modeling_utils import evaluating
from .visualization import _encode_means, _fix_signs

MAP_SIZE = 320
# Matplotlib's tab10, so that the demo's map and the committed latent_space.png colour digits alike.
TAB10 = np.array(
    [
        [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
        [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
    ],  # fmt: skip
    dtype=np.uint8,
)


@dataclass
class LatentCloud:
    """Points of the latent space to explore around: posterior means of real images (with their labels), or prior
    samples when no data could be loaded (`source` says which)."""

    points: torch.Tensor
    labels: torch.Tensor | None
    source: str


@dataclass
class Slider:
    label: str
    minimum: float
    maximum: float
    value: float = 0.0


@dataclass
class CodeGrid:
    """A VQ-VAE's editable code grid: the grids to start from (N, h, w) (the cloud's), the codebook size, and
    `decode(grid)` (h, w) -> image (C, H, W) in [0, 1]."""

    starts: torch.Tensor
    codebook_size: int
    decode: Callable[[torch.Tensor], torch.Tensor]

    def parse(self, table: Any) -> torch.Tensor:
        """The edited table (a DataFrame, an array or a list of rows) as a (h, w) grid of codes; a ValueError names
        the first bad cells (1-based, as the page numbers them) and the range codes must lie in."""
        height, width = self.starts.shape[1:]
        cells = np.asarray(getattr(table, "values", table), dtype=object)
        if cells.shape != (height, width):
            shape = " x ".join(map(str, cells.shape))
            raise ValueError(f"The code grid must be {height} x {width} cells, got {shape}.")
        bad = []
        grid = torch.zeros(height, width, dtype=torch.long)
        for (row, column), value in np.ndenumerate(cells):
            code = _as_code(value)
            if code is None or not 0 <= code < self.codebook_size:
                what = "not a whole number" if code is None else "outside the codebook"
                bad.append(f"row {row + 1}, column {column + 1} is {str(value).strip() or 'empty'!r} ({what})")
            else:
                grid[row, column] = code
        if bad:
            more = f"; and {len(bad) - 3} more cells" if len(bad) > 3 else ""
            raise ValueError(f"Codes must be whole numbers in [0, {self.codebook_size}): {'; '.join(bad[:3])}{more}.")
        return grid

    def resample(self, grid: torch.Tensor, row: int, column: int, seed: int) -> torch.Tensor:
        """A copy of `grid` with cell (row, column), 0-based, set to a code drawn uniformly (seeded), never the
        code it had, so the picture changes."""
        generator = torch.Generator().manual_seed(seed)
        new = int(torch.randint(self.codebook_size - 1, (1,), generator=generator))
        grid = grid.clone()
        grid[row, column] = new + int(new >= grid[row, column])
        return grid


def _as_code(value: Any) -> int | None:
    """A table cell as an integer code, or None when it is not a whole number ("7", 7.0 and 7 are)."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


@dataclass
class Explorer:
    """Slider rows (a title and its sliders) and `decode(values, label)` -> image (C, H, W) in [0, 1], where
    `values` lists every slider's value, row after row. `to_map`/`from_map` relate the x/y sliders to pixels of
    `latent_map` (2-D latents only). A VQ-VAE's explorer has no sliders but a `code_grid`; its `decode` takes the
    grid's codes, row after row."""

    description: str
    rows: list[tuple[str, list[Slider]]]
    decode: Callable[[list[float], int | None], torch.Tensor]
    latent_map: Callable[[tuple[float, float] | None], Image.Image] | None = None
    from_map: Callable[[int, int], tuple[float, float]] | None = None
    code_grid: CodeGrid | None = None
    sliders: list[Slider] = field(init=False)

    def __post_init__(self) -> None:
        self.sliders = [slider for _, row in self.rows for slider in row]


def latent_cloud(
    model: torch.nn.Module,
    pixel_values: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    num_prior_samples: int = 2000,
    seed: int = 0,
) -> LatentCloud:
    """Posterior means of `pixel_values` (a conditional model encodes each with its label), else prior samples; for
    a VQ-VAE, code grids (flattened) instead."""
    if hasattr(model, "decode_indices"):
        return _code_cloud(model, pixel_values, labels, seed)
    with evaluating(model):
        if pixel_values is not None:
            use_labels = labels if model.config.num_classes is not None else None
            means = _encode_means(model, pixel_values, use_labels).float()
            return LatentCloud(means, labels, f"posterior means of {len(means)} test images")
        generator = torch.Generator().manual_seed(seed)
        like = next(model.parameters())
        prior = getattr(model, "prior", None)
        if prior is not None:
            points = prior.sample(num_prior_samples, generator, like=like).float().cpu()
        else:
            points = torch.randn(num_prior_samples, model.config.latent_dim, generator=generator)
    return LatentCloud(points, None, f"{num_prior_samples} samples of the prior (no test data loaded)")


def _code_cloud(
    model: torch.nn.Module,
    pixel_values: torch.Tensor | None,
    labels: torch.Tensor | None,
    seed: int,
    num_prior_samples: int = 16,
    batch_size: int = 500,
) -> LatentCloud:
    """A VQ-VAE's code grids (N, h * w): of `pixel_values`, else drawn from its code prior (a few: each grid is
    generated code by code)."""
    with evaluating(model):
        if pixel_values is not None:
            grids = [
                model.encode(pixel_values[start : start + batch_size].to(model.device)).indices.cpu()
                for start in range(0, len(pixel_values), batch_size)
            ]
            points = torch.cat(grids).flatten(1)
            return LatentCloud(points, labels, f"the code grids of {len(points)} test images")
        generator = torch.Generator().manual_seed(seed)
        prior = model.code_prior
        if prior is None:
            size, grid = model.config.codebook_size, model.config.grid_size
            points = torch.randint(size, (num_prior_samples, grid * grid), generator=generator)
        else:
            from .code_prior import generate_codes

            prior.to(model.device)
            points = generate_codes(prior, num_prior_samples, generator).cpu().flatten(1)
    return LatentCloud(points, None, f"{num_prior_samples} code grids drawn from the prior (no test data loaded)")


def _decoder(model: torch.nn.Module) -> Callable[[torch.Tensor, int | None], torch.Tensor]:
    def decode(latents: torch.Tensor, label: int | None) -> torch.Tensor:
        labels = None if model.config.num_classes is None else torch.tensor([label or 0])
        with evaluating(model):
            return model.decode(latents.view(1, -1).to(model.device, model.dtype), labels).images[0].cpu()

    return decode


def plane_explorer(model: torch.nn.Module, cloud: LatentCloud) -> Explorer:
    """A 2-D latent: x/y sliders over the cloud's extent (padded), and its map."""
    low = cloud.points.min(0).values
    high = cloud.points.max(0).values
    pad = (high - low).clamp_min(1e-3) * 0.05
    low = [math.floor(value * 100) / 100 for value in (low - pad).tolist()]
    high = [math.ceil(value * 100) / 100 for value in (high + pad).tolist()]
    centre = [round(value, 2) for value in cloud.points.mean(0).tolist()]
    decode = _decoder(model)

    def to_pixel(x: float, y: float) -> tuple[int, int]:
        column = round((x - low[0]) / (high[0] - low[0]) * (MAP_SIZE - 1))
        row = round((high[1] - y) / (high[1] - low[1]) * (MAP_SIZE - 1))
        return min(max(column, 0), MAP_SIZE - 1), min(max(row, 0), MAP_SIZE - 1)

    def from_map(column: int, row: int) -> tuple[float, float]:
        x = low[0] + column / (MAP_SIZE - 1) * (high[0] - low[0])
        y = high[1] - row / (MAP_SIZE - 1) * (high[1] - low[1])
        return x, y

    base = np.full((MAP_SIZE, MAP_SIZE, 3), 250, dtype=np.uint8)
    for index, (x, y) in enumerate(cloud.points.tolist()):
        column, row = to_pixel(x, y)
        colour = (70, 70, 70) if cloud.labels is None else TAB10[int(cloud.labels[index]) % len(TAB10)]
        base[max(row - 1, 0) : row + 2, max(column - 1, 0) : column + 2] = colour

    def latent_map(point: tuple[float, float] | None = None) -> Image.Image:
        canvas = base.copy()
        if point is not None:
            column, row = to_pixel(*point)
            canvas[max(row - 8, 0) : row + 9, max(column - 1, 0) : column + 2] = 0
            canvas[max(row - 1, 0) : row + 2, max(column - 8, 0) : column + 9] = 0
        return Image.fromarray(canvas)

    sliders = [Slider("z₁ (x)", low[0], high[0], centre[0]), Slider("z₂ (y)", low[1], high[1], centre[1])]
    return Explorer(
        f"The 2-D latent plane; the map shows {cloud.source}"
        + (", coloured by digit (tab10: 0 blue, 1 orange, 2 green, ...)" if cloud.labels is not None else "")
        + ". Click the map or move the sliders.",
        [("latent", sliders)],
        lambda values, label: decode(torch.tensor(values[:2]), label),
        latent_map,
        from_map,
    )


def principal_explorer(model: torch.nn.Module, cloud: LatentCloud, num_components: int = 6) -> Explorer:
    """A larger latent: sliders along the cloud's top principal components, in standard deviations."""
    points = cloud.points.double()
    mean = points.mean(0)
    _, singular_values, right = torch.linalg.svd(points - mean, full_matrices=False)
    count = min(num_components, points.shape[1])
    directions = _fix_signs(right[:count].T)  # (D, count)
    scales = singular_values[:count] / max(len(points) - 1, 1) ** 0.5
    explained = singular_values.pow(2) / singular_values.pow(2).sum()
    decode = _decoder(model)

    def to_latent(values: list[float], label: int | None) -> torch.Tensor:
        steps = torch.tensor(values[:count], dtype=torch.float64) * scales
        return decode((mean + directions @ steps).float(), label)

    sliders = [Slider(f"PC {index + 1} ({explained[index]:.0%})", -3.0, 3.0) for index in range(count)]
    return Explorer(
        f"A {points.shape[1]}-D latent: each slider moves along one of the top principal components of "
        f"{cloud.source}, in standard deviations from their mean.",
        [("principal components", sliders)],
        to_latent,
    )


def hierarchy_explorer(model: torch.nn.Module, cloud: LatentCloud | None = None, per_layer: int = 4) -> Explorer:
    """A hierarchical VAE: a row of sliders per layer, top first: the top latents, then the standard normal noise of
    each lower layer's draw (the rest of each layer at 0), decoded top-down by `model.decode_top_down`."""
    dims = list(model.config.latent_dims)
    shown = [min(per_layer, dim) for dim in dims]
    rows = []
    for level in reversed(range(len(dims))):
        name = f"layer {level + 1} of {len(dims)}" + (" (top latents)" if level == len(dims) - 1 else " (noise)")
        rows.append((name, [Slider(f"z{level + 1}[{index}]", -3.0, 3.0) for index in range(shown[level])]))

    def decode(values: list[float], label: int | None) -> torch.Tensor:
        layers, position = {}, 0
        for level in reversed(range(len(dims))):
            vector = torch.zeros(1, dims[level])
            vector[0, : shown[level]] = torch.tensor(values[position : position + shown[level]])
            layers[level] = vector
            position += shown[level]
        with evaluating(model):
            images = model.decode_top_down(layers[len(dims) - 1], [layers[level] for level in range(len(dims) - 1)])
        return images[0].cpu()

    return Explorer(
        f"A {len(dims)}-layer hierarchy (latent sizes {dims}, bottom first): the top row sets the top latents, "
        "each lower row the noise of that layer's draw given the layer above.",
        rows,
        decode,
    )


def code_grid_explorer(model: torch.nn.Module, cloud: LatentCloud) -> Explorer:
    """A VQ-VAE: the code grid of one of the cloud's images, to edit cell by cell."""
    size, grid = model.config.codebook_size, model.config.grid_size

    def decode_grid(codes: torch.Tensor) -> torch.Tensor:
        with evaluating(model):
            return model.decode_indices(codes.view(1, grid, grid)).images[0].cpu()

    code_grid = CodeGrid(cloud.points.long().view(-1, grid, grid), size, decode_grid)
    return Explorer(
        f"The {grid} x {grid} grid of codebook indices (0 to {size - 1}) that the decoder turns into the image, "
        f"starting from one of {cloud.source}. Edit any cell and the image is decoded again.",
        [],
        lambda values, label: decode_grid(torch.tensor(values).long()),
        code_grid=code_grid,
    )


def _gaussian_explorer(model: torch.nn.Module, cloud: LatentCloud) -> Explorer:
    return plane_explorer(model, cloud) if cloud.points.shape[1] == 2 else principal_explorer(model, cloud)


# model_type -> builder; families not listed get principal components of their latent cloud.
EXPLORERS: dict[str, Callable[[torch.nn.Module, LatentCloud], Explorer]] = {
    "hf_vae": _gaussian_explorer,
    "hf_hvae": hierarchy_explorer,
    "hf_vqvae": code_grid_explorer,
}


def build_explorer(model: torch.nn.Module, cloud: LatentCloud) -> Explorer:
    return EXPLORERS.get(model.config.model_type, _gaussian_explorer)(model, cloud)


__all__ = ["EXPLORERS", "CodeGrid", "Explorer", "LatentCloud", "Slider", "build_explorer", "latent_cloud"]
