"""Speed and scale options of training: `--torch_compile`, and splits read from their cache file batch by batch.

Compiling runs with the `aot_eager` backend (AOTAutograd traces forward and backward, no C++ is compiled), so the
test checks the plumbing in seconds; the inductor figures are in `scripts/benchmark_presets.py --torch_compile`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors import safe_open
from test_training import REPO, TINY, make_dataset, subprocess_env

from hf_vae import VAEConfig, VAEModel
from hf_vae.cli import main as cli_main
from hf_vae.data import IN_MEMORY_ENV, load_splits
from hf_vae.denormals import denormals_are_flushed, denormals_flushed
from hf_vae.training_setup import in_training_layout

pytestmark = pytest.mark.usefixtures("one_thread")


def train_here(*args: str) -> int:
    try:
        return cli_main(["train", *args])
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "digits")


def test_torch_compile_trains_and_saves_the_uncompiled_weights(digits, tmp_path):
    output_dir = tmp_path / "compiled"
    code = train_here(
        "--dataset_name", str(digits), *TINY, "--num_train_epochs", "1", "--output_dir", str(output_dir),
        "--torch_compile_backend", "aot_eager", "--checkpointing_steps", "no",
    )  # fmt: skip
    assert code == 0
    results = json.loads((output_dir / "train_results.json").read_text())
    assert results["torch_compile"] is True and results["first_step_seconds"] > 0
    arguments = json.loads((output_dir / "training_args.json").read_text())
    assert arguments["torch_compile"] is True and arguments["torch_compile_backend"] == "aot_eager"
    with safe_open(str(output_dir / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
    assert names and not [name for name in names if "_orig_mod" in name]
    model = VAEModel.from_pretrained(output_dir)  # strict: every weight name matches the uncompiled module's
    assert set(model.state_dict()) == set(names)


def test_denormals_are_flushed_for_the_run_and_the_callers_setting_restored(digits, tmp_path):
    subnormal = torch.tensor([1e-39])
    assert subnormal.item() != 0 and not denormals_are_flushed()
    with denormals_flushed(True):
        assert (subnormal * 1.0).item() == 0.0  # computed as zero: no slow microcode path
    assert (subnormal * 1.0).item() != 0.0
    with denormals_flushed(False):
        assert not denormals_are_flushed()
    code = train_here(
        "--dataset_name", str(digits), *TINY, "--max_steps", "2", "--output_dir", str(tmp_path / "run"),
        "--checkpointing_steps", "no", "--skip_figures",
    )  # fmt: skip
    assert code == 0 and not denormals_are_flushed()  # an in-process run leaves the caller's arithmetic alone


# ---------------------------------------------------------------------------------------------- data larger than memory
SIZE, TRAIN_ROWS, SMALL_ROWS = 128, 25_600, 64  # 16 KiB a decoded image: the train split decodes to 419 MB
MEMORY_LIMIT = 96 * 2**20  # what training may add to the resident memory: a quarter of the data (the
# libraries' own transient allocations in a short run took 50-60 MB here)

CHILD = """
import json, re, sys
from hf_vae.cli import main

def status(name):
    return int(re.search(name + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

data, out = sys.argv[1], sys.argv[2]
common = ["train", "--dataset_name", data, "--preset", "mnist-2d", "--hidden_sizes", "32", "--latent_dim", "2",
          "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "64", "--skip_figures",
          "--disable_tqdm", "--checkpointing_steps", "no"]
# A first short run loads every library and kernel the second one uses; then the peak is reset (clear_refs 5), so
# that the second run's peak counts what training on the data adds.
assert main([*common, "--max_steps", "1", "--output_dir", out + "/warm-up"]) == 0
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
assert main([*common, "--max_steps", "6", "--output_dir", out + "/run"]) == 0
print(json.dumps({"before": before, "peak": status("VmHWM")}))
"""


def _pgm_dataset(rows: int, seed: int) -> datasets.Dataset:
    """Greyscale noise images stored as uncompressed PGM bytes (fast to write and decode), each a distinct shift."""
    base = np.random.default_rng(seed).integers(0, 256, SIZE * SIZE, dtype=np.uint8)
    header = f"P5\n{SIZE} {SIZE}\n255\n".encode()
    images = [{"bytes": header + np.roll(base, index).tobytes(), "path": None} for index in range(rows)]
    return datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))


def test_a_split_larger_than_the_memory_limit_trains_in_bounded_memory(tmp_path):
    folder = tmp_path / "big"
    splits = {"train": _pgm_dataset(TRAIN_ROWS, 0), "validation": _pgm_dataset(SMALL_ROWS, 1)}
    splits["test"] = _pgm_dataset(SMALL_ROWS, 2)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    del splits
    # Decoded once, here (so that the child's figures are not those of reading the Arrow files, which are memory-mapped
    # and whose pages count in the resident memory as they are read), into the cache file the training run reads.
    decoded = load_splits(str(folder))
    assert decoded.train.shape == (TRAIN_ROWS, 1, SIZE, SIZE)
    data_bytes = TRAIN_ROWS * SIZE * SIZE
    assert data_bytes > 4 * MEMORY_LIMIT
    del decoded

    env = subprocess_env(HF_DATASETS_CACHE=str(tmp_path / "cache"), **{IN_MEMORY_ENV: str(MEMORY_LIMIT)})
    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder), str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(completed.stdout.strip().splitlines()[-1])
    added = figures["peak"] - figures["before"]
    assert added < MEMORY_LIMIT, f"training added {added / 2**20:.0f} MiB to the resident memory"
    results = json.loads((tmp_path / "out" / "run" / "train_results.json").read_text())
    assert results["global_step"] == 6 and results["validation_images"] == SMALL_ROWS


# ---------------------------------------------------------------------------------------------- channels-last
def test_conv_models_train_channels_last_with_the_same_values_and_weight_names(tmp_path):
    config = VAEConfig(architecture="conv", conv_channels=[4, 8], latent_dim=2)
    model = VAEModel(config).eval()
    pixels = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    expected = model.reconstruct(pixels)
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    nhwc = in_training_layout(model, torch.device("cpu"))
    assert nhwc.encoder.downsample[1].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc.reconstruct(pixels), expected)
    nhwc.save_pretrained(tmp_path)
    loaded = VAEModel.from_pretrained(tmp_path).eval()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, weights[name]) and tensor.is_contiguous(), name
    mlp = VAEModel(VAEConfig(hidden_sizes=[8], latent_dim=2))
    assert in_training_layout(mlp, torch.device("cpu")) is mlp
