"""Image data from `datasets`, decoded once into uint8 tensors and served as whole-tensor batches.

Decoding PNGs is the slow part of an image pipeline (the reference spends about a third of its epoch in
per-sample PIL/ToTensor work). Here each split is decoded exactly once into a contiguous uint8 tensor
(N, C, H, W), cached on disk next to the `datasets` cache under the dataset's fingerprint, and batches are
sliced from it; scaling to [0, 1] and binarisation happen per batch on whole tensors.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from .image_processing_vae import ImageDecodeError, decode_image

logger = logging.getLogger(__name__)

VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")
IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "fine_label")
BINARIZATIONS = ("none", "dynamic", "static")
_CACHE_FORMAT_VERSION = 1


class DataError(ValueError):
    """A dataset that cannot be used as asked; the message names the problem and the fix."""


@dataclass
class ImageTensors:
    """One decoded split: images (N, C, H, W) uint8 and optional labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, indices: torch.Tensor) -> ImageTensors:
        return ImageTensors(self.images[indices], None if self.labels is None else self.labels[indices])

    @property
    def num_channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[2]


class ImageTensorDataset(torch.utils.data.Dataset):
    """A map-style dataset over `ImageTensors` whose `__getitems__` slices a whole batch with one indexing op,
    so a `DataLoader` (and `accelerator.prepare`, which shards it across processes) does no per-sample work."""

    def __init__(self, data: ImageTensors):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        # index_select copies whole rows; advanced indexing computes an offset per element (15x slower here).
        batch = {"pixel_values": self.data.images.index_select(0, index)}
        if self.data.labels is not None:
            batch["labels"] = self.data.labels.index_select(0, index)
        return batch


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`collate_fn` for `ImageTensorDataset`: the batch is already one tensor per key."""
    return batch


def to_pixel_values(
    images: torch.Tensor, binarize: str = "none", generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 images -> float pixel values in [0, 1]; `binarize="dynamic"` draws each pixel from a Bernoulli with
    its grey level as probability, a fresh draw every call (Salakhutdinov & Murray 2008)."""
    pixel_values = images.float().div_(255.0)
    if binarize == "dynamic":
        pixel_values = torch.bernoulli(pixel_values, generator=generator)
    elif binarize not in ("none", "static"):
        raise ValueError(f"binarize must be one of {list(BINARIZATIONS)}, got {binarize!r}.")
    return pixel_values


def binarize_statically(images: torch.Tensor, seed: int) -> torch.Tensor:
    """One fixed Bernoulli draw of a uint8 split (values 0 or 255): the same binary images for the same seed,
    so that test figures of binarised models are comparable between runs."""
    generator = torch.Generator().manual_seed(seed)
    probabilities = images.float().div_(255.0)
    return torch.bernoulli(probabilities, generator=generator).mul_(255).to(torch.uint8)


def evaluation_images(data: ImageTensors, binarize: str, seed: int = 0) -> ImageTensors:
    """A split as a model is validated, evaluated and pictured on: for models trained on binarised data (`binarize`
    "dynamic" or "static") one fixed Bernoulli draw seeded with `seed`, so that figures do not jitter and compare
    between runs and with the literature; the grey levels otherwise."""
    if binarize == "none":
        return data
    return ImageTensors(binarize_statically(data.images, seed), data.labels)


def binarization_seed(seed: int, process_index: int, epoch: int, step_in_epoch: int) -> int:
    """Seed of one training batch's dynamic binarisation: a function of the position alone, so that a resumed run
    (and every process) draws exactly what an uninterrupted run draws, with no generator state to save."""
    value = seed
    for part in (process_index, epoch, step_in_epoch):
        value = (value * 1_000_003 + part) % (2**63 - 1)
    return value


def tensor_batches(data: ImageTensors, batch_size: int):
    """uint8 batch dicts ("pixel_values", and "labels" when there are labels) of consecutive images."""
    for start in range(0, len(data), batch_size):
        batch = {"pixel_values": data.images[start : start + batch_size]}
        if data.labels is not None:
            batch["labels"] = data.labels[start : start + batch_size]
        yield batch


