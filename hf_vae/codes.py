"""Images to code grids with a VQ-VAE (`hf-vae encode`, and the data of `hf-vae train-prior`).

Images are encoded as the model is evaluated: models trained on binarised pixels see one Bernoulli draw seeded with
`seed` (`data.evaluation_images`), in eval mode (the codebook does not move).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .data import ImageTensors, decode_split, evaluation_images, load_image_dataset, resolve_columns, to_pixel_values
from .modeling_utils import evaluating

logger = logging.getLogger(__name__)


def require_codes(model: torch.nn.Module) -> None:
    """Refuse a model that has no code grid (not a VQ-VAE), naming the fix."""
    if not hasattr(model, "decode_indices"):
        raise ValueError(
            f"{type(model).__name__} has continuous latents, not codes: pass a VQ-VAE (model_type 'hf_vqvae', e.g. "
            "trained with `hf-vae train --preset mnist-vqvae`)."
        )


def encode_images(model: torch.nn.Module, data: ImageTensors, seed: int = 0, batch_size: int = 500) -> torch.Tensor:
    """(N, h, w) code grids of uint8 images `data`, binarised with `seed` when the model was trained binarised."""
    require_codes(model)
    images = evaluation_images(data, model.config.binarize, seed).images
    grids = []
    with evaluating(model):
        for start in range(0, len(images), batch_size):
            pixel_values = to_pixel_values(images[start : start + batch_size].to(model.device))
            grids.append(model.encode(pixel_values).indices.cpu())
    return torch.cat(grids) if grids else torch.empty(0, model.config.grid_size, model.config.grid_size).long()


def encode_dataset(
    model: torch.nn.Module,
    dataset_name: str,
    output_dir: str | Path,
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    splits: list[str] | None = None,
    seed: int = 0,
    batch_size: int = 500,
    max_samples: int | None = None,
    cache_dir: str | None = None,
):
    """Every split (or `splits`) of an image dataset as a `datasets.DatasetDict` with an `indices` column (h x w
    int16 grids) and the label column, when the data has one, with its original feature; saved with `save_to_disk`
    into `output_dir` and returned."""
    import datasets

    require_codes(model)
    source = load_image_dataset(dataset_name, dataset_config_name, cache_dir)
    names = splits or list(source)
    missing = [name for name in names if name not in source]
    if missing:
        raise ValueError(f"Dataset {dataset_name!r} has no split(s) {missing}; its splits are {list(source)}.")
    grid = model.config.grid_size
    encoded = {}
    for name in names:
        dataset = source[name]
        if max_samples is not None and max_samples < len(dataset):
            dataset = dataset.select(range(max_samples))
        images_column, labels_column = resolve_columns(dataset, image_column, label_column)
        data = decode_split(dataset, images_column, labels_column, model.config.image_size, model.config.num_channels)
        logger.info("Encoding %d images of split %r.", len(data), name)
        indices = encode_images(model, data, seed, batch_size)
        features = {"indices": datasets.Array2D(shape=(grid, grid), dtype="int16")}
        columns = {"indices": indices.to(torch.int16).numpy()}
        if labels_column is not None:
            features[labels_column] = dataset.features[labels_column]
            columns[labels_column] = data.labels.tolist()
        encoded[name] = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    result = datasets.DatasetDict(encoded)
    result.save_to_disk(str(output_dir))
    return result


__all__ = ["encode_dataset", "encode_images", "require_codes"]
