"""Sample quality: the Fréchet distance against closed forms (and scipy's matrix square root), precision and recall on
toy sets, class fidelity, the feature network's save / load round trip, and `hf-vae evaluate --sample_metrics` end to
end on a tiny model with a tiny (untrained) feature network."""

from __future__ import annotations

import json

import pytest
import torch
from test_latent_samplers import tiny_data, tiny_dataset_dir, tiny_model

from hf_vae.cli import main as cli
from hf_vae.feature_network import FeatureNetwork, FeatureNetworkConfig, load_feature_network
from hf_vae.latent_samplers import fit_gmm_sampler
from hf_vae.sample_metrics import (
    balanced_labels,
    class_fidelity,
    frechet_distance,
    frechet_distance_of_features,
    gaussian_statistics,
    precision_recall,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_covariance(dim: int, seed: int) -> torch.Tensor:
    factor = torch.randn(dim, dim, generator=seeded(seed), dtype=torch.float64)
    return factor @ factor.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_frechet_distance_of_identical_gaussians_is_zero():
    mean, covariance = torch.randn(6, generator=seeded(0)), random_covariance(6, 1)
    assert frechet_distance(mean, covariance, mean, covariance) == pytest.approx(0, abs=1e-8)
    features = torch.randn(500, 4, generator=seeded(2))
    assert frechet_distance_of_features(features, features) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_matches_closed_forms():
    # Diagonal covariances: ||m1 - m2||^2 + sum (s1 - s2)^2 with s the standard deviations.
    mean1, mean2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 0.0])
    std1, std2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    expected = (mean1 - mean2).square().sum() + (std1 - std2).square().sum()
    assert frechet_distance(mean1, std1.square().diag(), mean2, std2.square().diag()) == pytest.approx(expected.item())
    # One Gaussian a scaled copy of the other: C2 = a^2 C1 gives (1 - a)^2 tr(C1).
    covariance = random_covariance(5, 3)
    assert frechet_distance(mean1[:1].expand(5), covariance, mean1[:1].expand(5), 4 * covariance) == pytest.approx(
        covariance.trace().item()
    )


def test_frechet_distance_agrees_with_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    cov1, cov2 = random_covariance(8, 4), random_covariance(8, 5)
    mean1, mean2 = torch.randn(8, generator=seeded(6)), torch.randn(8, generator=seeded(7))
    root = linalg.sqrtm(cov1.numpy() @ cov2.numpy()).real
    expected = float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * root.trace())
    assert frechet_distance(mean1, cov1, mean2, cov2) == pytest.approx(expected, rel=1e-6)


def test_gaussian_statistics_are_the_sample_mean_and_covariance():
    features = torch.randn(200, 3, generator=seeded(8)) * torch.tensor([1.0, 2.0, 3.0])
    mean, covariance = gaussian_statistics(features)
    torch.testing.assert_close(mean, features.double().mean(0))
    centred = features.double() - mean
    torch.testing.assert_close(covariance, centred.T @ centred / 199)
    with pytest.raises(ValueError, match=r"features must be \(N >= 2, D\)"):
        gaussian_statistics(torch.zeros(1, 3))


def test_precision_and_recall_on_toy_sets():
    real = torch.randn(400, 2, generator=seeded(9))
    same = torch.randn(400, 2, generator=seeded(10))
    precision, recall = precision_recall(real, same, k=3)
    assert precision > 0.9 and recall > 0.9
    assert precision_recall(real, real + 100, k=3) == (0.0, 0.0)
    # Samples that cover only the right half of the data look real but miss the left half.
    half = same[same[:, 0] > 0]
    precision, recall = precision_recall(real, half, k=3)
    assert precision > 0.9 and 0.35 < recall < 0.65
    # Samples collapsed on one real point: all real-looking, no coverage.
    collapsed = real[:1].expand(50, 2) + 1e-4 * torch.randn(50, 2, generator=seeded(11))
    precision, recall = precision_recall(real, collapsed, k=3)
    assert precision == 1.0 and recall < 0.05


