"""Image data from `datasets`, decoded once into uint8 tensors and served as whole-tensor batches.

Decoding PNGs is the slow part of an image pipeline (the reference spends about a third of its epoch in
per-sample PIL/ToTensor work). Here each split is decoded exactly once into a contiguous uint8 tensor
(N, C, H, W), cached on disk next to the `datasets` cache under the dataset's fingerprint, and batches are
sliced from it; scaling to [0, 1] and binarisation happen per batch on whole tensors. A split larger than
`in_memory_limit()` stays in its cache file and each batch reads only its rows (`RowFile`).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image

from .image_processing_vae import ImageDecodeError, decode_image

logger = logging.getLogger(__name__)

VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")
IMAGE_COLUMN_NAMES = ("image", "img", "images", "pixel_values")
LABEL_COLUMN_NAMES = ("label", "labels", "class", "target", "fine_label")
BINARIZATIONS = ("none", "dynamic", "static")
_CACHE_FORMAT_VERSION = 1


class DataError(ValueError):
    """A dataset that cannot be used as asked; the message names the problem and the fix."""


class ImageTensors:
    """One decoded split: images (N, C, H, W) uint8 and optional labels (N,) int64.

    The images of a large split stay in their cache file (`on_disk`, a `RowFile`): selecting rows (`select`: the
    held-out validation split, `--max_train_samples`) then only records their indices, and batches (`take`,
    `tensor_batches`, `ImageTensorDataset`) read just their own rows, so resident memory stays at a few batches however
    large the split (the kernel's page cache keeps what fits). `images` gives all the rows as one tensor (read or
    copied): meant for small splits (pictures, static binarisation, evaluation of a whole split)."""

    def __init__(
        self,
        images: torch.Tensor | RowFile,
        labels: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
    ):
        self._storage = images
        self.labels = labels
        self.rows = rows

    @property
    def on_disk(self) -> bool:
        return isinstance(self._storage, RowFile)

    @property
    def images(self) -> torch.Tensor:
        if self.on_disk:
            return self._storage.read(torch.arange(self._storage.shape[0]) if self.rows is None else self.rows)
        return self._storage if self.rows is None else self._storage.index_select(0, self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), *self._storage.shape[1:])

    def __len__(self) -> int:
        return self._storage.shape[0] if self.rows is None else self.rows.shape[0]

    def select(self, indices: torch.Tensor) -> ImageTensors:
        labels = None if self.labels is None else self.labels[indices]
        if self.on_disk:
            return ImageTensors(self._storage, labels, indices if self.rows is None else self.rows[indices])
        return ImageTensors(self.images[indices], labels)

    def take(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """A batch dict of the rows `indices` (int64): "pixel_values" (uint8) and "labels" when there are any.
        In memory, index_select copies whole rows (advanced indexing computes an offset per element, 15x slower
        here); on disk, the rows are read in file order and put back in batch order."""
        rows = indices if self.rows is None else self.rows.index_select(0, indices)
        if self.on_disk:
            rows, order = rows.sort()
            images = torch.empty((rows.shape[0], *self._storage.shape[1:]), dtype=torch.uint8)
            images[order] = self._storage.read(rows)
        else:
            images = self._storage.index_select(0, rows)
        batch = {"pixel_values": images}
        if self.labels is not None:
            batch["labels"] = self.labels.index_select(0, indices)
        return batch

    @property
    def num_channels(self) -> int:
        return self._storage.shape[1]

    @property
    def image_size(self) -> int:
        return self._storage.shape[2]


class RowFile:
    """The rows of a uint8 array (N, C, H, W) stored at `offset` in a file, read on demand with `pread`.

    Not a memory map: on this machine's kernel (6.18, ext4) a page fault maps the page cache's whole large folio, so
    reading 64 scattered 16 KiB rows of a mapped file added 91 MB to the resident memory (with MADV_RANDOM too). Read
    with `pread`, the file's pages stay in the page cache, which the kernel shrinks as it needs, and out of this
    process's memory."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...]):
        self.path, self.offset, self.shape = path, offset, tuple(shape)
        self.row_bytes = math.prod(self.shape[1:])
        self._file = None

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows `rows` (sorted, int64) as one uint8 tensor: one read per run of consecutive rows."""
        if self._file is None:  # opened on first use, so that the object pickles before
            self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (kept open for every batch)
        out = np.empty((rows.shape[0], *self.shape[1:]), dtype=np.uint8)
        if rows.numel() == 0:
            return torch.from_numpy(out)
        indices = rows.numpy()
        breaks = np.flatnonzero(np.diff(indices) != 1) + 1
        view = memoryview(out).cast("B")
        size, descriptor = self.row_bytes, self._file.fileno()
        for first, last in zip([0, *breaks.tolist()], [*breaks.tolist(), len(indices)], strict=True):
            wanted = (last - first) * size
            if (
                os.preadv(descriptor, [view[first * size : last * size]], self.offset + int(indices[first]) * size)
                != wanted
            ):
                raise DataError(f"The decoded-image cache {self.path} is shorter than its header says; delete it.")
        return torch.from_numpy(out)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}


class ImageTensorDataset(torch.utils.data.Dataset):
    """A map-style dataset over `ImageTensors` whose `__getitems__` slices a whole batch with one indexing op,
    so a `DataLoader` (and `accelerate.prepare`, which shards it across processes) does no per-sample work."""

    def __init__(self, data: ImageTensors):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.data.take(torch.as_tensor(indices, dtype=torch.long))


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
        if data.rows is None and not data.on_disk:
            batch = {"pixel_values": data._storage[start : start + batch_size]}
            if data.labels is not None:
                batch["labels"] = data.labels[start : start + batch_size]
        else:
            batch = data.take(torch.arange(start, min(start + batch_size, len(data))))
        yield batch


# ---------------------------------------------------------------------------------------------- loading
def _is_save_to_disk_folder(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_dataset(
    name: str, config_name: str | None, cache_dir: str | None, streaming: bool = False
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    try:
        return datasets.load_dataset(name, config_name, cache_dir=cache_dir, streaming=streaming)
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
    dataset_name: str, dataset_config_name: str | None = None, cache_dir: str | None = None, streaming: bool = False
) -> datasets.DatasetDict | datasets.IterableDatasetDict:
    """Load a `DatasetDict` from a Hub id, a local folder laid out like a Hub dataset repo, or a
    `save_to_disk` folder, with errors that say how to fix the call. With `streaming=True`, an `IterableDatasetDict`
    read as it is iterated (`load_dataset(..., streaming=True)`; a `save_to_disk` folder, memory-mapped anyway, is
    iterated through `to_iterable_dataset`)."""
    path = Path(dataset_name).expanduser()
    if path.exists():
        if streaming and not _is_save_to_disk_folder(path):
            return _load_dataset(str(path), dataset_config_name, cache_dir, streaming=True)
        loaded = _load_local_dataset(path, dataset_config_name, cache_dir)
        if streaming:
            # Shards let each pass shuffle their order and let processes split them (`split_dataset_by_node`).
            shards = {name: max(1, min(len(split), SAVED_SPLIT_SHARDS)) for name, split in loaded.items()}
            return datasets.IterableDatasetDict(
                {name: split.to_iterable_dataset(num_shards=shards[name]) for name, split in loaded.items()}
            )
        return loaded
    if dataset_name.startswith((".", "/", "~")):
        where = "" if path.is_absolute() else f" (in {Path.cwd()})"
        raise DataError(f"No dataset folder {dataset_name!r}{where}: check the path, or pass a Hub dataset id.")
    try:
        return _load_dataset(dataset_name, dataset_config_name, cache_dir, streaming)
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


SAVED_SPLIT_SHARDS = 16


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


def _raw_images(dataset: datasets.Dataset, image_column: str, start: int = 0, stop: int | None = None) -> list:
    """Rows `start:stop` of the column without `datasets`' per-row decoding: PNG/JPEG bytes where stored so, else the
    path of the image file (read when decoded), or arrays. `dataset` has the column cast to `Image(decode=False)`
    already when it holds images (`_undecoded`)."""
    feature = dataset.features[image_column]
    stop = len(dataset) if stop is None else stop
    try:
        if isinstance(feature, datasets.Image):
            return [_bytes_or_path(item) for item in dataset[start:stop][image_column]]
        return list(dataset.with_format("numpy")[start:stop][image_column])
    except Exception as error:  # reading a validated Arrow column: a failure means damaged rows
        raise DataError(
            f"Cannot read the images of column {image_column!r} ({type(error).__name__}: {error}); the dataset is "
            "damaged: write or copy it again."
        ) from error


def _undecoded(dataset: datasets.Dataset, image_column: str) -> datasets.Dataset:
    if isinstance(dataset.features[image_column], datasets.Image):
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def _bytes_or_path(item: Any) -> bytes | Path | None:
    if not isinstance(item, dict):
        return None
    if item.get("bytes") is not None:
        return item["bytes"]
    return Path(item["path"]) if item.get("path") is not None else None


def _decode_rows(
    raw: list, image_column: str, mode: str | None, image_size: int | None, first_row: int = 0
) -> list[np.ndarray]:
    """`_decode_image` of every row (the mode of the first when `mode` is None), an error naming the row or file."""
    arrays = []
    for index, item in enumerate(raw, start=first_row):
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


# Rows decoded at a time: the decoded images reach the cache file chunk by chunk, so a split larger than memory
# is decoded in the memory of one chunk.
DECODE_CHUNK_ROWS = 4096


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

    The images are written, chunk by chunk, to a safetensors file next to the `datasets` cache, keyed by the split's
    fingerprint and the decoding options, and read back (`open_decoded_cache`): later runs open it in milliseconds,
    and a split larger than `in_memory_limit()` is never held in memory whole but read batch by batch. With
    `cache=False` (or a dataset without a fingerprint) the split is decoded into memory.
    """
    if len(dataset) == 0:
        raise DataError(f"The split is empty (0 rows): nothing to decode from column {image_column!r}.")
    if num_channels not in (None, 1, 3):
        raise DataError(f"num_channels must be 1 (greyscale) or 3 (RGB), got {num_channels}.")
    cache_path = _cache_path(dataset, image_column, label_column, image_size, num_channels) if cache else None
    if cache_path is not None and cache_path.is_file():
        try:
            return open_decoded_cache(cache_path, len(dataset), label_column is not None)
        except Exception as error:  # a damaged cache is rebuilt, never trusted
            logger.warning("Ignoring unreadable decoded-image cache %s (%s); decoding again.", cache_path, error)

    labels = _labels(dataset, label_column)
    split = getattr(dataset, "split", None)
    logger.info(
        "Decoding %d images of the %s split once (column %r)%s.",
        len(dataset),
        split or "given",
        image_column,
        ", cached for next time" if cache_path is not None else "",
    )
    mode = {1: "L", 3: "RGB"}.get(num_channels)
    if cache_path is not None:
        try:
            _write_cache(cache_path, _decoded_chunks(dataset, image_column, mode, image_size), len(dataset), labels)
            return open_decoded_cache(cache_path, len(dataset), labels is not None)
        except OSError as error:
            logger.warning("Could not cache decoded images at %s (%s); decoding into memory.", cache_path, error)
    images = np.concatenate(list(_decoded_chunks(dataset, image_column, mode, image_size)))
    return ImageTensors(torch.from_numpy(images), labels)