# ---------------------------------------------------------------------------------------------- loading
def _is_save_to_disk_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_dataset(name: str, config_name: str | None, cache_dir: str | None) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(name, config_name, cache_dir=cache_dir)
    except ValueError as error:
        # `datasets` refuses a split whose data files hold no rows before we see it.
        if "corresponds to no data" not in str(error):
            raise
        raise DataError(
            f"Dataset {name!r} has an empty split ({error}); give that split images or remove its data files."
        ) from error


def _load_local_dataset(path: Path, config_name: str | None, cache_dir: str | None) -> datasets.DatasetDict:
    """A local dataset folder (`save_to_disk`, or laid out like a Hub dataset repo), every failure to read it a
    `DataError` naming the folder. Reading local files runs no code (`datasets` no longer runs loading scripts), so
    an exception here means damaged, missing or foreign files. Every Arrow table is validated in full, so that
    damaged offsets are refused here rather than read out of bounds later."""
    try:
        if _is_save_to_disk_folder(path):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.Dataset):
                loaded = datasets.DatasetDict({"train": loaded})
        else:
            loaded = _load_dataset(str(path), config_name, cache_dir)
        for split in loaded.values():
            split.data.table.validate(full=True)
    except DataError:
        raise
    except Exception as error:  # the reading boundary: whatever datasets/pyarrow/json raise on damaged files
        reason = " ".join(str(error).split())[:300] or "no details"
        raise DataError(
            f"Cannot read the dataset folder {str(path)!r} ({type(error).__name__}: {reason}). One of its files is "
            "damaged, truncated or missing: write it again (`save_to_disk`) or copy it again."
        ) from error
    return loaded


def load_image_dataset(
    dataset_name: str, dataset_config_name: str | None = None, cache_dir: str | None = None
) -> datasets.DatasetDict:
    """Load a `DatasetDict` from a Hub id, a local folder laid out like a Hub dataset repo, or a
    `save_to_disk` folder, with errors that say how to fix the call."""
    path = Path(dataset_name).expanduser()
    if path.exists():
        return _load_local_dataset(path, dataset_config_name, cache_dir)
    if dataset_name.startswith((".", "/", "~")):
        where = "" if path.is_absolute() else f" (in {Path.cwd()})"
        raise DataError(f"No dataset folder {dataset_name!r}{where}: check the path, or pass a Hub dataset id.")
    try:
        return _load_dataset(dataset_name, dataset_config_name, cache_dir)
    except (ConnectionError, OSError, TimeoutError) as error:
        if datasets.config.HF_HUB_OFFLINE:
            reason = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache"
        else:
            reason = (
                f"the Hugging Face Hub could not be reached or the repo is unknown ({type(error).__name__}: {error})"
            )
        raise DataError(
            f"Could not load dataset {dataset_name!r}: {reason}. Pass a local copy instead, e.g. "
            "`--dataset_name /path/to/mnist` (a folder laid out like the Hub repo, such as a `git clone` of "
            "ylecun/mnist, or a `save_to_disk` folder)."
        ) from error


def _columns_of_type(features: datasets.Features, feature_type: type) -> list[str]:
    return [name for name, feature in features.items() if isinstance(feature, feature_type)]