def test_class_fidelity_and_balanced_labels():
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [5.0, 0.0], [5.0, 0.0]])
    assert class_fidelity(logits, torch.tensor([0, 1, 1, 0])) == 0.75
    assert balanced_labels(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]


def tiny_network() -> FeatureNetwork:
    torch.manual_seed(0)
    return FeatureNetwork(FeatureNetworkConfig(image_size=8, conv_channels=[2, 4], feature_dim=6)).eval()


def test_feature_network_round_trip_and_input_check(tmp_path):
    network = tiny_network()
    pixels = torch.rand(3, 1, 8, 8, generator=seeded(12))
    network.save_pretrained(tmp_path)
    loaded = load_feature_network(str(tmp_path))
    assert loaded.features(pixels).shape == (3, 6) and loaded(pixels).shape == (3, 10)
    torch.testing.assert_close(loaded(pixels), network(pixels))
    with pytest.raises(ValueError, match=r"pixel_values of shape \(batch, 1, 8, 8\), got \(3, 1, 28, 28\)"):
        loaded.features(torch.zeros(3, 1, 28, 28))
    with pytest.raises(ValueError, match="`image_size` must be divisible by 4"):
        FeatureNetworkConfig(image_size=10)


def test_evaluate_sample_metrics_end_to_end(tmp_path, capsys):
    model = tiny_model(num_classes=10)
    data_dir = tiny_dataset_dir(tmp_path / "data", 200)
    model.save_pretrained(tmp_path / "model")
    tiny_network().save_pretrained(tmp_path / "network")
    command = [
        "evaluate", str(tmp_path / "model"), "--dataset_name", str(data_dir), "--iwae_samples", "2",
        "--elbo_samples", "1", "--threshold_split", "none", "--sample_metrics", "--generated_samples", "60",
        "--feature_network", str(tmp_path / "network"), "--output", str(tmp_path / "evaluation.json"),
    ]  # fmt: skip
    assert cli(command) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "evaluation.json").read_text())["sample_metrics"]
    assert report["num_samples"] == 60 and report["num_real_images"] == 100 and report["neighbours"] == 3
    figures = report["samplers"]["prior"]
    assert list(report["samplers"]) == ["prior"]
    assert figures["frechet_distance"] > 0 and 0 <= figures["precision"] <= 1 and 0 <= figures["recall"] <= 1
    assert 0 <= figures["class_fidelity"] <= 1 and set(figures["class_fidelity_per_class"]) == set(map(str, range(10)))
    assert f"prior  Fréchet distance {figures['frechet_distance']:8.3f}" in printed

    # The same command again gives the same figures; with a fitted mixture, both samplers are measured.
    assert cli(command) == 0
    again = json.loads((tmp_path / "evaluation.json").read_text())["sample_metrics"]["samplers"]["prior"]
    assert again == figures
    fit_gmm_sampler(model, tiny_data(200, 10), num_components=2)
    model.save_pretrained(tmp_path / "model")
    assert cli([*command, "--precision_recall_k", "0"]) == 0
    both = json.loads((tmp_path / "evaluation.json").read_text())["sample_metrics"]["samplers"]
    assert list(both) == ["prior", "gmm"] and "precision" not in both["gmm"]
    assert both["prior"]["frechet_distance"] == figures["frechet_distance"]

    # A colder draw is another sample set, and the report says which temperature it used.
    assert cli([*command, "--sample_temperature", "0.5"]) == 0
    cold = json.loads((tmp_path / "evaluation.json").read_text())["sample_metrics"]
    assert cold["temperature"] == 0.5 and report["temperature"] == 1.0
    assert cold["samplers"]["prior"]["frechet_distance"] != figures["frechet_distance"]


def test_sample_metrics_needs_a_dataset(capsys):
    options = ["--image_folder", "x", "--anomaly_scores_output", "s.csv", "--sample_metrics"]
    assert cli(["evaluate", "some/model", *options]) == 2
    assert "--sample_metrics compares samples with a dataset split" in capsys.readouterr().err