def _labels(dataset: datasets.Dataset, label_column: str | None) -> torch.Tensor | None:
    if label_column is None:
        return None
    try:
        return torch.as_tensor(np.asarray(dataset.with_format("numpy")[label_column]), dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as error:
        raise DataError(
            f"Label column {label_column!r} does not hold one integer class per row ({error}); pass the right "
            "--label_column, or fix the dataset."
        ) from None


def _decoded_chunks(dataset: datasets.Dataset, image_column: str, mode: str | None, image_size: int | None):
    """uint8 (n, C, H, W) arrays of consecutive rows, `DECODE_CHUNK_ROWS` at a time, every image of one square size
    (the first image's mode when `mode` is None)."""
    undecoded = _undecoded(dataset, image_column)
    shape = None
    for start in range(0, len(dataset), DECODE_CHUNK_ROWS):
        raw = _raw_images(undecoded, image_column, start, start + DECODE_CHUNK_ROWS)
        arrays = _decode_rows(raw, image_column, mode, image_size, first_row=start)
        if shape is None:
            shape = arrays[0].shape
            mode = "L" if len(shape) == 2 else "RGB"
            if shape[0] != shape[1]:
                raise DataError(
                    f"Images are {shape[0]}x{shape[1]}, not square; pass --image_size N to resize and centre-crop "
                    "them to N x N."
                )
        shapes = {array.shape for array in arrays} | {shape}
        if len(shapes) != 1:
            raise DataError(
                f"Images in column {image_column!r} have different sizes {sorted(shapes)[:5]}; pass an image size "
                "(--image_size N) to resize and centre-crop them all to N x N."
            )
        stacked = np.stack(arrays)
        yield np.ascontiguousarray(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2))


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


