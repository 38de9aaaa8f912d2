"""Damaged inputs: every file a user hands hf-vae either loads or is refused with the entry point's documented error,
naming the file, and nothing is left half-written.

Each entry point gets a seeded fuzz test that damages real files (bit flips, truncation, random bytes, a block
spliced in from elsewhere in the file, a zeroed block) and asserts that only the documented errors escape. Every
random input comes from a seeded generator, so every run tests the same bytes. Models and data are tiny, so that the
whole file runs in well under a minute on two cores.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers
import yaml
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from PIL import Image
from safetensors.torch import save_file
from test_convert import DEFAULT_ARGS, save_tutorial, trained_tutorial

import hf_vae.training as training
from hf_vae import VAEConfig, VAEModel
from hf_vae.checkpointing import (
    CheckpointError,
    LoopState,
    check_checkpoint_folder,
    load_checkpoint,
    save_checkpoint,
)
from hf_vae.cli import main as cli_main
from hf_vae.convert import ConversionError, convert_checkpoint
from hf_vae.data import DataError, decode_split, load_splits
from hf_vae.evaluation import EvaluationError, load_image_folder
from hf_vae.training_args import parse_args, save_arguments

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


def train_main(argv: list[str]) -> int:
    """`hf-vae train ...` in this process, as the command line runs it."""
    return cli_main(["train", *argv])


def convert_main(argv: list[str]) -> int:
    """`hf-vae convert ...` in this process, as the command line runs it."""
    return cli_main(["convert", *argv])


def evaluate_main(argv: list[str]) -> int:
    """`hf-vae evaluate ...` in this process, as the command line runs it."""
    return cli_main(["evaluate", *argv])


# ---------------------------------------------------------------------------------------------- damage
def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    damaged = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
    return bytes(damaged)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _random_bytes(data: bytes, rng: random.Random) -> bytes:
    return rng.randbytes(rng.randint(1, max(1, len(data))))


def _splice(data: bytes, rng: random.Random) -> bytes:
    """A block copied from elsewhere in the same file, as a bad copy or a disk error would leave it."""
    size = rng.randint(1, 512)
    start, source = rng.randrange(len(data)), rng.randrange(len(data))
    damaged = bytearray(data)
    damaged[start : start + size] = data[source : source + size]
    return bytes(damaged[: len(data)])


def _zero_block(data: bytes, rng: random.Random) -> bytes:
    size = rng.randint(1, 512)
    start = rng.randrange(len(data))
    return data[:start] + bytes(len(data[start : start + size])) + data[start + size :]


DAMAGE: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit flips": _flip_bits,
    "truncated": _truncate,
    "random bytes": _random_bytes,
    "spliced block": _splice,
    "zeroed block": _zero_block,
}


def damaged_files(names: list, count: int, seed: int) -> list[tuple[int, str, str, random.Random]]:
    """`count` cases of damage to one of several files: (case, file name, kind of damage, seeded generator). Every
    file meets every kind of damage in turn."""
    kinds = list(DAMAGE)
    return [
        (
            index,
            names[index % len(names)],
            kinds[(index // len(names)) % len(kinds)],
            random.Random(seed * 1000 + index),
        )
        for index in range(count)
    ]


def damaged_copies(data: bytes, count: int, seed: int) -> list[tuple[str, bytes]]:
    """`count` damaged copies of `data`, every kind of damage in turn, from `random.Random(seed)`."""
    rng = random.Random(seed)
    kinds = list(DAMAGE)
    return [(kinds[index % len(kinds)], DAMAGE[kinds[index % len(kinds)]](data, rng)) for index in range(count)]


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` and its SHA-256: to show that a refused input changed nothing."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def assert_clean_cli_error(code: int, stderr: str, prefix: str, *names: str) -> None:
    """Exit code 1 or 2, no traceback, and one error paragraph starting with `prefix` that names each of `names`."""
    assert code in (1, 2), stderr
    assert "Traceback" not in stderr, stderr
    assert prefix in stderr, stderr
    paragraph = stderr[stderr.index(prefix) :].strip()
    assert "\n\n" not in paragraph, paragraph
    for name in names:
        assert name in paragraph, paragraph


def tiny_model() -> VAEModel:
    torch.manual_seed(0)
    return VAEModel(VAEConfig.from_preset("mnist-2d", hidden_sizes=[8], latent_dim=2)).eval()


@pytest.fixture(autouse=True, scope="module")
def quiet_transformers():
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    yield
    transformers.utils.logging.enable_progress_bar()
    datasets.utils.logging.enable_progress_bar()


# ---------------------------------------------------------------------------------------------- hf-vae convert
@pytest.fixture(scope="module")
def tutorial_checkpoints(tmp_path_factory) -> dict[str, bytes]:
    """A real tutorial checkpoint (the tutorial's module and layout, trained a few steps; hidden_dim 32 to keep
    each conversion fast) in torch's zip format and in the legacy format."""
    folder = tmp_path_factory.mktemp("tutorial")
    tutorial = trained_tutorial({**DEFAULT_ARGS, "hidden_dim": 32}, steps=2)
    save_tutorial(tutorial, folder / "zip.pth")
    config = {**DEFAULT_ARGS, "hidden_dim": 32}
    state = {"model_state_dict": tutorial.state_dict(), "model_config": config}
    torch.save(state, folder / "legacy.pth", _use_new_zipfile_serialization=False)
    return {name: (folder / f"{name}.pth").read_bytes() for name in ("zip", "legacy")}


