"""Smoke test of the installed wheel, run by `.ci/run` from outside the repository in a venv that holds the wheel and
its dependencies only: what a user gets from `pip install hf-vae` must import, answer `hf-vae --help`, train-free
round-trip a model through save_pretrained / from_pretrained, generate, and render its model card (the template
ships inside the package)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import hf_vae
from hf_vae import VAEConfig, VAEModel
from hf_vae.model_card import build_model_card

package_dir = Path(hf_vae.__file__).resolve().parent
assert "site-packages" in package_dir.parts, f"hf_vae was imported from {package_dir}, not from the installed wheel"

help_text = subprocess.run(["hf-vae", "--help"], check=True, capture_output=True, text=True).stdout
for command in ("train", "evaluate", "visualize", "push", "convert", "demo"):
    assert command in help_text, f"`hf-vae --help` does not list {command!r}:\n{help_text}"

torch.manual_seed(0)
model = VAEModel(VAEConfig.from_preset("mnist-2d", hidden_sizes=[16], dropout=0.0)).eval()
with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    loaded = VAEModel.from_pretrained(folder).eval()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), f"{name} changed in the save/load round trip"
    images = loaded.sample(4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 28, 28) and torch.isfinite(images).all()
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor).__name__ == "VAEImageProcessor", type(processor)
    assert processor.postprocess(images)[0].size == (28, 28)
    card = str(build_model_card(folder, "someone/smoke-vae"))
    assert card.startswith("---\n") and "library_name: hf-vae" in card and "someone/smoke-vae" in card, card[:500]
print(f"wheel smoke test passed: hf_vae {hf_vae.__version__} from {package_dir}")
sys.exit(0)
