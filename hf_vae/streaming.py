"""Training images read from a `datasets` stream (`--streaming`), for datasets too large to download or decode whole.

The in-memory path (`hf_vae.data`) decodes every split once and shuffles whole epochs. A stream
(`load_dataset(..., streaming=True)`) is read as training goes, and four things change:

- Shuffling happens only within a buffer (`IterableDataset.shuffle(seed, buffer_size)`, which also shuffles the order
  of the stream's shards), reshuffled on every pass over the stream (`set_epoch`). A buffer of 0 keeps the stream's
  own order.
- There is no epoch length: the run lasts `--max_steps` optimiser steps, passes over the stream follow one another
  (a pass's last batch may be smaller), and what the in-memory path does once an epoch (validation, the metrics row,
  `--checkpointing_steps epoch`, early stopping, the plateau schedule) happens every `--eval_steps` steps.
- No fraction of a stream can be held out for validation: the first `--max_eval_samples` images of the dataset's
  validation split (else of its test split) are streamed and decoded into memory once, and validation, the test
  figures and the pictures use them exactly as they use in-memory splits.
- Each process reads its own part of the stream (`datasets.distributed.split_dataset_by_node`).

Every batch is decoded to the uint8 (B, C, H, W) tensor the in-memory path slices, by the same decoding helpers, so the
per-batch scaling, binarisation and model step that follow are the very same code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import torch
from datasets.distributed import split_dataset_by_node

from .data import (
    DECODE_CHUNK_ROWS,
    VALIDATION_SPLIT_NAMES,
    DataError,
    ImageDataSplits,
    ImageTensors,
    _bytes_or_path,
    _decode_rows,
    load_image_dataset,
    resolve_columns,
)

logger = logging.getLogger(__name__)

# datasets interleaves up to this many shards into the shuffle buffer (its own default).
MAX_BUFFER_INPUT_SHARDS = 10


class ImageStream:
    """A training split as an endless stream of decoded uint8 batches, one pass after another, each pass reshuffled.

    `state_dict()` says where the stream is: its pass and `datasets`' `IterableDataset.state_dict()` (the position of
    its readers), saved in every checkpoint so that a resumed run continues the stream rather than starting it again.
    The resumed stream is exactly the uninterrupted one without a shuffle buffer. With one it is not, because
    `datasets` saves where its readers are but not the images waiting in the buffer: the resumed pass refills an empty
    buffer from the saved position, so the images that had been read but not yet drawn (up to `buffer_size`) are not
    seen again in that pass, and the buffer's draws start again from its seed. Later passes are complete, and shuffled
    as they would have been.

    `labels` is None: labels are checked batch by batch (against `num_classes`, once the model is known), as no split
    is ever whole."""

    labels = None

    def __init__(
        self,
        dataset: datasets.IterableDataset,
        image_column: str,
        label_column: str | None,
        num_channels: int,
        image_size: int,
        seed: int,
        buffer_size: int,
        rank: int = 0,
        world_size: int = 1,
        max_samples: int | None = None,
        resize: bool = False,
        name: str = "train",
    ):
        self.image_column, self.label_column = image_column, label_column
        self.num_channels, self.image_size, self._resize = num_channels, image_size, resize
        self.buffer_size, self.num_processes, self.name = buffer_size, world_size, name
        self.num_classes: int | None = None
        self.epoch = 0
        self._resumed_state: dict[str, Any] | None = None
        stream = _undecoded(dataset, image_column, label_column)
        if max_samples is not None:
            stream = stream.take(max_samples)
        if world_size > 1:
            stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
        if buffer_size > 0:
            shards = min(MAX_BUFFER_INPUT_SHARDS, max(1, stream.num_shards))
            stream = stream.shuffle(seed=seed, buffer_size=buffer_size, max_buffer_input_shards=shards)
        self._stream = stream
        self._batch_size: int | None = None

    @property
    def shape(self) -> tuple[None, int, int, int]:
        """(rows, C, H, W): a stream's number of rows is unknown."""
        return (None, self.num_channels, self.image_size, self.image_size)

    def batches(self, batch_size: int, device: torch.device | str = "cpu") -> Iterator[dict[str, torch.Tensor]]:
        """uint8 batch dicts ("pixel_values", and "labels" when there is a label column) on `device`, without end:
        when a pass is over the next one starts, reshuffled."""
        state, self._resumed_state = self._resumed_state, None
        if state is not None and state["batch_size"] != batch_size:
            raise DataError(
                f"The checkpoint's stream was read in batches of {state['batch_size']}, not {batch_size}: resume with "
                f"--per_device_train_batch_size {state['batch_size']}."
            )
        self._batch_size = batch_size
        while True:
            self._stream.set_epoch(self.epoch)
            rows = 0
            for table in self._read(self._stream.iter(batch_size=batch_size), resumed=state is not None):
                batch = decode_table(
                    table, self.image_column, self.label_column, self._mode, self.image_size, self._resize, rows
                )
                rows += table.num_rows
                if self.num_classes is not None and "labels" in batch:
                    _check_labels(batch["labels"], self.num_classes, self.label_column)
                yield {name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()}
            if rows == 0 and state is None:
                raise DataError(
                    f"The {self.name} stream has no images for this process (pass {self.epoch + 1} yielded none). "
                    "Check the split, or use fewer processes than the stream has rows."
                )
            state = None
            self.epoch += 1

    def _read(self, tables: Iterator[pa.Table], resumed: bool = False) -> Iterator[pa.Table]:
        """The stream's Arrow tables, a failure to read them (a network error, a damaged file) as a `DataError`; on
        the first read after `load_state_dict`, any failure is a saved position that does not fit this stream."""
        while True:
            try:
                table = next(tables)
            except StopIteration:
                return
            except Exception as error:
                if not resumed and not isinstance(error, (OSError, pa.ArrowException, ValueError)):
                    raise
                reason = " ".join(str(error).split())[:300]
                if resumed:
                    raise DataError(
                        "The stream position saved in the checkpoint does not fit this stream "
                        f"({type(error).__name__}: {reason}): resume with the data options of the run that wrote it "
                        "(its training_args.json)."
                    ) from error
                raise DataError(
                    f"Reading the {self.name} stream failed ({type(error).__name__}: {reason}). If it is a network "
                    "error, run again with --resume_from_checkpoint latest to continue from the last checkpoint."
                ) from error
            resumed = False
            yield table

    @property
    def _mode(self) -> str:
        return "L" if self.num_channels == 1 else "RGB"

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is, after the last batch it yielded (JSON-serialisable)."""
        position = self._stream.state_dict()
        return {
            "epoch": self.epoch,
            "dataset": _restart_batching(position) if self.buffer_size else position,
            "batch_size": self._batch_size,
            "num_processes": self.num_processes,
            "shuffle_buffer_size": self.buffer_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state` (from `state_dict()` of a stream read with the same options); a `ValueError` naming
        what differs otherwise."""
        if not isinstance(state, dict) or not {"epoch", "dataset", "batch_size"} <= state.keys():
            raise ValueError("it is not the state of a stream")
        for key, option in (("num_processes", "processes"), ("shuffle_buffer_size", "--shuffle_buffer_size")):
            if state.get(key) != getattr(self, "buffer_size" if key == "shuffle_buffer_size" else key):
                raise ValueError(
                    f"it was saved by a run with {option} {state.get(key)}, this one has "
                    f"{getattr(self, 'buffer_size' if key == 'shuffle_buffer_size' else key)}; resume with the same"
                )
        self.epoch = int(state["epoch"])
        self._stream.set_epoch(self.epoch)
        self._stream.load_state_dict(state["dataset"])
        self._resumed_state = state


