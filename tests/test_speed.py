"""Speed and scale options of the training loop: `--torch_compile`, and data read from a memory-mapped cache.

Compiling runs with the `aot_eager` backend (AOTAutograd traces forward and backward, no C++ is compiled), so the
test checks the plumbing in seconds; the inductor figures are in `scripts/benchmark_presets.py --torch_compile`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState, GradientState
from safetensors import safe_open
from test_training import TINY, make_dataset

from hf_vae import VAEModel
from hf_vae.cli import main as cli_main

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