def resolve_columns(
    dataset: datasets.Dataset, image_column: str | None = None, label_column: str | None = None
) -> tuple[str, str | None]:
    """The image and label columns: as given, or the one obvious candidate (an `Image` feature / a
    `ClassLabel` feature, else a conventionally named column). No label column is fine (unlabelled data)."""
    columns = list(dataset.column_names)
    if image_column is None:
        candidates = _columns_of_type(dataset.features, datasets.Image) or [
            name for name in IMAGE_COLUMN_NAMES if name in columns
        ]
        if len(candidates) != 1:
            raise DataError(
                f"Cannot tell which column holds the images (candidates: {candidates or 'none'}; columns: "
                f"{columns}). Pass --image_column NAME."
            )
        image_column = candidates[0]
    elif image_column not in columns:
        raise DataError(f"Image column {image_column!r} not found; the dataset's columns are {columns}.")
    if label_column is None:
        candidates = _columns_of_type(dataset.features, datasets.ClassLabel) or [
            name for name in LABEL_COLUMN_NAMES if name in columns
        ]
        label_column = candidates[0] if len(candidates) == 1 else None
    elif label_column not in columns:
        raise DataError(f"Label column {label_column!r} not found; the dataset's columns are {columns}.")
    return image_column, label_column


# ---------------------------------------------------------------------------------------------- decoding
def _decode_image(
    data: bytes | str | os.PathLike | Image.Image | np.ndarray, mode: str, image_size: int | None
) -> np.ndarray:
    """One image as a uint8 array in `mode` ("L" or "RGB"), resized and centre-cropped to `image_size` when given:
    `image_processing_vae.decode_image` (the image processor's guarded decoding), its errors as `DataError`s to which
    callers add the file or row."""
    try:
        return decode_image(data, mode, image_size)
    except ImageDecodeError as error:
        raise DataError(str(error)) from None


def _raw_images(dataset: datasets.Dataset, image_column: str) -> list:
    """The column's images without `datasets`' per-row decoding: PNG/JPEG bytes where stored so, else the path of
    the image file (read when decoded), or arrays."""
    feature = dataset.features[image_column]
    try:
        if isinstance(feature, datasets.Image):
            column = dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]
            return [_bytes_or_path(item) for item in column]
        return list(dataset.with_format("numpy")[image_column])
    except Exception as error:  # reading a validated Arrow column: a failure means damaged rows
        raise DataError(
            f"Cannot read the images of column {image_column!r} ({type(error).__name__}: {error}); the dataset is "
            "damaged: write or copy it again."
        ) from error


def _bytes_or_path(item: Any) -> bytes | Path | None:
    if not isinstance(item, dict):
        return None
    if item.get("bytes") is not None:
        return item["bytes"]
    return Path(item["path"]) if item.get("path") is not None else None


def _decode_rows(raw: list, image_column: str, mode: str | None, image_size: int | None) -> list[np.ndarray]:
    """`_decode_image` of every row (the mode of the first when `mode` is None), an error naming the row or file."""
    arrays = []
    for index, item in enumerate(raw):
        where = f"image file {str(item)!r}" if isinstance(item, Path) else f"row {index}"
        try:
            if item is None:
                raise DataError("it holds no image")
            if mode is None:
                mode = _infer_mode(item)
            arrays.append(_decode_image(item, mode, image_size))
        except DataError as error:
            raise DataError(
                f"Cannot decode {where} of column {image_column!r}: {error}. Fix or remove that image, or rebuild the "
                "dataset."
            ) from None
    return arrays


def _infer_mode(first_image: np.ndarray | bytes | Path | Image.Image) -> str:
    if isinstance(first_image, (bytes, bytearray, Path)):
        try:
            with Image.open(
                io.BytesIO(first_image) if isinstance(first_image, (bytes, bytearray)) else first_image
            ) as image:
                mode = image.mode
        except Exception as error:  # PIL runs no code: any failure means bad bytes
            raise DataError(f"it is damaged or not an image PIL can decode ({type(error).__name__}: {error})") from None
    elif isinstance(first_image, Image.Image):
        mode = first_image.mode
    else:
        mode = "L" if np.asarray(first_image).ndim == 2 else "RGB"
    return "L" if mode in ("1", "L", "I", "I;16", "F", "LA") else "RGB"


