"""Training from a `datasets` stream (`--streaming`, `hf_vae.streaming`): passes reshuffled within a buffer, each
process's own part of the stream, resuming where the stream stopped (exactly without a buffer), a real run on MNIST,
and the options a stream cannot honour.

The small dataset is a Parquet folder laid out like a Hub dataset repo (what `load_dataset(..., streaming=True)` reads
from the Hub), whose images carry their row number in their first two pixels, so that every test can tell which
images a stream gave.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_speed import train_here

from hf_vae import VAEModel
from hf_vae.checkpointing import CHECKPOINTS_DIR, STATE_FILE
from hf_vae.streaming import load_streaming_splits

TRAIN_ROWS, TEST_ROWS, SIZE = 300, 50, 12
TINY = [
    "--streaming", "--preset", "mnist-2d", "--hidden_sizes", "32", "--per_device_train_batch_size", "32",
    "--skip_figures", "--disable_tqdm",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def _numbered_images(count: int, first: int, rng: np.random.Generator) -> list[Image.Image]:
    """Images whose pixels (0, 0) and (0, 1) hold their number, over a bar at a random place (something to learn)."""
    images = []
    for number in range(first, first + count):
        pixels = np.zeros((SIZE, SIZE), dtype=np.uint8)
        pixels[0, 0], pixels[0, 1] = number % 256, number // 256
        row, column = rng.integers(2, SIZE - 4, size=2)
        pixels[row : row + 4, column : column + 2] = 255
        images.append(Image.fromarray(pixels))
    return images


def _split(count: int, first: int, rng: np.random.Generator) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    columns = {"image": _numbered_images(count, first, rng), "label": [number % 10 for number in range(count)]}
    return datasets.Dataset.from_dict(columns, features=features)


@pytest.fixture(scope="module")
def parquet_dataset(tmp_path_factory) -> Path:
    """A dataset folder as on the Hub: data/train-*.parquet (rows 0..299) and data/test-*.parquet (1000..1049)."""
    root = tmp_path_factory.mktemp("stream") / "numbered"
    (root / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    _split(TRAIN_ROWS, 0, rng).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    _split(TEST_ROWS, 1000, rng).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    return root


def numbers(batch: dict[str, torch.Tensor]) -> list[int]:
    pixels = batch["pixel_values"][:, 0, 0].long()
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def stream(path: Path, buffer_size: int, rank: int = 0, world_size: int = 1):
    splits = load_streaming_splits(str(path), shuffle_buffer_size=buffer_size, eval_samples=8, rank=rank,
                                   world_size=world_size)  # fmt: skip
    return splits.train


def passes(train, batches, count: int) -> list[list[int]]:
    """The numbers of the stream's next `count` passes (the current one from where it is), read from `batches` (one
    batch of the pass after them is read and dropped)."""
    grouped: dict[int, list[int]] = {}
    for batch in batches:
        grouped.setdefault(train.epoch, []).extend(numbers(batch))  # the pass this batch belongs to
        if len(grouped) > count:
            return [grouped[index] for index in sorted(grouped)[:count]]
    raise AssertionError("the stream ended")


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with (output_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- the stream
def test_passes_are_whole_reshuffled_and_split_between_processes(parquet_dataset):
    train = stream(parquet_dataset, buffer_size=64)
    assert (train.num_channels, train.image_size, train.shape) == (1, SIZE, (None, 1, SIZE, SIZE))
    batches = train.batches(32)
    first = next(batches)
    assert first["pixel_values"].dtype == torch.uint8 and first["pixel_values"].shape == (32, 1, SIZE, SIZE)
    assert first["labels"].tolist() == [number % 10 for number in numbers(first)]
    first_pass, second_pass = passes(train, batches, 2)
    first_pass = numbers(first) + first_pass
    assert sorted(first_pass) == sorted(second_pass) == list(range(TRAIN_ROWS))  # every image once a pass
    assert first_pass != sorted(first_pass) and second_pass != first_pass  # shuffled, and differently each pass

    parts = [passes(part, part.batches(32), 1)[0] for part in (stream(parquet_dataset, 0, rank, 2) for rank in (0, 1))]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == list(range(TRAIN_ROWS))


def test_a_resumed_stream_continues_where_it_stopped(parquet_dataset):
    # Without a buffer the resumed stream is the uninterrupted one, across the end of a pass.
    train = stream(parquet_dataset, buffer_size=0)
    batches = train.batches(32)
    before = [numbers(next(batches)) for _ in range(4)]
    state = json.loads(json.dumps(train.state_dict()))
    expected = [next(batches)["pixel_values"] for _ in range(12)]
    resumed = stream(parquet_dataset, buffer_size=0)
    resumed.load_state_dict(state)
    again = resumed.batches(32)
    assert all(torch.equal(next(again)["pixel_values"], images) for images in expected)
    assert before[0] == list(range(32))

    # With a buffer, the images waiting in it at the checkpoint are not seen again in that pass (datasets does not
    # save them), none is repeated, and the next pass is the uninterrupted stream's.
    train = stream(parquet_dataset, buffer_size=64)
    batches = train.batches(32)
    before = sum((numbers(next(batches)) for _ in range(4)), [])
    state = json.loads(json.dumps(train.state_dict()))
    uninterrupted_next_pass = passes(train, batches, 2)[1]
    resumed = stream(parquet_dataset, buffer_size=64)
    resumed.load_state_dict(state)
    again = resumed.batches(32)
    rest_of_pass, next_pass = passes(resumed, again, 2)
    assert not set(before) & set(rest_of_pass) and len(set(rest_of_pass)) == len(rest_of_pass)
    assert TRAIN_ROWS - 64 <= len(before) + len(rest_of_pass) < TRAIN_ROWS
    assert next_pass == uninterrupted_next_pass and sorted(next_pass) == list(range(TRAIN_ROWS))

    with pytest.raises(ValueError, match="--shuffle_buffer_size 64, this one has 0"):
        stream(parquet_dataset, buffer_size=0).load_state_dict(state)


# ---------------------------------------------------------------------------------------------- training
def test_streaming_run_on_mnist_learns_and_saves_a_loadable_model(mnist_dir, tmp_path):
    output_dir = tmp_path / "mnist"
    status = train_here(
        "--dataset_name", str(mnist_dir), "--streaming", "--preset", "mnist-2d", "--max_steps", "40",
        "--eval_steps", "10", "--max_eval_samples", "500", "--per_device_train_batch_size", "64",
        "--skip_figures", "--disable_tqdm", "--output_dir", str(output_dir),
    )  # fmt: skip
    assert status == 0
    rows = read_metrics(output_dir)
    losses = [float(row["val_loss"]) for row in rows]
    assert len(rows) == 4 and losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 30, losses
    results = read_json(output_dir / "train_results.json")
    assert results["streaming"] is True and results["train_images"] is None and results["global_step"] == 40
    assert results["train_samples_seen"] == 40 * 64 and results["validation_images"] == 500
    assert results["stream_shuffle_buffer_size"] == 10_000 and results["stream_passes_started"] == 1
    assert read_json(output_dir / "eval_results.json")["test_images"] == 500
    model = VAEModel.from_pretrained(output_dir)
    saved = load_file(output_dir / "model.safetensors")
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items() if name in saved)


def test_resumed_streaming_run_is_exact_without_a_shuffle_buffer(parquet_dataset, tmp_path, capsys):
    # 24 steps of 32 images: 10 batches a pass (the last of 12 images), so the run crosses two pass boundaries; a
    # checkpoint every 8 steps and a validation every 6 put the checkpoint copied below in the middle of an "epoch".
    arguments = [
        "--dataset_name", str(parquet_dataset), *TINY, "--max_steps", "24", "--eval_steps", "6",
        "--checkpointing_steps", "8", "--save_total_limit", "5", "--binarize", "dynamic",
    ]  # fmt: skip
    for buffer_size in ("0", "64"):
        uninterrupted, resumed = tmp_path / f"a{buffer_size}", tmp_path / f"b{buffer_size}"
        options = [*arguments, "--shuffle_buffer_size", buffer_size]
        assert train_here(*options, "--output_dir", str(uninterrupted)) == 0
        checkpoint = uninterrupted / CHECKPOINTS_DIR / "checkpoint-8"
        assert read_json(checkpoint / STATE_FILE)["step_in_epoch"] == 2
        assert read_json(checkpoint / "stream_state_0.json")["shuffle_buffer_size"] == int(buffer_size)
        shutil.copytree(checkpoint, resumed / CHECKPOINTS_DIR / checkpoint.name)
        assert train_here(*options, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest") == 0
        results = read_json(resumed / "train_results.json")
        assert results["global_step"] == 24 and results["resumed_from_checkpoint"].endswith("checkpoint-8")
        expected, actual = load_file(uninterrupted / "model.safetensors"), load_file(resumed / "model.safetensors")
        identical = all(torch.equal(expected[name], actual[name]) for name in expected)
        drop_time = [[value for name, value in row.items() if name != "epoch_time"] for row in read_metrics(resumed)]
        same_rows = drop_time == [
            [value for name, value in row.items() if name != "epoch_time"] for row in read_metrics(uninterrupted)
        ]
        # Exact without a buffer; with one the resumed stream skips what the buffer held, so the runs differ.
        assert identical == same_rows == (buffer_size == "0")

    in_memory = [option for option in arguments if option != "--streaming"]
    assert train_here(*in_memory, "--output_dir", str(tmp_path / "c"), "--resume_from_checkpoint", str(checkpoint)) == 1
    assert "was written by a run with --streaming; resume it with --streaming" in capsys.readouterr().err


def test_streaming_option_errors_name_the_fix(parquet_dataset, tmp_path, capsys):
    base = ["--dataset_name", str(parquet_dataset), "--output_dir", str(tmp_path / "out")]
    assert train_here(*base, "--streaming") == 2
    assert "--streaming has no epoch length, so it needs --max_steps N" in capsys.readouterr().err
    assert train_here(*base, "--streaming", "--max_steps", "5", "--validation_split", "0.2") == 2
    assert "--validation_split holds out a fraction of train" in capsys.readouterr().err
    assert train_here(*base, "--shuffle_buffer_size", "100") == 2
    assert "--shuffle_buffer_size applies to --streaming only" in capsys.readouterr().err
    assert train_here(*base, "--streaming", "--max_steps", "5", "--binarize", "static") == 2
    assert "use --binarize dynamic" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

    train_only = tmp_path / "train-only"
    datasets.DatasetDict({"train": _split(20, 0, np.random.default_rng(0))}).save_to_disk(str(train_only))
    arguments = ["--dataset_name", str(train_only), *TINY, "--max_steps", "2", "--output_dir", str(tmp_path / "out")]
    assert train_here(*arguments) == 1
    assert "neither a validation nor a 'test' split to validate on" in capsys.readouterr().err