@pytest.mark.parametrize("layout, count", [("zip", 80), ("legacy", 40)])
def test_convert_refuses_damaged_tutorial_checkpoints_and_writes_nothing(
    tutorial_checkpoints, tmp_path, capsys, layout, count
):
    converted = 0
    for index, (kind, data) in enumerate(damaged_copies(tutorial_checkpoints[layout], count, seed=1)):
        work = tmp_path / f"case-{index}"
        work.mkdir()
        checkpoint = work / "best_vae_model.pth"
        checkpoint.write_bytes(data)
        out = work / "new" / "out"
        if index % 5 == 0:  # the command line, now and then
            code = convert_main([str(checkpoint), "--output_dir", str(out)])
            if code == 0:
                converted += 1
                assert VAEModel.from_pretrained(out).config.latent_dim == 2
            else:
                assert_clean_cli_error(code, capsys.readouterr().err, "hf-vae convert: error:")
                assert sorted(path.name for path in work.iterdir()) == ["best_vae_model.pth"], (index, kind)
            shutil.rmtree(work)
            continue
        try:
            convert_checkpoint(checkpoint, out)
            converted += 1  # damage in the tensor values: undetectable, and the conversion is still exact
        except ConversionError as error:
            assert "best_vae_model.pth" in str(error) or "The checkpoint's network" in str(error), (kind, error)
            assert sorted(path.name for path in work.iterdir()) == ["best_vae_model.pth"], (index, kind)
        shutil.rmtree(work)
    assert 0 < converted < count  # the damage is neither all fatal nor all harmless


