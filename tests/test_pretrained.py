"""The committed reference models under `pretrained/`: each loads from the clone, is what `hf-vae push` uploads, was
trained by its recipe in `configs/`, still gives the figures its `evaluation.json` reports, and the README's results
table is the one those files produce."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hf_vae.data import ImageTensors, evaluation_images, to_pixel_values
from hf_vae.estimators import chunked_log_weights
from hf_vae.evaluation import load_split
from hf_vae.families import FAMILIES, load_pretrained, remote_code_files
from hf_vae.hub import collect_files

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import results_table  # noqa: E402

MODEL_DIRS = results_table.vae_model_dirs(REPO_ROOT / "pretrained")  # the VAEs, not the feature network


def evaluation_pixel_values(images: torch.Tensor, binarize: str, seed: int = 0) -> torch.Tensor:
    """Float pixels of uint8 images as models are evaluated on them (`hf_vae.data.evaluation_images`)."""
    return to_pixel_values(evaluation_images(ImageTensors(images), binarize, seed).images)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=MODEL_DIRS, ids=lambda path: path.name)
def model_dir(request) -> Path:
    return request.param


def saved_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def test_every_recipe_has_a_reference_model():
    recipes = {path.stem for path in (REPO_ROOT / "configs").glob("*.json") if not path.stem.endswith("-prior")}
    assert recipes and recipes == {path.name for path in MODEL_DIRS}


def test_folder_holds_weights_config_card_and_results_and_no_code(model_dir):
    """What the README promises each folder holds; the code `trust_remote_code` needs is not copied in (a push adds
    the package's own modules), so the package is the only copy anyone edits."""
    files = {path.name for path in model_dir.iterdir()}
    expected = {
        "config.json", "preprocessor_config.json", "model.safetensors", "README.md", "evaluation.json",
        "eval_results.json", "train_results.json",
        "training_args.json", "metrics.csv", "build.json", "samples.png", "reconstructions.png", "latent_space.png",
        "interpolation.png", "training_curves.png",
    }  # fmt: skip
    config = saved_config(model_dir)
    if config.get("latent_dim") == 2:
        expected.add("latent_manifold.png")
    if config["model_type"] == "hf_hvae":
        expected.add("layers.png")
    expected |= {name for name in ("gmm_sampler.safetensors", "sample_metrics.json") if (model_dir / name).is_file()}
    uploaded = expected - {"README.md"}
    if (model_dir / "prior").is_dir():  # a VQ-VAE's prior over its codes (hf-vae train-prior)
        expected |= {"prior", "prior_metrics.csv", "prior_results.json"}
        prior_files = {"prior/config.json", "prior/generation_config.json", "prior/model.safetensors"}
        uploaded |= {"prior_metrics.csv", "prior_results.json", *prior_files}
    assert files == expected
    assert {path.as_posix() for path in collect_files(model_dir)} == uploaded


def test_committed_card_states_the_committed_results(model_dir):
    """README.md is the generated card: its metadata and text carry the folder's own figures."""
    text = (model_dir / "README.md").read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    assert metadata["library_name"] == "hf-vae" and metadata["license"] == "apache-2.0"
    (result,) = metadata["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test" and result["dataset"]["name"] == "mnist"
    metrics = {metric["type"]: metric["value"] for metric in result["metrics"]}
    assert metrics["iwae_nll"] == pytest.approx(evaluation["iwae_nll"], abs=1e-4)
    assert metrics["negative_elbo"] == pytest.approx(evaluation["negative_elbo"], abs=1e-4)
    assert f"{evaluation['num_parameters']:,} parameters" in text
    model_type = json.loads((model_dir / "config.json").read_text())["model_type"]
    modeling = FAMILIES[model_type][2].rsplit(".", 1)[1] + ".py"
    assert modeling in remote_code_files(model_type)
    assert "trust_remote_code=True" in text and f"`{modeling}`" in text
    for picture in ("samples.png", "reconstructions.png", "training_curves.png"):
        assert f"({picture})" in text


def test_model_was_trained_by_its_recipe(model_dir):
    recipe = json.loads((REPO_ROOT / "configs" / f"{model_dir.name}.json").read_text())
    training_args = json.loads((model_dir / "training_args.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    for name, value in recipe.items():
        if name in ("dataset_name", "output_dir"):  # the build passes these on the command line
            continue
        if name in config and name != "preset":
            assert config[name] == value, name
        else:
            assert training_args[name] == value, name
    build = json.loads((model_dir / "build.json").read_text())
    assert build["commands"][0].startswith(f"hf-vae train configs/{model_dir.name}.json ")


def test_loads_with_from_pretrained_and_generates(model_dir):
    model = load_pretrained(model_dir)
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    assert model.num_parameters() == evaluation["num_parameters"]
    labels = torch.arange(4) if model.config.num_classes is not None else None  # a conditional model asks for digits
    images = model.sample(4, generator=torch.Generator().manual_seed(0), labels=labels)
    assert images.shape == (4, 1, 28, 28) and 0 <= images.min() and images.max() <= 1 and images.std() > 0.05


def test_sample_quality_is_stated_in_the_card_and_the_gmm_sampler_loads(model_dir):
    """Where sample quality was measured, the card carries its figures, and the Gaussian mixture it measured loads
    with the model."""
    if not (model_dir / "sample_metrics.json").is_file():
        pytest.skip("no sample quality measured for this model")
    report = json.loads((model_dir / "sample_metrics.json").read_text())
    text = (model_dir / "README.md").read_text()
    assert report["num_samples"] == 10_000
    assert report["command"].startswith(f"hf-vae evaluate pretrained/{model_dir.name} ")
    model = load_pretrained(model_dir)
    assert tuple(report["samplers"]) == model.samplers
    for sampler, figures in report["samplers"].items():
        assert f"| `{sampler}` | {figures['frechet_distance']:.2f} |" in text
        if "class_fidelity" in figures:
            assert f"{figures['class_fidelity']:.2%}" in text


def test_weights_reproduce_the_committed_negative_elbo(model_dir, mnist_dir):
    """A fresh 10-sample negative ELBO of the whole test split agrees with `evaluation.json` to Monte Carlo noise
    (same images, other posterior draws: well under 0.2 nats), so the committed figures belong to these weights. A
    family with its own evaluation figures (the VQ-VAE's deterministic posterior) reproduces its reconstruction NLL
    and codebook usage over the split instead (its prior's part costs a pass of the prior per class)."""
    model = load_pretrained(model_dir).eval()
    evaluation = json.loads((model_dir / "evaluation.json").read_text())
    data = load_split(str(mnist_dir), model.config, "test")
    pixels = evaluation_pixel_values(data.images, model.config.binarize, evaluation["seed"])
    if hasattr(model, "evaluation_figures"):
        model.set_code_prior(None)
        parts = [model.evaluation_figures(batch) for batch in pixels.split(1000)]
        figures = {name: torch.cat([part[name] for part in parts]) for name in ("reconstruction_nll", "code_counts")}
        summary = model.evaluation_summary({**figures, **{name: figures["reconstruction_nll"] for name in (
            "prior_nll", "likelihood_bound", "commitment_loss")}})  # fmt: skip
        assert summary["reconstruction_nll"] == pytest.approx(evaluation["reconstruction_nll"], abs=1e-3)
        assert summary["codebook_usage"] == evaluation["codebook_usage"]
        return
    generator = torch.Generator().manual_seed(123)
    labels = data.labels if model.config.num_classes is not None else None
    draws = -torch.cat(
        [
            chunked_log_weights(
                model, batch, 10, generator, None if labels is None else labels[i : i + 1000], for_elbo=True
            ).double()
            for i, batch in zip(range(0, len(pixels), 1000), pixels.split(1000), strict=True)
        ],
        dim=1,
    )  # (10 draws, images)
    negative_elbo = draws.mean(0)
    assert len(negative_elbo) == evaluation["num_images"] == 10_000
    # Other draws: the two means differ by Monte Carlo noise, whose size the fresh draws measure (the spread of each
    # image's 10 draws). For most models it is a few hundredths of a nat and the bound is 0.2; an IWAE-trained model
    # with a broad posterior (mnist-hvae-vamp, mnist-hvae-vamp-bf16) has heavy-tailed draws, tenths of a nat or more.
    # The exact check below ties every model's figures to its weights whatever its noise.
    monte_carlo_error = (draws.var(0) / draws.shape[0]).sum().sqrt().item() / len(negative_elbo)
    tolerance = max(0.2, 4 * math.sqrt(2) * monte_carlo_error)
    assert abs(negative_elbo.mean().item() - evaluation["negative_elbo"]) < tolerance, monte_carlo_error
    with torch.no_grad():  # no draws at all: the loss at the posterior means is reproduced exactly
        at_mode = torch.cat(
            [
                model(batch, None if labels is None else labels[i : i + 1000], sample_posterior=False,
                      reduction="none").loss
                for i, batch in zip(range(0, len(pixels), 1000), pixels.split(1000), strict=True)
            ]
        )  # fmt: skip
    assert at_mode.double().mean().item() == pytest.approx(evaluation["reference_style_loss_posterior_mean"], abs=1e-3)


def test_one_command_evaluates_a_model_from_the_clone(tmp_path, mnist_dir):
    model_dir = MODEL_DIRS[0].relative_to(REPO_ROOT)
    output = tmp_path / "evaluation.json"
    command = [
        sys.executable, "-m", "hf_vae.cli", "evaluate", "--model", str(model_dir), "--dataset_name", str(mnist_dir),
        "--iwae_samples", "20", "--max_eval_samples", "200", "--output", str(output),
    ]
    subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True, text=True)
    results = json.loads(output.read_text())
    assert results["num_images"] == 200 and results["iwae_nll"] <= results["negative_elbo"]


def test_readme_results_table_is_generated_from_the_committed_files():
    assert results_table.main(["--check", str(REPO_ROOT / "README.md")]) == 0
    table = results_table.results_table()
    for model_dir in MODEL_DIRS:
        evaluation = json.loads((model_dir / "evaluation.json").read_text())
        if "likelihood_bound" in evaluation:
            assert f"{evaluation['likelihood_bound']:.2f} (bound)" in table
        else:
            assert f"{evaluation['iwae_nll']:.2f} ({evaluation['iwae_samples']})" in table