def _write_cache(path: Path, chunks, rows: int, labels: torch.Tensor | None) -> None:
    """Stream the decoded chunks into a safetensors file ("labels" int64 first, then "images" uint8 (N, C, H, W),
    so the images start 8-byte aligned), written to a temporary file and renamed into place: readers see the whole
    file or none. The header needs the image shape, known from the first chunk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            written = 0
            for chunk in chunks:
                if written == 0:
                    tensors = {} if labels is None else {"labels": ("I64", [rows], rows * 8)}
                    tensors["images"] = ("U8", [rows, *chunk.shape[1:]], rows * math.prod(chunk.shape[1:]))
                    file.write(_safetensors_header(tensors))
                    if labels is not None:
                        file.write(labels.numpy().astype("<i8").tobytes())
                file.write(chunk.tobytes())
                written += chunk.shape[0]
        if written != rows:
            raise DataError(f"Decoded {written} images of {rows}: the dataset changed while it was read.")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _safetensors_header(tensors: dict[str, tuple[str, list[int], int]]) -> bytes:
    """The length-prefixed JSON header of a safetensors file holding `tensors` (name -> dtype, shape, bytes), their
    data laid out in order, padded with spaces to a multiple of 8 bytes as the format asks."""
    header, offset = {}, 0
    for name, (dtype, shape, size) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def in_memory_limit() -> int:
    """Splits whose decoded images are larger than this many bytes are read from their cache file batch by batch;
    smaller ones are read into memory whole, which is faster. Default: a quarter of the machine's physical memory;
    the environment variable HF_VAE_IN_MEMORY_MAX_BYTES sets it (0: always from the file)."""
    if os.environ.get(IN_MEMORY_ENV):
        return int(os.environ[IN_MEMORY_ENV])
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):
        return 2**30


IN_MEMORY_ENV = "HF_VAE_IN_MEMORY_MAX_BYTES"


def open_decoded_cache(path: Path, rows: int, labelled: bool) -> ImageTensors:
    """A decoded-image cache file as `ImageTensors`: images read into memory when they fit `in_memory_limit()`,
    else left in the file (`RowFile`, read per batch); labels read into memory. Any safetensors file with uint8
    "images" (N, C, H, W) and optional int64 "labels" (N,) is accepted; anything else (damaged, truncated, foreign)
    raises `ValueError`."""
    with path.open("rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        if length > 100_000_000:
            raise ValueError(f"its header claims {length} bytes")
        header = json.loads(file.read(length))
    data_start = 8 + length
    size = path.stat().st_size
    images = header.get("images") or {}
    shape = images.get("shape") or []
    if images.get("dtype") != "U8" or len(shape) != 4 or shape[0] != rows:
        raise ValueError(f"images are {images.get('dtype')} {shape}, expected U8 ({rows}, C, H, W)")
    begin, end = images["data_offsets"]
    if end - begin != math.prod(shape) or data_start + end > size:
        raise ValueError(f"it holds {size} bytes, fewer than its header describes")
    storage = RowFile(path, data_start + begin, tuple(shape))
    labels = header.get("labels")
    if labelled != (labels is not None):
        raise ValueError("its labels do not match the split")
    label_tensor = None
    if labels is not None:
        begin, end = labels["data_offsets"]
        if labels.get("dtype") != "I64" or labels.get("shape") != [rows] or end - begin != 8 * rows:
            raise ValueError("its labels do not match the split")
        if data_start + end > size:
            raise ValueError(f"it holds {size} bytes, fewer than its header describes")
        values = np.fromfile(path, dtype="<i8", count=rows, offset=data_start + begin)
        label_tensor = torch.from_numpy(values.astype(np.int64))
    if storage.row_bytes * rows <= in_memory_limit():
        whole = np.fromfile(path, dtype=np.uint8, count=storage.row_bytes * rows, offset=storage.offset)
        return ImageTensors(torch.from_numpy(whole.reshape(shape)), label_tensor)
    return ImageTensors(storage, label_tensor)


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
    found = (data.num_channels, data.image_size, data.shape[3])
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
    "in_memory_limit",
    "open_decoded_cache",
    "evaluation_images",
    "hold_out",
    "load_image_dataset",
    "load_splits",
    "resolve_columns",
    "tensor_batches",
    "to_pixel_values",
]