def _restart_batching(state: dict[str, Any]) -> dict[str, Any]:
    """`datasets`' state of a shuffled stream read in batches (`IterableDataset.iter(batch_size)`), changed so that the
    resumed batching starts afresh where the buffer's reader is. As saved, it tells the resumed batcher to skip the
    chunks it had already taken from the buffer since its last input: chunks of a buffer whose content is not saved,
    so it would skip other images, or fail slicing a shorter chunk (datasets 5.2: a `SystemError` from pyarrow)."""
    batching = state.get("examples_iterable")
    if not isinstance(batching, dict) or batching.get("type") != "RebatchedArrowExamplesIterable":
        return state
    restarted = {"previous_state": batching.get("examples_iterable"), "batch_idx": 0}
    restarted.update(num_chunks_since_previous_state=0, cropped_chunk_length=0)
    return {**state, "examples_iterable": {**batching, **restarted}}


def _undecoded(dataset: datasets.IterableDataset, image_column: str, label_column: str | None):
    """The image (and label) columns as Arrow tables, images still encoded: decoding is `decode_table`'s."""
    stream = dataset.select_columns([image_column] + ([label_column] if label_column else []))
    if isinstance(stream.features[image_column], datasets.Image):
        stream = stream.cast_column(image_column, datasets.Image(decode=False))
    return stream.with_format("arrow")


