"""The shared tester every model family runs through, in the spirit of transformers' `ModelTesterMixin`: the contract's
shapes, a bit-exact save/load round trip, strict loading of damaged files, `trust_remote_code` from a process that
cannot import hf_vae, and one short run of `hf-vae train`, `evaluate` and `visualize` on a tiny model.

A family's test class subclasses `FamilyTester` and sets `config` (a tiny config of the family) and
`train_arguments` (the `hf-vae train` options that build the same kind of model).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from test_training import make_dataset

from hf_vae.cli import main as cli_main
from hf_vae.families import load_pretrained, model_class, remote_code_files

BATCH = 5


def evaluate_main(argv: list[str]) -> int:
    """`hf-vae evaluate ...` in this process, as the command line runs it."""
    return cli_main(["evaluate", *argv])


def train_main(argv: list[str]) -> int:
    """`hf-vae train ...` in this process, as the command line runs it."""
    return cli_main(["train", *argv])


def visualize_main(argv: list[str]) -> int:
    """`hf-vae visualize ...` in this process, as the command line runs it."""
    return cli_main(["visualize", *argv])


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("family-data") / "digits")


class FamilyTester:
    config: ClassVar[Any]
    train_arguments: ClassVar[list[str]]

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return model_class(self.config.model_type)(self.config)

    def pixels(self, seed: int = 1) -> torch.Tensor:
        config = self.config
        shape = (BATCH, config.num_channels, config.image_size, config.image_size)
        return (torch.rand(shape, generator=seeded(seed)) < 0.3).float()

    def labels(self) -> torch.Tensor | None:
        return None if self.config.num_classes is None else torch.arange(BATCH) % self.config.num_classes

    # ------------------------------------------------------------------ the contract
    def test_contract_shapes(self):
        model = self.build()
        pixels, labels = self.pixels(), self.labels()
        image_shape = tuple(pixels.shape)
        outputs = model(pixels, labels, generator=seeded(2))
        assert outputs.loss.dim() == 0 and torch.isfinite(outputs.loss)
        assert outputs.loss_terms and all(value.dim() == 0 for value in outputs.loss_terms.values())
        per_image = model(pixels, labels, generator=seeded(2), reduction="none")
        assert per_image.loss.shape == (BATCH,)
        assert all(value.shape == (BATCH,) for value in per_image.loss_terms.values())
        assert set(per_image.loss_terms) == set(outputs.loss_terms)
        posterior = model.encode(pixels, labels)
        decoded = model.decode(posterior.latent_dist.mode(), labels)
        assert tuple(decoded.images.shape) == image_shape
        assert tuple(model.reconstruct(pixels, labels).shape) == image_shape
        assert tuple(model.sample(BATCH, generator=seeded(3), labels=self.labels()).shape) == image_shape
        log_weights = model.log_weights(pixels, 4, seeded(4), labels)
        assert log_weights.shape == (4, BATCH) and torch.isfinite(log_weights).all()
        assert (model.log_likelihood(pixels, labels, 4, seeded(4)) >= log_weights.double().mean(0) - 1e-6).all()

    def test_one_training_step_reaches_every_weight(self):
        model = self.build().train()
        model(self.pixels(), self.labels(), generator=seeded(5)).loss.backward()
        missing = [name for name, parameter in model.named_parameters() if parameter.grad is None]
        assert not missing

    # ------------------------------------------------------------------ files
    def test_save_load_round_trip_is_bit_exact(self, tmp_path):
        model = self.build().eval()
        model.save_pretrained(tmp_path)
        assert {path.name for path in tmp_path.glob("*.py")} == set(remote_code_files(self.config.model_type))
        loaded = load_pretrained(tmp_path).eval()
        assert type(loaded) is type(model)
        expected, actual = model.state_dict(), loaded.state_dict()
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[name], actual[name]) for name in expected)
        pixels = self.pixels()
        torch.testing.assert_close(loaded.reconstruct(pixels, self.labels()), model.reconstruct(pixels, self.labels()))

    def test_damaged_files_are_refused(self, tmp_path):
        model = self.build()
        model.save_pretrained(tmp_path)
        weights = (tmp_path / "model.safetensors").read_bytes()
        (tmp_path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
        with pytest.raises(OSError, match="not a valid safetensors file"):
            load_pretrained(tmp_path)
        state = {name: tensor for name, tensor in model.state_dict().items()}
        dropped = sorted(state)[0]
        del state[dropped]
        from safetensors.torch import save_file

        save_file({name: tensor.contiguous() for name, tensor in state.items()}, tmp_path / "model.safetensors")
        with pytest.raises(RuntimeError, match=f"{dropped}: missing from the checkpoint"):
            load_pretrained(tmp_path)

    def test_trust_remote_code_without_hf_vae(self, tmp_path):
        model = self.build().eval()
        model.save_pretrained(tmp_path / "model")
        script = textwrap.dedent(
            """
            import sys
            sys.modules["hf_vae"] = None  # as for a Hub user who never installed hf-vae
            import torch
            from safetensors.torch import save_file
            from transformers import AutoModel

            model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
            assert not type(model).__module__.startswith("hf_vae"), type(model).__module__
            save_file(model.state_dict(), sys.argv[2])
            labels = {"labels": 0} if model.config.num_classes else {}
            print(tuple(model.sample(3, generator=torch.Generator().manual_seed(0), **labels).shape))
            """
        )
        completed = subprocess.run(
            [sys.executable, "-I", "-c", script, str(tmp_path / "model"), str(tmp_path / "remote.safetensors")],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert completed.returncode == 0, completed.stderr
        remote = load_file(tmp_path / "remote.safetensors")
        assert all(torch.equal(remote[name], tensor) for name, tensor in model.state_dict().items())

    # ------------------------------------------------------------------ the commands
    def test_train_evaluate_visualize(self, tiny_dataset, tmp_path):
        output_dir = tmp_path / "run"
        try:
            status = train_main(
                ["--dataset_name", str(tiny_dataset), *self.train_arguments, "--max_steps", "3",
                 "--per_device_train_batch_size", "16", "--skip_figures", "--disable_tqdm",
                 "--output_dir", str(output_dir)]  # fmt: skip
            )
        finally:
            AcceleratorState._reset_state(reset_partial_state=True)
        assert status == 0
        model = load_pretrained(output_dir)
        assert model.config.model_type == self.config.model_type
        rows = (output_dir / "metrics.csv").read_text().splitlines()
        columns = rows[0].split(",")
        assert [f"train_{name}" for name in ("loss", *model(self.pixels(), self.labels()).loss_terms)] == [
            column for column in columns if column.startswith("train_")
        ]
        evaluation = output_dir / "evaluation.json"
        assert evaluate_main(
            ["--model", str(output_dir), "--dataset_name", str(tiny_dataset), "--iwae_samples", "5",
             "--elbo_samples", "2", "--max_eval_samples", "12", "--output", str(evaluation)]  # fmt: skip
        ) == 0
        results = json.loads(evaluation.read_text())
        assert results["num_images"] == 12
        assert all(math.isfinite(results[name]) for name in ("iwae_nll", "negative_elbo", "bits_per_dim"))
        pictures = tmp_path / "pictures"
        assert visualize_main(
            ["--model", str(output_dir), "--dataset_name", str(tiny_dataset), "--output_dir", str(pictures),
             "--max_samples", "20"]  # fmt: skip
        ) == 0
        assert {"samples.png", "reconstructions.png", "latent_space.png"} <= {path.name for path in pictures.iterdir()}