class _RunsCode:
    """A pickle payload that creates a file when unpickled: stands for any code a crafted checkpoint could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_damaged_copies_of_a_checkpoint_that_runs_code_never_run_it(tmp_path):
    marker = tmp_path / "code-ran"
    tutorial = trained_tutorial({**DEFAULT_ARGS, "hidden_dim": 8}, steps=1)
    buffer = io.BytesIO()
    torch.save({"model_state_dict": tutorial.state_dict(), "model_config": _RunsCode(marker)}, buffer)
    for index, (kind, data) in enumerate([("intact", buffer.getvalue())] + damaged_copies(buffer.getvalue(), 40, 2)):
        path = tmp_path / f"evil-{index}.pth"
        path.write_bytes(data)
        with pytest.raises(ConversionError):
            convert_checkpoint(path, tmp_path / "out")
        assert not marker.exists(), kind
        assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- model folder
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "model"
    tiny_model().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_from_pretrained_loads_or_raises_its_documented_errors(model_folder, tmp_path, name):
    """`VAEModel.from_pretrained` documents an `OSError` for a corrupt file, a `RuntimeError` for weights that do not
    fit the config and a `ValueError` for a bad config value."""
    loaded = 0
    for index, (kind, data) in enumerate(damaged_copies((model_folder / name).read_bytes(), 60, seed=3)):
        folder = Path(shutil.copytree(model_folder, tmp_path / f"case-{index}"))
        (folder / name).write_bytes(data)
        try:
            VAEModel.from_pretrained(folder)
            loaded += 1
        except (OSError, RuntimeError, ValueError) as error:
            assert str(error), kind
        shutil.rmtree(folder)
    assert loaded < 60


def test_from_pretrained_one_bit_flip_in_the_dtype_is_a_documented_error(model_folder, tmp_path):
    folder = Path(shutil.copytree(model_folder, tmp_path / "model"))
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace('"float32"', '"floaT32"'))  # 't' ^ 0x20
    # transformers resolves config.json's "dtype" with getattr(torch, ...), unchecked.
    with pytest.raises(OSError, match=r"config.json cannot (be read|build the model).*damaged"):
        VAEModel.from_pretrained(folder)


def test_a_damaged_config_asking_for_a_huge_layer_is_refused_before_allocating(model_folder, tmp_path):
    folder = Path(shutil.copytree(model_folder, tmp_path / "model"))
    config = json.loads((folder / "config.json").read_text())
    config["hidden_sizes"] = [3_000_000]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match=r"checkpoint \(\d+, 784\), model \(3000000, 784\)"):
        VAEModel.from_pretrained(folder)


@pytest.fixture(scope="module")
def score_folder(tmp_path_factory) -> Path:
    """Two small greyscale images to score."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"digit{index}.png")
    return folder


def _evaluate(model: Path, images: Path, scores: Path) -> int:
    return evaluate_main(
        ["--model", str(model), "--image_folder", str(images), "--anomaly_scores_output", str(scores)]
        + ["--threshold", "1000", "--anomaly_samples", "2", "--device", "cpu"]
    )


def test_evaluate_model_folder_damaged_loads_or_exits_1_with_a_clear_message(
    model_folder, score_folder, tmp_path, capsys
):
    cases = [("config.json", case) for case in damaged_copies((model_folder / "config.json").read_bytes(), 20, 4)]
    cases += [
        ("model.safetensors", case) for case in damaged_copies((model_folder / "model.safetensors").read_bytes(), 20, 5)
    ]
    text = (model_folder / "config.json").read_text()
    cases.append(("config.json", ("dtype flip", text.replace('"float32"', '"floaT32"').encode())))
    for index, (name, (kind, data)) in enumerate(cases):
        folder = Path(shutil.copytree(model_folder, tmp_path / f"case-{index}"))
        (folder / name).write_bytes(data)
        scores = tmp_path / f"scores-{index}.csv"
        code = _evaluate(folder, score_folder, scores)
        captured = capsys.readouterr()
        if code == 0:
            assert scores.is_file()
        else:
            assert_clean_cli_error(
                code, captured.err, "hf-vae evaluate: error:", "Could not load a hf-vae model", str(folder)
            )
            assert not scores.exists(), (name, kind)
        shutil.rmtree(folder)


# ---------------------------------------------------------------------------------------------- hf-vae train FILE
@pytest.fixture(scope="module")
def arguments_files(tmp_path_factory) -> dict[str, bytes]:
    """A recipe from configs/, the same as YAML, and a run's training_args.json as `hf-vae train` writes it."""
    folder = tmp_path_factory.mktemp("arguments")
    recipe = json.loads((REPO / "configs" / "mnist-2d.json").read_text())
    save_arguments(parse_args(["--output_dir", "out", "--dataset_name", "some/folder"]), folder / "run.json")
    return {
        "recipe.json": (REPO / "configs" / "mnist-2d.json").read_bytes(),
        "recipe.yaml": yaml.safe_dump(recipe, sort_keys=False).encode(),
        "training_args.json": (folder / "run.json").read_bytes(),
    }