def decode_table(
    table: pa.Table,
    image_column: str,
    label_column: str | None,
    mode: str | None,
    image_size: int | None,
    resize: bool = True,
    first_row: int = 0,
) -> dict[str, torch.Tensor]:
    """An Arrow batch of a stream as the in-memory path's batch dict: "pixel_values" uint8 (B, C, H, W) and "labels"
    int64 (B,) when there is a label column. The images are converted to `mode` and, with `resize`, resized and
    centre-cropped to `image_size`; without, they must be `image_size` square already (any square size when it is
    None). PIL decodes image by image (`data._decode_rows`, the in-memory path's decoder); the rest is whole-column
    work."""
    raw = [_raw_image(item) for item in table.column(image_column).to_pylist()]
    arrays = _decode_rows(raw, image_column, mode, image_size if resize else None, first_row=first_row)
    shapes = {array.shape[:2] for array in arrays}
    height, width = next(iter(shapes))
    if len(shapes) != 1 or height != width or height != (image_size or height):
        found = sorted(f"{h}x{w}" for h, w in shapes)[:5]
        expected = f"{image_size}x{image_size} like the first image" if image_size else "square and alike"
        raise DataError(
            f"Images in column {image_column!r} of the stream are {', '.join(found)}, not all {expected}; pass "
            "--image_size N to resize and centre-crop them all to N x N."
        )
    stacked = np.stack(arrays)
    images = np.ascontiguousarray(stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2))
    batch = {"pixel_values": torch.from_numpy(images)}
    if label_column is not None:
        try:
            labels = table.column(label_column).to_numpy()
            batch["labels"] = torch.tensor(labels, dtype=torch.long)
        except (TypeError, ValueError, pa.ArrowException) as error:
            raise DataError(
                f"Label column {label_column!r} does not hold one integer class per row ({error}); pass the right "
                "--label_column, or fix the dataset."
            ) from None
    return batch


def _raw_image(item: Any) -> Any:
    """What `_decode_rows` decodes: the encoded bytes or local file of an `Image` cell; an array cell as it is."""
    if isinstance(item, dict):
        return _bytes_or_path(item)
    return None if item is None else np.asarray(item)


def _check_labels(labels: torch.Tensor, num_classes: int, label_column: str | None) -> None:
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"A batch of the stream has labels in [{int(labels.min())}, {int(labels.max())}] (column "
            f"{label_column!r}) but --num_classes is {num_classes}: labels must lie in [0, num_classes)."
        )


