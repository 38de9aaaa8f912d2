"""Evaluation: the IWAE estimate against numerical quadrature, bound ordering, active units, the JSON figures,
anomaly scores and the `hf-vae evaluate` command line."""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_vae import VAEConfig, VAEModel
from hf_vae.cli import main as cli_main
from hf_vae.data import DataError, ImageTensors, evaluation_images, to_pixel_values
from hf_vae.evaluation import (
    EvaluationError,
    active_units,
    anomaly_scores,
    evaluate_model,
    fit_anomaly_threshold,
    load_image_folder,
    load_split,
)


def main(argv: list[str]) -> int:
    """`hf-vae evaluate ...` in this process, as the command line runs it."""
    return cli_main(["evaluate", *argv])


def evaluation_pixel_values(images: torch.Tensor, binarize: str, seed: int = 0) -> torch.Tensor:
    """Float pixels of uint8 images as models are evaluated on them (`hf_vae.data.evaluation_images`)."""
    return to_pixel_values(evaluation_images(ImageTensors(images), binarize, seed).images)


IMAGE_SIZE = 6
PROMISED_KEYS = {
    "negative_elbo",
    "reconstruction",
    "kl",
    "iwae_nll",
    "iwae_samples",
    "bits_per_dim",
    "active_units",
    "per_class",
    "binarize",
    "seed",
    "split",
    "dataset",
    "num_images",
    "model",
    "latent_dim",
    "num_parameters",
    "reference_style_loss",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def blob_images(count: int, seed: int, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, size, size) of a Gaussian blob whose position is a hidden 2-D factor, and a label
    (the blob's quadrant): data a 2-D latent describes well."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 2, generator=generator) * (size - 1)
    rows, columns = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    distance = (columns - centres[:, 0, None, None]) ** 2 + (rows - centres[:, 1, None, None]) ** 2
    images = (255 * torch.exp(-distance / 3.0)).round().to(torch.uint8).unsqueeze(1)
    labels = (centres[:, 0] > (size - 1) / 2).long() + 2 * (centres[:, 1] > (size - 1) / 2).long()
    return images, labels


def train_tiny_model(config: VAEConfig, images: torch.Tensor, steps: int = 300, seed: int = 0, labels=None):
    """A few hundred Adam steps on binarised blobs, so the encoder is a fair proposal and the decoder not trivial."""
    torch.manual_seed(seed)
    model = VAEModel(config).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(images), (128,), generator=generator)
        pixel_values = torch.bernoulli(images[index].double() / 255, generator=generator)
        loss = model(pixel_values, None if labels is None else labels[index]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def blob_data() -> ImageTensors:
    images, labels = blob_images(2048, seed=0)
    return ImageTensors(images, labels)


@pytest.fixture(scope="module")
def model_2d(blob_data) -> VAEModel:
    config = VAEConfig(
        image_size=IMAGE_SIZE, latent_dim=2, hidden_sizes=[32], use_batch_norm=False, dropout=0.0, binarize="static"
    )
    return train_tiny_model(config, blob_data.images)


def quadrature_log_likelihood(model: VAEModel, pixel_values: torch.Tensor, points: int = 300, bound: float = 6.0):
    """log p(x) = log of the integral of p(x|z) p(z) over [-bound, bound]^2, midpoint rule on a points^2 grid."""
    cell = 2 * bound / points
    axis = -bound + (torch.arange(points, dtype=torch.float64) + 0.5) * cell
    latents = torch.cartesian_prod(axis, axis)
    log_prior = -0.5 * (latents.pow(2).sum(1) + 2 * math.log(2 * math.pi))
    with torch.no_grad():
        logits = model.decode(latents).logits
        return torch.stack(
            [
                torch.logsumexp(log_prior - model.reconstruction_nll(logits, image.expand_as(logits)), 0)
                + 2 * math.log(cell)
                for image in pixel_values
            ]
        )


# ---------------------------------------------------------------------------------------------- correctness
def test_iwae_agrees_with_quadrature(model_2d, blob_data):
    pixel_values = evaluation_pixel_values(blob_data.images[:5], "static", 0).double()
    exact = quadrature_log_likelihood(model_2d, pixel_values)
    estimate = model_2d.log_likelihood(pixel_values, num_samples=20000, generator=torch.Generator().manual_seed(0))
    elbo = -model_2d.negative_elbo(pixel_values, num_samples=2000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(estimate, exact, atol=0.5), (estimate, exact)
    assert (elbo <= exact + 0.05).all(), (elbo, exact)  # the ELBO is a lower bound (up to Monte Carlo noise)
    assert (exact - elbo).mean() > 0.01  # and not already tight, so the agreement above says something


def test_iwae_tightens_with_k_and_bounds_the_elbo(model_2d, blob_data):
    """With an over-confident encoder (posterior variances shrunk by e^2) the ELBO is loose, so each tenfold K
    tightens the bound by far more than the Monte Carlo noise of a mean over 1000 images."""
    model = copy.deepcopy(model_2d)
    with torch.no_grad():
        model.encoder.fc_logvar.bias -= 2.0
    pixel_values = evaluation_pixel_values(blob_data.images[:1000], "static", 0).double()
    generator = torch.Generator().manual_seed(0)
    nll = {
        k: float(-model.log_likelihood(pixel_values, num_samples=k, generator=generator).mean())
        for k in (1, 10, 100, 1000)
    }
    negative_elbo = float(model.negative_elbo(pixel_values, num_samples=100, generator=generator).mean())
    assert nll[1] > nll[10] > nll[100] > nll[1000], nll
    assert nll[1000] < negative_elbo
    assert abs(nll[1] - negative_elbo) < 0.3  # K=1 is a one-sample estimate of the negative ELBO


def test_active_units_counts_only_latents_the_model_uses(blob_data):
    config = VAEConfig(image_size=IMAGE_SIZE, latent_dim=6, hidden_sizes=[32], use_batch_norm=False, dropout=0.0)
    model = VAEModel(config).eval()
    ignored = [1, 4]
    with torch.no_grad():
        model.decoder.layers[0].weight[:, ignored] = 0.0
        model.encoder.fc_mu.weight[ignored] = 0.0
        model.encoder.fc_mu.bias[ignored] = 0.3
        used = [d for d in range(6) if d not in ignored]
        model.encoder.fc_mu.weight[used] *= 10.0
    results = evaluate_model(model, blob_data.select(torch.arange(200)), iwae_samples=5, elbo_samples=1)
    variances = torch.tensor(results["posterior_mean_variance"])
    assert results["active_units"] == 4
    assert (variances[ignored] == 0).all() and (variances[used] > 0.01).all()

    count, _ = active_units(torch.tensor([[0.0, 0.0], [0.5, 0.001], [-0.5, -0.001]]))
    assert count == 1


def test_evaluate_model_figures_and_repeatable_binarisation(model_2d, blob_data):
    data = blob_data.select(torch.arange(120))
    first = evaluate_model(model_2d, data, iwae_samples=50, seed=3, batch_size=32)
    second = evaluate_model(model_2d, data, iwae_samples=50, seed=3, batch_size=32)
    first.pop("seconds"), second.pop("seconds")
    assert first == second
    assert first["binarize"] == "static" and first["seed"] == 3 and first["num_images"] == 120
    assert sum(figures["count"] for figures in first["per_class"].values()) == 120
    assert first["iwae_nll"] <= first["negative_elbo"]
    assert first["negative_elbo"] == pytest.approx(first["reconstruction"] + first["kl"])
    assert first["bits_per_dim"] == pytest.approx(first["iwae_nll"] / (IMAGE_SIZE**2 * math.log(2)))
    per_class_mean = sum(f["negative_elbo"] * f["count"] for f in first["per_class"].values()) / 120
    assert per_class_mean == pytest.approx(first["negative_elbo"])
    # another binarisation seed is another test set
    other = evaluate_model(model_2d, data, iwae_samples=50, seed=4, batch_size=32)
    assert other["negative_elbo"] != first["negative_elbo"]


def test_evaluation_mid_training_leaves_the_model_as_it_was(blob_data):
    """BatchNorm and dropout: figures in eval mode, no running statistics updated, the training mode handed back."""
    config = VAEConfig(image_size=IMAGE_SIZE, latent_dim=2, hidden_sizes=[16], use_batch_norm=True, dropout=0.2)
    model = VAEModel(config).train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    data = blob_data.select(torch.arange(50))
    first = evaluate_model(model, data, iwae_samples=5, batch_size=7)
    assert model.training and all(module.training for module in model.modules())
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    second = evaluate_model(model.eval(), data, iwae_samples=5, batch_size=7)
    assert first["iwae_nll"] == second["iwae_nll"]


def test_reference_style_loss_is_the_tutorial_loss(blob_data):
    """Grey pixels, one sampled z: BCE-sum + KL per image, the number the tutorial reports as its validation loss."""
    config = VAEConfig(image_size=IMAGE_SIZE, latent_dim=2, hidden_sizes=[16], binarize="none")
    model = VAEModel(config).eval()
    data = blob_data.select(torch.arange(64))
    results = evaluate_model(model, data, iwae_samples=2, elbo_samples=200, batch_size=64)
    pixel_values = data.images.float() / 255
    with torch.no_grad():
        at_mean = model(pixel_values, sample_posterior=False)
    assert results["reference_style_loss_posterior_mean"] == pytest.approx(at_mean.loss.item(), rel=1e-5)
    assert results["reference_style_loss"] == pytest.approx(results["negative_elbo"], abs=1.0)


def test_colour_convolutional_model_bits_per_dim():
    """8-bit RGB under the discretised logistic: a true probability mass, so bits/dim = nll / (3 * H * W * ln 2)."""
    config = VAEConfig(
        architecture="conv",
        conv_channels=[4, 8],
        image_size=8,
        num_channels=3,
        latent_dim=3,
        likelihood="discretized_logistic",
    )
    images = (torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    results = evaluate_model(VAEModel(config).eval(), ImageTensors(images), iwae_samples=20, batch_size=8)
    assert "per_class" not in results and results["num_images"] == 16
    assert results["bits_per_dim"] == pytest.approx(results["iwae_nll"] / (3 * 64 * math.log(2)))
    assert 0 < results["iwae_nll"] <= results["negative_elbo"] + 1.0


# ---------------------------------------------------------------------------------------------- anomalies
def test_fit_anomaly_threshold():
    scores = torch.arange(1000, dtype=torch.float64)
    assert fit_anomaly_threshold(scores, 0.99) == pytest.approx(np.quantile(np.arange(1000), 0.99))
    assert fit_anomaly_threshold([1.0, 2.0, 3.0], 0.5) == 2.0
    with pytest.raises(EvaluationError, match="quantile"):
        fit_anomaly_threshold(scores, 1.0)
    with pytest.raises(EvaluationError, match="NaN"):
        fit_anomaly_threshold([1.0, float("nan")])
    with pytest.raises(EvaluationError, match="zero scores"):
        fit_anomaly_threshold([])


def test_anomaly_scores_flag_noise(model_2d, blob_data):
    normal = evaluation_pixel_values(blob_data.images[:500], "static")
    noise = torch.bernoulli(
        torch.full((20, 1, IMAGE_SIZE, IMAGE_SIZE), 0.5), generator=torch.Generator().manual_seed(1)
    )
    threshold = fit_anomaly_threshold(anomaly_scores(model_2d, normal[:400]), 0.99)
    held_out = anomaly_scores(model_2d, normal[400:])
    assert (held_out > threshold).float().mean() < 0.1
    assert (anomaly_scores(model_2d, noise) > threshold).all()
    iwae = anomaly_scores(model_2d, normal[:50], method="iwae", num_samples=200)
    assert iwae.mean() <= anomaly_scores(model_2d, normal[:50], num_samples=200).mean()


def test_conditional_model_scores_unlabelled_images_as_a_class_mixture(blob_data):
    config = VAEConfig(image_size=IMAGE_SIZE, latent_dim=2, hidden_sizes=[16], num_classes=4, dropout=0.0)
    model = VAEModel(config).eval()
    pixel_values = evaluation_pixel_values(blob_data.images[:8], "none")
    mixture = anomaly_scores(model, pixel_values, method="iwae", num_samples=100)
    per_class = torch.stack(
        [anomaly_scores(model, pixel_values, torch.full((8,), c), "iwae", 100, seed=c) for c in range(4)]
    )
    best = per_class.min(0).values
    assert (mixture >= best - 0.5).all() and (mixture <= best + math.log(4) + 0.5).all()
    results = evaluate_model(model, blob_data.select(torch.arange(40)), iwae_samples=5)
    assert sum(f["count"] for f in results["per_class"].values()) == 40


# ---------------------------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def saved(tmp_path_factory, model_2d):
    """A saved model and a `save_to_disk` dataset (Image + ClassLabel columns) of the same blobs."""
    root = tmp_path_factory.mktemp("evaluate")
    model_2d.float().save_pretrained(root / "model")
    model_2d.double()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    splits = {}
    for split, seed, count in (("train", 0, 300), ("test", 1, 80)):
        images, labels = blob_images(count, seed)
        rows = {"image": [Image.fromarray(image[0].numpy()) for image in images], "label": labels.tolist()}
        splits[split] = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict(splits).save_to_disk(str(root / "data"))
    return root


def test_cli_end_to_end(saved, tmp_path):
    output = tmp_path / "figures.json"
    scores = tmp_path / "scores.csv"
    command = [
        sys.executable,
        "-m",
        "hf_vae.cli",
        "evaluate",
        "--model",
        str(saved / "model"),
        "--dataset_name",
        str(saved / "data"),
        "--iwae_samples",
        "64",
        "--max_eval_samples",
        "50",
        "--output",
        str(output),
        "--anomaly_scores_output",
        str(scores),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "IWAE NLL (K=64)" in completed.stdout and "active units" in completed.stdout
    results = json.loads(output.read_text())
    assert PROMISED_KEYS <= set(results)
    assert results["num_images"] == 50 and results["split"] == "test" and results["iwae_samples"] == 64
    assert sum(f["count"] for f in results["per_class"].values()) == 50
    assert results["latent_dim"] == 2 and results["model"] == str(saved / "model")
    assert results["anomaly"]["num_images"] == 50 and "threshold" in results["anomaly"]
    with scores.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 50 and set(rows[0]) == {"index", "label", "score", "is_anomaly"}

    # the same command gives the same figures
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    repeat = json.loads(output.read_text())
    for key in ("negative_elbo", "iwae_nll", "reference_style_loss", "per_class"):
        assert repeat[key] == results[key]


def test_cli_scores_an_image_folder(saved, tmp_path, capsys):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    images, _ = blob_images(4, seed=7)
    for index, image in enumerate(images):
        Image.fromarray(image[0].numpy()).resize((24, 24)).save(folder / f"digit{index}.png")
    noise = np.random.default_rng(0).integers(0, 2, (IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8) * 255
    Image.fromarray(noise).convert("RGB").save(folder / "nested" / "noise.png")
    (folder / "notes.txt").write_text("not an image")
    scores = tmp_path / "folder_scores.csv"
    argv = ["--model", str(saved / "model"), "--dataset_name", str(saved / "data"), "--image_folder", str(folder)]
    assert main(argv + ["--anomaly_scores_output", str(scores)]) == 0
    with scores.open() as handle:
        rows = {row["file"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {f"digit{i}.png" for i in range(4)} | {"nested/noise.png"}
    assert rows["nested/noise.png"]["is_anomaly"] == "1"
    assert max(float(rows[f"digit{i}.png"]["score"]) for i in range(4)) < float(rows["nested/noise.png"]["score"])
    assert "above" in capsys.readouterr().out

    # a given threshold, no dataset needed
    assert main(argv[:2] + argv[4:] + ["--anomaly_scores_output", str(scores), "--threshold", "1e9"]) == 0
    with scores.open() as handle:
        assert {row["is_anomaly"] for row in csv.DictReader(handle)} == {"0"}


def test_load_image_folder_converts_and_resizes(tmp_path):
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "a.jpg")
    Image.new("L", (6, 6), 7).save(tmp_path / "b.png")
    paths, images = load_image_folder(tmp_path, image_size=8, num_channels=1)
    assert [path.name for path in paths] == ["a.jpg", "b.png"]
    assert images.shape == (2, 1, 8, 8) and images.dtype == torch.uint8 and int(images[1].max()) == 7
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="No image files"):
        load_image_folder(tmp_path / "empty", 8, 1)
    with pytest.raises(EvaluationError, match="not a folder"):
        load_image_folder(tmp_path / "missing", 8, 1)


def test_cli_errors_name_the_fix(saved, capsys):
    model = ["--model", str(saved / "model")]
    assert main(model) == 2  # a command line that cannot run: a usage error
    assert "--dataset_name" in capsys.readouterr().err
    assert main(model + ["--dataset_name", str(saved / "data"), "--split", "validation"]) == 1
    assert "no split 'validation'" in capsys.readouterr().err
    assert main(["--model", str(saved / "nowhere"), "--dataset_name", str(saved / "data")]) == 1
    assert f"No model folder {str(saved / 'nowhere')!r}: that path does not exist" in capsys.readouterr().err


def test_conditional_model_needs_labels(tmp_path):
    config = VAEConfig(image_size=IMAGE_SIZE, latent_dim=2, hidden_sizes=[8], num_classes=4)
    VAEModel(config).save_pretrained(tmp_path / "model")
    images, _ = blob_images(10, seed=0)
    rows = {"image": [Image.fromarray(image[0].numpy()) for image in images]}
    datasets.Dataset.from_dict(rows, features=datasets.Features({"image": datasets.Image()})).save_to_disk(
        str(tmp_path / "data")
    )
    with pytest.raises(DataError, match="conditional"):
        load_split(str(tmp_path / "data"), config, split="train")


def test_cli_evaluates_a_hub_model_at_a_revision(saved, tmp_path, hub_server, hub_token, hub_repo_id, hub_env):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub_server, token=hub_token)
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=str(saved / "model"))
    api.create_branch(hub_repo_id, branch="v1")
    output = tmp_path / "hub.json"
    command = [sys.executable, "-m", "hf_vae.cli", "evaluate", "--model", hub_repo_id, "--revision", "v1"]
    command += ["--dataset_name", str(saved / "data"), "--iwae_samples", "8", "--max_eval_samples", "10"]
    completed = subprocess.run(
        command + ["--output", str(output)], capture_output=True, text=True, env=hub_env, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(output.read_text())
    assert results["model"] == hub_repo_id and results["revision"] == "v1" and results["num_images"] == 10

    missing = subprocess.run(
        command[:-4] + ["--revision", "no-such-branch"], capture_output=True, text=True, env=hub_env, timeout=300
    )
    assert missing.returncode == 1 and "has no revision 'no-such-branch': check --revision" in missing.stderr