@pytest.mark.parametrize("name", ["recipe.json", "recipe.yaml", "training_args.json"])
def test_train_arguments_file_damaged_parses_or_exits_2_naming_the_file(
    arguments_files, tmp_path, monkeypatch, capsys, name
):


    """Only the parsing is under test: `train` itself is replaced by a stub that records what it was given."""
    received = []
    monkeypatch.setattr(training, "train", lambda *arguments: received.append(arguments))
    parsed = 0
    for index, (kind, data) in enumerate(damaged_copies(arguments_files[name], 60, seed=6)):
        path = tmp_path / f"case-{index}-{name}"
        path.write_bytes(data)
        try:
            code = train_main([str(path), "--output_dir", str(tmp_path / "out")])
        except SystemExit as exit_:  # argparse's own errors (usage + message), e.g. the file emptied a required option
            code = exit_.code
            assert code == 2 and "Traceback" not in capsys.readouterr().err
            continue
        captured = capsys.readouterr()
        if code == 0:
            parsed += 1
            model_args, data_args, args = received[-1]
            assert isinstance(args.num_train_epochs, int) and isinstance(args.seed, int), kind
            assert all(isinstance(size, int) for size in model_args.hidden_sizes or []), kind
        else:
            assert_clean_cli_error(code, captured.err, "hf-vae train: error:", str(path))
    assert not (tmp_path / "out").exists()
    assert parsed < 60