def decode_first(
    dataset: datasets.IterableDataset,
    count: int,
    image_column: str,
    label_column: str | None,
    mode: str,
    image_size: int,
    resize: bool,
    name: str,
) -> ImageTensors:
    """The first `count` images of a streamed split, decoded into memory (`ImageTensors`), in its own order."""
    stream = _undecoded(dataset, image_column, label_column).take(count)
    images, labels, rows = [], [], 0
    for table in stream.iter(batch_size=DECODE_CHUNK_ROWS):
        batch = decode_table(table, image_column, label_column, mode, image_size, resize, rows)
        rows += table.num_rows
        images.append(batch["pixel_values"])
        if "labels" in batch:
            labels.append(batch["labels"])
    if not images:
        raise DataError(f"The {name} split of the stream is empty: there is nothing to validate on.")
    return ImageTensors(torch.cat(images), torch.cat(labels) if labels else None)


def _first_image_shape(
    dataset: datasets.IterableDataset, image_column: str, mode: str | None, image_size: int | None
) -> tuple[int, int]:
    """(channels, size) of the stream's first image as decoded (`mode`, `image_size` when given): the train stream's
    shape, which every batch, the model (when new) and the validation images follow."""
    first = next(iter(_undecoded(dataset, image_column, None).take(1).iter(batch_size=1)), None)
    if first is None or first.num_rows == 0:
        raise DataError("The train split of the stream is empty: there is nothing to train on.")
    array = decode_table(first, image_column, None, mode, image_size, resize=image_size is not None)["pixel_values"]
    return array.shape[1], array.shape[2]


def load_streaming_splits(
    dataset_name: str,
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    seed: int = 42,
    image_size: int | None = None,
    num_channels: int | None = None,
    cache_dir: str | None = None,
    shuffle_buffer_size: int = 10_000,
    max_train_samples: int | None = None,
    eval_samples: int = 10_000,
    rank: int = 0,
    world_size: int = 1,
    train_split: str = "train",
    test_split: str = "test",
) -> ImageDataSplits:
    """The train split as an `ImageStream` (this process's part of it, shuffled in a buffer seeded with `seed`), and
    the first `eval_samples` images of the validation split (else of the test split) and of the test split, decoded
    into memory. The images take the train stream's first image's mode and size unless `num_channels` /
    `image_size` are given."""
    streams = load_image_dataset(dataset_name, dataset_config_name, cache_dir, streaming=True)
    if train_split not in streams:
        raise DataError(f"Dataset {dataset_name!r} has no {train_split!r} split; its splits are {list(streams)}.")
    train_dataset = streams[train_split]
    if train_dataset.features is None:  # a stream whose features are only known from its first rows
        train_dataset = train_dataset._resolve_features()
    image_column, label_column = resolve_columns(train_dataset, image_column, label_column)
    mode = {1: "L", 3: "RGB"}.get(num_channels)
    channels, size = _first_image_shape(train_dataset, image_column, mode, image_size)
    mode = "L" if channels == 1 else "RGB"
    resize = image_size is not None

    def first(split: str) -> ImageTensors:
        return decode_first(streams[split], eval_samples, image_column, label_column, mode, size, resize, split)

    test = first(test_split) if test_split in streams else None
    validation_name = next((name for name in VALIDATION_SPLIT_NAMES if name in streams), None)
    if validation_name is not None:
        validation = first(validation_name)
    elif test is not None:
        validation = test
        if rank == 0:
            logger.warning(
                f"{dataset_name!r} has no validation split and a stream cannot hold part of train out: validating on "
                f"the first {len(test)} images of its {test_split!r} split, which also give the test figures (so the "
                "best model is picked on the images it is tested on)."
            )
    else:
        raise DataError(
            f"Dataset {dataset_name!r} has neither a validation nor a {test_split!r} split to validate on, and a "
            f"stream cannot hold part of train out (its splits: {list(streams)}). Stream a dataset with a "
            "validation split, or drop --streaming to hold out --validation_split of train."
        )
    train = ImageStream(
        train_dataset,
        image_column,
        label_column,
        channels,
        size,
        seed,
        shuffle_buffer_size,
        rank=rank,
        world_size=world_size,
        max_samples=max_train_samples,
        resize=resize,
    )
    return ImageDataSplits(train, validation, test, image_column, label_column, list(train_dataset.column_names))


__all__ = ["ImageStream", "decode_first", "decode_table", "load_streaming_splits"]
