"""Data loading (`hf_vae.data`): column detection, the errors that name their fix, decode-once caching, the split
rules, pixel values and binarisation, whole-batch serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image
from safetensors.torch import save_file

from hf_vae import VAEConfig, VAEModel
from hf_vae.cli import main as cli_main
from hf_vae.data import (
    DataError,
    ImageTensorDataset,
    ImageTensors,
    binarize_statically,
    check_matches_config,
    collate_batch,
    decode_split,
    load_image_dataset,
    load_splits,
    resolve_columns,
    to_pixel_values,
)

REPO = Path(__file__).resolve().parents[1]


def train_main(argv: list[str]) -> int:
    """`hf-vae train ...` in this process, as the command line runs it."""
    return cli_main(["train", *argv])


def images(count: int, size: int = 28, mode: str = "L", seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode) for _ in range(count)]


def image_dataset(count: int, size: int = 28, mode: str = "L", seed: int = 0, **columns) -> datasets.Dataset:
    features = {"image": datasets.Image(), **{name: datasets.Value("int64") for name in columns}}
    return datasets.Dataset.from_dict(
        {"image": images(count, size, mode, seed), **columns}, features=datasets.Features(features)
    )


def save(path: Path, **splits: datasets.Dataset) -> Path:
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def decoded_cache_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("hf_vae_decoded/*.safetensors"))


# ---------------------------------------------------------------------------------------------- columns
def test_columns_are_detected_and_a_missing_column_lists_the_columns():
    dataset = image_dataset(3, label=[0, 1, 2])
    assert resolve_columns(dataset) == ("image", "label")
    with pytest.raises(
        DataError, match=r"Image column 'picture' not found; the dataset's columns are \['image', 'label'\]"
    ):
        resolve_columns(dataset, image_column="picture")
    with pytest.raises(DataError, match=r"Label column 'digit' not found.*\['image', 'label'\]"):
        resolve_columns(dataset, label_column="digit")


def test_ambiguous_image_columns_ask_for_image_column():
    dataset = datasets.Dataset.from_dict(
        {"left": images(2), "right": images(2, seed=1)},
        features=datasets.Features({"left": datasets.Image(), "right": datasets.Image()}),
    )
    with pytest.raises(DataError, match=r"candidates: \['left', 'right'\].*--image_column"):
        resolve_columns(dataset)
    assert resolve_columns(dataset, image_column="right") == ("right", None)


# ---------------------------------------------------------------------------------------------- errors
def test_image_size_mismatch_names_both_shapes_and_the_fix():
    data = ImageTensors(torch.zeros(4, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(DataError, match=r"3x32x32 .* expects 1x28x28\. Pass --image_size 28 and --num_channels 1"):
        check_matches_config(data, image_size=28, num_channels=1)
    check_matches_config(data, image_size=32, num_channels=3)


def _train_here(*args: str) -> int:
    try:
        return train_main(list(args))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def test_training_a_saved_model_refuses_mismatched_images_unless_asked_to_resize(tmp_path, capsys):
    saved = tmp_path / "grey28"
    VAEModel(VAEConfig.from_preset("mnist-2d", hidden_sizes=[8])).save_pretrained(saved)
    folder = save(tmp_path / "rgb32", train=image_dataset(40, size=32, mode="RGB"))
    common = ["--dataset_name", str(folder), "--model_name_or_path", str(saved), "--num_train_epochs", "1"]
    assert _train_here(*common, "--skip_figures", "--output_dir", str(tmp_path / "a")) == 1
    assert "The train images are 3x32x32" in capsys.readouterr().err
    resize = ["--image_size", "28", "--num_channels", "1"]
    assert _train_here(*common, *resize, "--skip_figures", "--output_dir", str(tmp_path / "b")) == 0


def test_empty_splits_are_refused(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    (tmp_path / "repo" / "data").mkdir(parents=True)
    for split, count in (("train", 6), ("test", 0)):
        rows = datasets.Dataset.from_dict({"image": images(6), "label": list(range(6))}, features=features)
        rows.select(range(count)).to_parquet(str(tmp_path / "repo" / "data" / f"{split}-00000-of-00001.parquet"))
    with pytest.raises(DataError, match="has an empty split .*test"):
        load_splits(str(tmp_path / "repo"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="split is empty"):
        decode_split(image_dataset(1).select([]), "image")


def test_a_missing_local_folder_is_named(tmp_path):
    with pytest.raises(DataError, match=r"No dataset folder '.*nowhere': check the path"):
        load_image_dataset(str(tmp_path / "nowhere"))
    # A relative path is named as typed, with the folder it was looked for in.
    with pytest.raises(DataError, match=r"No dataset folder '\./nowhere' \(in .*\): check the path"):
        load_image_dataset("./nowhere")


def test_unreachable_hub_advises_a_local_copy(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN")
    }
    # huggingface_hub retries a refused connection 5 times with backoff (about 25 s, not configurable); the
    # timeouts keep each attempt short.
    env.update(
        HF_ENDPOINT=f"http://127.0.0.1:{port}",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_ETAG_TIMEOUT="1",
        HF_HUB_DOWNLOAD_TIMEOUT="1",
        OMP_NUM_THREADS="1",
    )
    command = [sys.executable, "-m", "hf_vae.cli", "train", "--dataset_name", "someone/digits"]
    completed = subprocess.run(
        [*command, "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=300
    )
    assert completed.returncode == 1
    assert "Could not load dataset 'someone/digits'" in completed.stderr
    assert "could not be reached" in completed.stderr and "--dataset_name /path/to/mnist" in completed.stderr
    assert "Traceback" not in completed.stderr


# ---------------------------------------------------------------------------------------------- decode once
def test_a_split_is_decoded_once_then_read_from_the_cache(tmp_path):
    folder = save(tmp_path / "digits", train=image_dataset(30, label=list(range(30))))
    first = load_splits(str(folder), validation_split=0.2)
    (cache,) = decoded_cache_files(folder)
    # Replace the cached tensor: a second load that returns it has read the cache instead of decoding the PNGs.
    marker = torch.full((30, 1, 28, 28), 7, dtype=torch.uint8)
    save_file({"images": marker, "labels": torch.arange(30)}, str(cache))
    second = load_splits(str(folder), validation_split=0.2)
    assert torch.equal(torch.cat([second.train.images, second.validation.images]).unique(), torch.tensor([7]))
    assert not torch.equal(first.train.images, second.train.images)


def test_a_damaged_cache_is_decoded_again(tmp_path):
    folder = save(tmp_path / "digits", train=image_dataset(12))
    dataset = datasets.load_from_disk(str(folder))["train"]
    # A copy: the returned images map the cache file, and this test damages the file in place (hf-vae itself only
    # ever replaces it by a rename, which leaves existing mappings intact).
    original = decode_split(dataset, "image").images.clone()
    (cache,) = decoded_cache_files(folder)
    cache.write_bytes(b"not a safetensors file")
    assert torch.equal(decode_split(dataset, "image").images, original)
    assert cache.stat().st_size > 1000  # rewritten


def test_decoding_converts_channels_and_resizes(tmp_path):
    dataset = image_dataset(5, size=20, mode="RGB")
    grey = decode_split(dataset, "image", image_size=16, num_channels=1, cache=False)
    assert grey.images.shape == (5, 1, 16, 16) and grey.images.dtype == torch.uint8
    colour = decode_split(image_dataset(5, size=16), "image", num_channels=3, cache=False)
    assert colour.images.shape == (5, 3, 16, 16)


# ---------------------------------------------------------------------------------------------- splits
def test_validation_is_held_out_of_train_unless_the_dataset_has_one(tmp_path):
    ids = list(range(50))
    folder = save(tmp_path / "two", train=image_dataset(50, label=ids), test=image_dataset(10, seed=1, label=ids[:10]))
    splits = load_splits(str(folder), label_column="label", validation_split=0.1, seed=3)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (45, 5, 10)
    held_out = set(splits.validation.labels.tolist())
    assert held_out.isdisjoint(splits.train.labels.tolist()) and len(held_out) == 5
    again = load_splits(str(folder), label_column="label", validation_split=0.1, seed=3)
    assert torch.equal(again.validation.labels, splits.validation.labels)
    assert splits.column_names == ["image", "label"]

    folder = save(tmp_path / "three", train=image_dataset(20), validation=image_dataset(6, seed=2))
    splits = load_splits(str(folder))
    assert (len(splits.train), len(splits.validation), splits.test) == (20, 6, None)
    with pytest.raises(DataError, match="--validation_split must be a fraction"):
        load_splits(str(save(tmp_path / "one", train=image_dataset(10))), validation_split=0.0)


# ---------------------------------------------------------------------------------------------- pixels and batches
def test_pixel_values_and_binarisation():
    uint8 = torch.tensor([[0, 64, 128, 255]], dtype=torch.uint8).repeat(64, 1)
    grey = to_pixel_values(uint8)
    assert grey.dtype == torch.float32 and grey.min() == 0 and grey.max() == 1
    draws = to_pixel_values(uint8, "dynamic", torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(draws, to_pixel_values(uint8, "dynamic", torch.Generator().manual_seed(0)))
    assert not torch.equal(draws, to_pixel_values(uint8, "dynamic", torch.Generator().manual_seed(1)))
    assert abs(draws[:, 2].mean().item() - 128 / 255) < 0.2
    static = binarize_statically(uint8, seed=5)
    assert torch.equal(static, binarize_statically(uint8, seed=5)) and set(static.unique().tolist()) <= {0, 255}
    with pytest.raises(ValueError, match="binarize must be one of"):
        to_pixel_values(uint8, "sometimes")


def test_a_dataloader_slices_whole_batches():
    data = ImageTensors(
        torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).clone(), torch.arange(10)
    )
    loader = torch.utils.data.DataLoader(ImageTensorDataset(data), batch_size=4, collate_fn=collate_batch)
    batches = list(loader)
    assert [len(batch["labels"]) for batch in batches] == [4, 4, 2]
    assert torch.equal(batches[1]["labels"], torch.tensor([4, 5, 6, 7]))
    assert torch.equal(batches[1]["pixel_values"][:, 0, 0, 0], torch.tensor([4, 5, 6, 7], dtype=torch.uint8))