def test_arguments_file_values_are_typed_as_flags_are(tmp_path, monkeypatch, capsys):
    """YAML reads `1e-3` as text and a damaged file can give any type: values are converted as flags are, or refused
    with the option named."""
    path = tmp_path / "args.yaml"
    path.write_text("learning_rate: 1e-3\nhidden_sizes: [8, 4]\nuse_batch_norm: yes\noutput_dir: out\n")
    model_args, _, args = parse_args([str(path)])
    assert (args.learning_rate, model_args.hidden_sizes, model_args.use_batch_norm) == (1e-3, [8, 4], True)
    for text, message in (
        ("num_train_epochs: many\n", "num_train_epochs must be an integer, got 'many'"),
        ("hidden_sizes: 8\n", "hidden_sizes must be a list"),
        ("binarize: dyn\n", "binarize must be one of ['none', 'dynamic', 'static']"),
        ("output_dir: null\n", "output_dir cannot be null"),
        ("- a list\n", "must hold a mapping of option names to values, not a list"),
        ("seed: [1\n", "is not valid YAML"),
        ("seed: 99999999999\n", "--seed must be in [0, 2**32)"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match="args.yaml") as error:
            parse_args([str(path), "--output_dir", "out"])
        assert message in str(error.value)
    path.write_bytes(b"\xff\xfe seed: 1")
    assert train_main([str(path)]) == 2
    assert_clean_cli_error(2, capsys.readouterr().err, "hf-vae train: error:", "is not UTF-8 text", str(path))


# ---------------------------------------------------------------------------------------------- image folder
def _encoded(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_files() -> dict[str, bytes]:
    """One small image per format and mode a folder may hold."""
    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    return {
        "grey.png": _encoded(Image.fromarray(grey), "PNG"),
        "sixteen.png": _encoded(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"),
        "photo.jpg": _encoded(Image.fromarray(grey).convert("RGB"), "JPEG"),
        "palette.gif": _encoded(Image.fromarray(grey).convert("P"), "GIF"),
        "cmyk.tif": _encoded(Image.fromarray(grey).convert("CMYK"), "TIFF"),
        "alpha.webp": _encoded(Image.fromarray(grey).convert("RGBA"), "WEBP"),
        "bitmap.bmp": _encoded(Image.fromarray(grey).convert("RGB"), "BMP"),
    }


def test_image_folder_damaged_files_load_or_raise_evaluation_error_naming_the_file(image_files, tmp_path):
    for name, data in image_files.items():
        for index, (kind, damaged) in enumerate(damaged_copies(data, 25, seed=8)):
            folder = tmp_path / f"{name}-{index}"
            folder.mkdir()
            (folder / "a-good.png").write_bytes(image_files["grey.png"])
            (folder / name).write_bytes(damaged)
            try:
                paths, images = load_image_folder(folder, image_size=8, num_channels=1)
                assert images.shape == (2, 1, 8, 8) and images.dtype == torch.uint8, (name, kind)
            except EvaluationError as error:
                assert str(folder / name) in str(error) and "\n" not in str(error), (name, kind, error)
            shutil.rmtree(folder)


def test_image_folder_cli_refuses_a_damaged_image_and_writes_no_scores(model_folder, image_files, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a-good.png").write_bytes(image_files["grey.png"])
    (folder / "broken.png").write_bytes(image_files["grey.png"][:40])
    scores = tmp_path / "scores.csv"
    code = _evaluate(model_folder, folder, scores)
    assert_clean_cli_error(code, capsys.readouterr().err, "hf-vae evaluate: error:", str(folder / "broken.png"))
    assert not scores.exists()


def test_image_modes_convert_to_the_right_grey_levels(image_files, tmp_path):
    """16-bit greyscale is scaled (PIL's own conversion clips it to white); palette, RGBA, CMYK and the others
    convert through PIL."""
    for name, data in image_files.items():
        (tmp_path / name).write_bytes(data)
    paths, images = load_image_folder(tmp_path, image_size=12, num_channels=1)
    by_name = {path.name: image for path, image in zip(paths, images, strict=True)}
    reference = by_name["grey.png"].int()
    assert torch.equal(by_name["sixteen.png"].int(), reference)
    assert torch.equal(by_name["bitmap.bmp"].int(), reference)
    for name in ("palette.gif", "alpha.webp", "photo.jpg", "cmyk.tif"):
        assert (by_name[name].int() - reference).abs().float().mean() < 40, name
    (tmp_path / "wide.tif").write_bytes(_encoded(Image.fromarray(np.full((4, 4), 1000, np.int32)), "TIFF"))
    with pytest.raises(EvaluationError, match=r"wide\.tif.*pixels span \[1000, 1000\], outside 0\.\.255"):
        load_image_folder(tmp_path, image_size=12, num_channels=1)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is width x height 1-bit pixels: all PIL reads before deciding whether to decode it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [10_000, 30_000], ids=["over the limit", "over twice the limit"])
def test_decompression_bomb_sized_images_are_refused_before_decoding(model_folder, tmp_path, capsys, side):
    """A PNG that would decode to 100 or 900 megapixels: refused from its header, neither decoded (memory) nor a PIL
    DecompressionBombError traceback."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png_header(side, side))
    with pytest.raises(EvaluationError, match=r"bomb\.png.*(decompression|too large)"):
        load_image_folder(folder, image_size=8, num_channels=1)
    code = _evaluate(model_folder, folder, tmp_path / "scores.csv")
    assert_clean_cli_error(code, capsys.readouterr().err, "hf-vae evaluate: error:", "bomb.png")
    assert not (tmp_path / "scores.csv").exists()


# ---------------------------------------------------------------------------------------------- dataset folder
def _grey_images(count: int, rng: np.random.Generator) -> list[Image.Image]:
    return [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)) for _ in range(count)]


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory) -> Path:
    """A `save_to_disk` folder: train and test splits of 8x8 greyscale images with labels."""
    rng = np.random.default_rng(9)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    splits = {
        split: datasets.Dataset.from_dict(
            {"image": _grey_images(count, rng), "label": rng.integers(0, 3, count).tolist()}, features=features
        )
        for split, count in (("train", 12), ("test", 4))
    }
    folder = tmp_path_factory.mktemp("saved") / "digits"
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


@pytest.fixture(scope="module")
def image_dataset_folder(tmp_path_factory) -> Path:
    """A folder laid out like a Hub image dataset: train/<label>/*.png and test/<label>/*.png."""
    rng = np.random.default_rng(10)
    folder = tmp_path_factory.mktemp("imagefolder") / "digits"
    for split, count in (("train", 10), ("test", 4)):
        for index, image in enumerate(_grey_images(count, rng)):
            (folder / split / str(index % 2)).mkdir(parents=True, exist_ok=True)
            image.save(folder / split / str(index % 2) / f"{index}.png")
    return folder


def test_saved_dataset_damaged_files_load_or_raise_data_error(saved_dataset, tmp_path):
    files = sorted(path.relative_to(saved_dataset) for path in saved_dataset.rglob("*") if path.is_file())
    loaded = 0
    for index, name, kind, rng in damaged_files(files, len(files) * 15, seed=12):
        data = DAMAGE[kind]((saved_dataset / name).read_bytes(), rng)
        folder = Path(shutil.copytree(saved_dataset, tmp_path / f"case-{index}"))
        (folder / name).write_bytes(data)
        try:
            splits = load_splits(str(folder), cache_dir=str(tmp_path / "cache"))
            assert splits.train.images.dtype == torch.uint8, (name, kind)
            loaded += 1
        except DataError as error:
            assert str(error) and "\n" not in str(error), (name, kind, error)
        shutil.rmtree(folder)
    assert loaded < len(files) * 15


def test_image_dataset_folder_damaged_image_raises_data_error_naming_it(image_dataset_folder, tmp_path):
    images = sorted(image_dataset_folder.rglob("*.png"))
    for index, (kind, data) in enumerate(damaged_copies(images[0].read_bytes(), 15, seed=11)):
        folder = Path(shutil.copytree(image_dataset_folder, tmp_path / f"case-{index}"))
        damaged = folder / images[0].relative_to(image_dataset_folder)
        damaged.write_bytes(data)
        try:
            load_splits(str(folder), cache_dir=str(tmp_path / "cache"))
        except DataError as error:
            assert str(damaged) in str(error), (kind, error)
        shutil.rmtree(folder)


def test_train_on_a_damaged_dataset_exits_1_and_writes_nothing(saved_dataset, tmp_path, capsys):
    folder = Path(shutil.copytree(saved_dataset, tmp_path / "digits"))
    arrow = next((folder / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:300])
    out = tmp_path / "run"
    try:
        code = train_main(["--dataset_name", str(folder), "--output_dir", str(out), "--max_steps", "1"])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    assert_clean_cli_error(code, capsys.readouterr().err, "hf-vae train: error:", str(folder))
    assert not out.exists()


def test_a_cache_file_that_is_not_what_decoding_wrote_is_decoded_again(saved_dataset, tmp_path):
    """Valid safetensors of the wrong shape in the decoded-image cache (damaged, or written by something else)."""
    folder = Path(shutil.copytree(saved_dataset, tmp_path / "digits"))
    dataset = datasets.load_from_disk(str(folder))["train"]
    first = decode_split(dataset, "image", "label")
    (cache,) = (folder / "train").rglob("hf_vae_decoded/*.safetensors")
    save_file({"images": torch.zeros(3, 1, 2, 2, dtype=torch.uint8)}, str(cache))
    again = decode_split(dataset, "image", "label")
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)


# ---------------------------------------------------------------------------------------------- resuming
def _reset_accelerate() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _prepared_run(hidden_size: int = 8) -> tuple[Accelerator, torch.nn.Module, torch.optim.Optimizer]:
    """What the loop prepares before it resumes: the model, a fused AdamW and a registered LR schedule."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = VAEModel(VAEConfig.from_preset("mnist-2d", hidden_sizes=[hidden_size], latent_dim=2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    return accelerator, model, optimizer


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    pixels = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    model(pixels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.fixture(scope="module")
def checkpoint_folder(tmp_path_factory) -> Path:
    """A checkpoint as the training loop writes it (`save_checkpoint`), after two optimiser steps."""
    output_dir = tmp_path_factory.mktemp("run")
    try:
        accelerator, model, optimizer = _prepared_run()
        _step(model, optimizer)
        _step(model, optimizer)
        state = LoopState(global_step=2, step_in_epoch=2, epoch_sums=[1.0, 2.0, 3.0, 8.0], kl_weight=0.5)
        return save_checkpoint(accelerator, state, output_dir, None)
    finally:
        _reset_accelerate()


def test_load_checkpoint_of_a_damaged_checkpoint_restores_or_raises_checkpoint_error(checkpoint_folder, tmp_path):
    names = sorted(path.name for path in checkpoint_folder.iterdir())
    assert names == [
        "custom_checkpoint_0.pkl",
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "trainer_state.json",
    ]
    restored = 0
    for index, name, kind, rng in damaged_files(names, len(names) * 16, seed=13):
        data = DAMAGE[kind]((checkpoint_folder / name).read_bytes(), rng)
        folder = Path(shutil.copytree(checkpoint_folder, tmp_path / f"checkpoint-{index}"))
        (folder / name).write_bytes(data)
        before = digest(folder)
        try:
            accelerator, model, optimizer = _prepared_run()
            assert isinstance(load_checkpoint(accelerator, folder), LoopState)
            _step(model, optimizer)  # a restored run can take its next step
            restored += 1
        except CheckpointError as error:
            assert str(folder) in str(error) and "\n" not in str(error), (name, kind, error)
        finally:
            _reset_accelerate()
        assert digest(folder) == before  # resuming reads, never writes
        shutil.rmtree(folder)
    assert 0 < restored < len(names) * 16


def test_a_checkpoint_whose_pickle_runs_code_is_refused_before_accelerate_sees_it(checkpoint_folder, tmp_path):
    """accelerate restores registered objects (the LR schedule) with `torch.load(weights_only=False)`, which would
    run the payload: the checkpoint is refused first."""
    folder = Path(shutil.copytree(checkpoint_folder, tmp_path / "checkpoint-2"))
    marker = tmp_path / "code-ran"
    schedule = torch.load(folder / "custom_checkpoint_0.pkl", weights_only=True)
    torch.save({**schedule, "payload": _RunsCode(marker)}, folder / "custom_checkpoint_0.pkl")
    with pytest.raises(CheckpointError, match=r"Refused .*custom_checkpoint_0\.pkl.*(io|builtins)\.open"):
        check_checkpoint_folder(folder)
    try:
        accelerator, _, _ = _prepared_run()
        with pytest.raises(CheckpointError, match="Refused"):
            load_checkpoint(accelerator, folder)
    finally:
        _reset_accelerate()
    assert not marker.exists()


def test_a_checkpoint_for_another_model_is_a_checkpoint_error(checkpoint_folder):
    try:
        accelerator, _, _ = _prepared_run(hidden_size=16)
        with pytest.raises(CheckpointError, match="does not fit this run"):
            load_checkpoint(accelerator, checkpoint_folder)
    finally:
        _reset_accelerate()


TINY_RUN = [
    "--preset", "mnist-2d", "--hidden_sizes", "8", "--latent_dim", "2", "--per_device_train_batch_size", "4",
    "--max_steps", "2", "--checkpointing_steps", "1", "--skip_figures", "--disable_tqdm",
]  # fmt: skip


def _train(*arguments: str) -> int:
    try:
        return train_main(list(arguments))
    finally:
        _reset_accelerate()


@pytest.fixture(scope="module")
def finished_run(saved_dataset, tmp_path_factory) -> Path:
    """A real run of `hf-vae train` with a checkpoint after each of its two steps."""
    output_dir = tmp_path_factory.mktemp("train") / "run"
    assert _train("--dataset_name", str(saved_dataset), *TINY_RUN, "--output_dir", str(output_dir)) == 0
    return output_dir


def test_train_resume_from_a_damaged_checkpoint_resumes_or_exits_1(saved_dataset, finished_run, tmp_path, capsys):
    checkpoint = Path("checkpoints") / "checkpoint-1"
    names = sorted(path.name for path in (finished_run / checkpoint).iterdir())
    for index, name, kind, rng in damaged_files(names, len(names) * 4, seed=14):
        data = DAMAGE[kind]((finished_run / checkpoint / name).read_bytes(), rng)
        run = Path(shutil.copytree(finished_run, tmp_path / f"run-{index}"))
        (run / checkpoint / name).write_bytes(data)
        before = digest(run / checkpoint)
        arguments = ["--dataset_name", str(saved_dataset), *TINY_RUN, "--output_dir", str(run)]
        code = _train(*arguments, "--resume_from_checkpoint", str(run / checkpoint))
        captured = capsys.readouterr()
        if code != 0:
            assert code == 1, (name, kind, captured.err)
            assert_clean_cli_error(code, captured.err, "hf-vae train: error:", str(run / checkpoint))
            assert digest(run / checkpoint) == before
            # The loop rewrites training_args.json before it reads the checkpoint: every other result stays as it was.
            for result in ("config.json", "model.safetensors", "metrics.csv", "train_results.json"):
                assert (run / result).read_bytes() == (finished_run / result).read_bytes(), (name, kind, result)
        shutil.rmtree(run)