def decode_split(
    dataset: datasets.Dataset,
    image_column: str,
    label_column: str | None = None,
    image_size: int | None = None,
    num_channels: int | None = None,
    cache: bool = True,
) -> ImageTensors:
    """Decode a split once into uint8 (N, C, H, W) (+ int64 labels), resized and centre-cropped to
    `image_size` and converted to `num_channels` (1 = greyscale, 3 = RGB) when given.

    The result is cached as safetensors next to the `datasets` cache, keyed by the split's fingerprint and the
    decoding options, so later runs load it in milliseconds instead of decoding again.
    """
    if len(dataset) == 0:
        raise DataError(f"The split is empty (0 rows): nothing to decode from column {image_column!r}.")
    if num_channels not in (None, 1, 3):
        raise DataError(f"num_channels must be 1 (greyscale) or 3 (RGB), got {num_channels}.")
    cache_path = _cache_path(dataset, image_column, label_column, image_size, num_channels) if cache else None
    if cache_path is not None and cache_path.is_file():
        try:
            tensors = load_file(str(cache_path))
            cached = ImageTensors(tensors["images"], tensors.get("labels"))
            _check_cached(cached, len(dataset), label_column is not None)
            return cached
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            logger.warning("Ignoring unreadable decoded-image cache %s (%s); decoding again.", cache_path, error)

    split = getattr(dataset, "split", None)
    logger.info(
        "Decoding %d images of the %s split once (column %r)%s.",
        len(dataset),
        split or "given",
        image_column,
        ", cached for next time" if cache_path is not None else "",
    )
    raw = _raw_images(dataset, image_column)
    arrays = _decode_rows(raw, image_column, {1: "L", 3: "RGB"}.get(num_channels), image_size)
    shapes = {array.shape for array in arrays}
    if len(shapes) != 1:
        raise DataError(
            f"Images in column {image_column!r} have different sizes {sorted(shapes)[:5]}; pass an image size "
            "(--image_size N) to resize and centre-crop them all to N x N."
        )
    stacked = np.stack(arrays)
    images = torch.from_numpy(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2))
    images = images.contiguous()
    if images.shape[2] != images.shape[3]:
        raise DataError(
            f"Images are {images.shape[2]}x{images.shape[3]}, not square; pass --image_size N to resize and "
            "centre-crop them to N x N."
        )
    labels = None
    if label_column is not None:
        try:
            labels = torch.as_tensor(np.asarray(dataset.with_format("numpy")[label_column]), dtype=torch.long)
        except (TypeError, ValueError, RuntimeError) as error:
            raise DataError(
                f"Label column {label_column!r} does not hold one integer class per row ({error}); pass the right "
                "--label_column, or fix the dataset."
            ) from None
    result = ImageTensors(images, labels)
    if cache_path is not None:
        _write_cache(cache_path, result)
    return result


def _check_cached(data: ImageTensors, rows: int, labelled: bool) -> None:
    """A cache file can be valid safetensors and still not be what `decode_split` wrote (damaged or foreign)."""
    images, labels = data.images, data.labels
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] != rows:
        raise ValueError(f"images are {images.dtype} {tuple(images.shape)}, expected uint8 ({rows}, C, H, W)")
    if labelled != (labels is not None) or (labels is not None and labels.shape != (rows,)):
        raise ValueError("its labels do not match the split")


def _cache_path(
    dataset: datasets.Dataset,
    image_column: str,
    label_column: str | None,
    image_size: int | None,
    num_channels: int | None,
) -> Path | None:
    fingerprint = getattr(dataset, "_fingerprint", None)
    if not fingerprint:
        return None
    if dataset.cache_files:
        folder = Path(dataset.cache_files[0]["filename"]).parent
    else:
        folder = Path(datasets.config.HF_DATASETS_CACHE)
    key = f"v{_CACHE_FORMAT_VERSION}-{fingerprint}-{image_column}-{label_column}-{image_size}-{num_channels}"
    return folder / "hf_vae_decoded" / f"{key}.safetensors"


