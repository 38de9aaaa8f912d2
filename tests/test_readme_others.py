"""The README's other commands, in order, in a fresh folder: the quick start, streaming, the committed models, the
VQ-VAE and the conditional model (`test_readme.py` says how the README is followed and runs the first model's chain).
"""

from __future__ import annotations

import pytest
from test_readme import other_steps, run_readme_steps

pytestmark = pytest.mark.slow


def test_readme_other_commands_run_in_order(mnist_dir, hub_env, hub_repo_id, tmp_path):
    commands = " ".join(run_readme_steps(other_steps(), mnist_dir, hub_env, hub_repo_id, tmp_path))
    for promised in ("VAEConfig.from_preset", "--streaming", "pretrained/mnist", "hf-vae train-prior", "--num_classes"):
        assert promised in commands
    assert (tmp_path / "vae-stream" / "model.safetensors").is_file()
    assert (tmp_path / "vqvae-mnist" / "prior").is_dir() and (tmp_path / "mnist-codes").is_dir()