def _write_cache(path: Path, data: ImageTensors) -> None:
    """Write atomically; a read-only or full cache folder only costs a later re-decode."""
    tensors = {"images": data.images}
    if data.labels is not None:
        tensors["labels"] = data.labels
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(handle)
        save_file(tensors, temporary)
        os.replace(temporary, path)
    except OSError as error:
        logger.warning("Could not cache decoded images at %s (%s); they will be decoded again next time.", path, error)


# ---------------------------------------------------------------------------------------------- splits
@dataclass
class ImageDataSplits:
    """Decoded train / validation / test tensors and the columns they came from."""

    train: ImageTensors
    validation: ImageTensors
    test: ImageTensors | None
    image_column: str
    label_column: str | None
    column_names: list[str] | None = None


def load_splits(
    dataset_name: str,
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    validation_split: float = 0.1,
    seed: int = 42,
    image_size: int | None = None,
    num_channels: int | None = None,
    cache_dir: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
) -> ImageDataSplits:
    """Train and validation tensors for training (the dataset's validation split if it has one, else a
    seeded `validation_split` fraction held out of train) and the test split, decoded but untouched, for
    evaluation."""
    dataset_dict = load_image_dataset(dataset_name, dataset_config_name, cache_dir)
    if train_split not in dataset_dict:
        raise DataError(f"Dataset {dataset_name!r} has no {train_split!r} split; its splits are {list(dataset_dict)}.")
    train_dataset = dataset_dict[train_split]
    image_column, label_column = resolve_columns(train_dataset, image_column, label_column)

    def decode(split: str) -> ImageTensors:
        dataset = dataset_dict[split]
        if len(dataset) == 0:
            raise DataError(f"Split {split!r} of {dataset_name!r} is empty.")
        return decode_split(dataset, image_column, label_column, image_size, num_channels)

    train = decode(train_split)
    validation_name = next((name for name in VALIDATION_SPLIT_NAMES if name in dataset_dict), None)
    if validation_name is not None:
        validation = decode(validation_name)
    else:
        if not 0.0 < validation_split < 1.0:
            raise DataError(
                f"Dataset {dataset_name!r} has no validation split, so --validation_split must be a fraction in "
                f"(0, 1) of train to hold out, got {validation_split}."
            )
        train, validation = hold_out(train, validation_split, seed)
    test = decode(test_split) if test_split is not None and test_split in dataset_dict else None
    return ImageDataSplits(train, validation, test, image_column, label_column, list(train_dataset.column_names))


def hold_out(data: ImageTensors, fraction: float, seed: int) -> tuple[ImageTensors, ImageTensors]:
    """Split off a seeded random `fraction` of the rows: the same rows for the same seed on every machine."""
    count = len(data)
    held_out = max(1, round(count * fraction))
    if held_out >= count:
        raise DataError(f"Holding out {fraction:.0%} of {count} rows leaves nothing to train on.")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return data.select(order[held_out:].sort().values), data.select(order[:held_out].sort().values)


def check_matches_config(data: ImageTensors, image_size: int, num_channels: int, split: str = "train") -> None:
    """Refuse data whose images do not have the model's size or channels, naming both and the fix."""
    found = (data.num_channels, data.image_size, data.images.shape[3])
    if found != (num_channels, image_size, image_size):
        raise DataError(
            f"The {split} images are {found[0]}x{found[1]}x{found[2]} (channels x height x width) but the model "
            f"expects {num_channels}x{image_size}x{image_size}. Pass --image_size {image_size} and "
            f"--num_channels {num_channels} to resize/convert the data, or train a new model sized for it."
        )


__all__ = [
    "DataError",
    "ImageDataSplits",
    "ImageTensorDataset",
    "ImageTensors",
    "binarization_seed",
    "binarize_statically",
    "check_matches_config",
    "collate_batch",
    "decode_split",
    "evaluation_images",
    "hold_out",
    "load_image_dataset",
    "load_splits",
    "resolve_columns",
    "tensor_batches",
    "to_pixel_values",
]
