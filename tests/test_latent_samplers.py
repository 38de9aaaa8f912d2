"""Post-hoc latent samplers: the torch EM recovers a known mixture, the mixture's density and draws are right, and a
fitted `sampler="gmm"` travels with the model through `save_pretrained`, `from_pretrained`, `hf-vae fit-sampler` and a
Hub push and pull (the local Hub server), with and without hf-vae installed (`trust_remote_code`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from hub_server import subprocess_env
from test_hub import run_python

from hf_vae import VAEConfig, VAEModel
from hf_vae.cli import main as cli
from hf_vae.configuration_hvae import HVAEConfig
from hf_vae.data import ImageTensors
from hf_vae.latent_samplers import fit_gaussian_mixture, fit_gmm_sampler, posterior_means
from hf_vae.modeling_hvae import HVAEModel
from hf_vae.modeling_utils import GMM_SAMPLER_FILE, GaussianMixtureSampler

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def two_clusters(seed: int = 0) -> torch.Tensor:
    generator = seeded(seed)
    first = torch.randn(3000, 2, generator=generator) * 0.3 + torch.tensor([3.0, 0.0])
    second = torch.randn(1000, 2, generator=generator) @ torch.tensor([[1.0, 0.5], [0.0, 0.5]]) + torch.tensor([-3, 1])
    return torch.cat([first, second])


def tiny_data(count: int = 300, num_classes: int | None = None) -> ImageTensors:
    generator = seeded(1)
    images = (torch.rand(count, 1, 8, 8, generator=generator) * 255).to(torch.uint8)
    labels = torch.randint(num_classes, (count,), generator=generator) if num_classes else None
    return ImageTensors(images, labels)


def tiny_dataset_dir(path: Path, count: int = 200) -> Path:
    """A `save_to_disk` DatasetDict of random 8x8 grey images with labels 0-9, as train and test splits."""
    import datasets

    splits = {}
    for split, data in (("train", tiny_data(count, 10)), ("test", tiny_data(count // 2, 10))):
        images = list(data.images[:, 0].numpy())
        splits[split] = datasets.Dataset.from_dict({"image": images, "label": data.labels.tolist()}).cast_column(
            "image", datasets.Image()
        )
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def tiny_model(num_classes: int | None = None) -> VAEModel:
    torch.manual_seed(0)
    config = VAEConfig(image_size=8, hidden_sizes=[16], latent_dim=2, binarize="dynamic", num_classes=num_classes)
    return VAEModel(config).eval()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_em_recovers_a_known_mixture_and_is_seeded():
    mixture, report = fit_gaussian_mixture(two_clusters(), 2, seed=0)
    assert report["converged"]
    order = mixture.means[:, 0].argsort(descending=True)
    torch.testing.assert_close(mixture.weights[order], torch.tensor([0.75, 0.25]), atol=0.01, rtol=0)
    torch.testing.assert_close(mixture.means[order], torch.tensor([[3.0, 0.0], [-3.0, 1.0]]), atol=0.06, rtol=0)
    mixing = torch.tensor([[1.0, 0.5], [0.0, 0.5]])  # the second cluster is N(0, I) @ mixing
    torch.testing.assert_close(mixture.covariances[order[1]], mixing.T @ mixing, atol=0.08, rtol=0)
    again, _ = fit_gaussian_mixture(two_clusters(), 2, seed=0)
    assert torch.equal(again.means, mixture.means) and torch.equal(again.covariances, mixture.covariances)
    assert mixture.log_prob(two_clusters()).mean().item() == pytest.approx(report["mean_log_likelihood"], abs=1e-4)


def test_mixture_density_and_draws_agree_with_torch_distributions():
    mixture, _ = fit_gaussian_mixture(two_clusters(), 2, seed=0)
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=mixture.weights),
        torch.distributions.MultivariateNormal(mixture.means, covariance_matrix=mixture.covariances),
    )
    points = torch.randn(50, 2, generator=seeded(3)) * 3
    torch.testing.assert_close(mixture.log_prob(points), reference.log_prob(points), atol=1e-4, rtol=1e-5)
    draws = mixture.sample(20000, seeded(4))
    assert torch.equal(draws, mixture.sample(20000, seeded(4)))
    torch.testing.assert_close(draws.mean(0), reference.mean, atol=0.05, rtol=0)
    torch.testing.assert_close(draws.var(0), reference.variance, atol=0.15, rtol=0)
    cold = mixture.sample(20000, seeded(4), temperature=0.0)
    assert set(map(tuple, cold.unique(dim=0).tolist())) == set(map(tuple, mixture.means.tolist()))


def test_bad_mixtures_are_refused(tmp_path):
    with pytest.raises(ValueError, match="needs weights"):
        GaussianMixtureSampler(torch.ones(2), torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2))
    with pytest.raises(ValueError, match="not positive definite"):
        GaussianMixtureSampler(torch.ones(1), torch.zeros(1, 2), -torch.eye(2).unsqueeze(0))
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(OSError, match="not a valid Gaussian mixture sampler"):
        GaussianMixtureSampler.load(tmp_path / "broken.safetensors")


def test_fit_sample_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    assert model.samplers == ("prior",)
    with pytest.raises(ValueError, match="fit one with `hf-vae fit-sampler`"):
        model.sample(2, sampler="gmm")
    report = fit_gmm_sampler(model, tiny_data(), num_components=3, source="random images")
    assert model.samplers == ("prior", "gmm") and report["num_points"] == 300
    with pytest.raises(ValueError, match="sampler='flow' is not available"):
        model.sample(2, sampler="flow")
    images = model.sample(6, generator=seeded(5), sampler="gmm")
    assert images.shape == (6, 1, 8, 8) and torch.equal(images, model.sample(6, generator=seeded(5), sampler="gmm"))
    assert not torch.equal(images, model.sample(6, generator=seeded(5)))  # the prior draws other latents

    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / GMM_SAMPLER_FILE).is_file()
    loaded = VAEModel.from_pretrained(tmp_path / "saved")
    assert loaded.samplers == ("prior", "gmm")
    assert torch.equal(loaded.sample(6, generator=seeded(5), sampler="gmm"), images)
    assert loaded.gmm_sampler.metadata["data"] == "random images"
    assert loaded.gmm_sampler.metadata["latent"] == "z, the latent"

    # A model without a mixture saved over the folder takes the stale one away.
    tiny_model().save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved" / GMM_SAMPLER_FILE).exists()
    assert VAEModel.from_pretrained(tmp_path / "saved").samplers == ("prior",)


def test_a_mixture_of_another_latent_size_is_refused():
    model = tiny_model()
    mixture, _ = fit_gaussian_mixture(torch.randn(100, 3, generator=seeded(0)), 2)
    with pytest.raises(ValueError, match="over 3 dimensions but this model's sampled latent has 2"):
        model.set_gmm_sampler(mixture)


def test_conditional_models_draw_the_class_asked_for_from_the_mixture():
    model = tiny_model(num_classes=3)
    fit_gmm_sampler(model, tiny_data(num_classes=3), num_components=2)
    latents = model.gmm_sampler.sample(4, seeded(6), like=next(model.parameters()))
    expected = model.decode(latents, labels=torch.tensor([0, 1, 2, 0])).images
    drawn = model.sample(4, generator=seeded(6), labels=torch.tensor([0, 1, 2, 0]), sampler="gmm")
    torch.testing.assert_close(drawn, expected)


def test_hierarchical_models_fit_the_top_layer(tmp_path):
    torch.manual_seed(0)
    model = HVAEModel(HVAEConfig(image_size=8, hidden_sizes=[16], latent_dims=[4, 2], binarize="dynamic")).eval()
    data = tiny_data()
    means = posterior_means(model, data)
    assert means.shape == (300, 2)
    first = tiny_data(5).images.float() / 255
    torch.testing.assert_close(model.sampler_latents(first), model.encode(first).latent_dist.mode()[:, 4:])
    fit_gmm_sampler(model, data, num_components=2)
    assert model.samplers == ("prior", "gmm")
    assert model.sample(3, generator=seeded(0), sampler="gmm").shape == (3, 1, 8, 8)
    model.save_pretrained(tmp_path)
    loaded = HVAEModel.from_pretrained(tmp_path)
    assert loaded.gmm_sampler.metadata["latent"] == "z_L, the top layer"
    torch.testing.assert_close(
        loaded.sample(3, generator=seeded(0), sampler="gmm"), model.sample(3, generator=seeded(0), sampler="gmm")
    )


def test_fit_sampler_command_writes_only_the_sampler(tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_model().save_pretrained(folder)
    data_dir = tiny_dataset_dir(tmp_path / "data", 200)
    weights_before = digest(folder / "model.safetensors")
    options = ["--dataset_name", str(data_dir), "--num_components", "2"]
    assert cli(["fit-sampler", str(folder), *options]) == 0
    assert "Gaussian mixture of 2 components fitted to 200 posterior means" in capsys.readouterr().out
    assert digest(folder / "model.safetensors") == weights_before
    assert VAEModel.from_pretrained(folder).samplers == ("prior", "gmm")

    assert cli(["fit-sampler", "someone/model", *options]) == 2
    assert "pass --output_dir DIR" in capsys.readouterr().err


def test_the_sampler_travels_through_the_hub(hub_server, hub_token, hub_repo_id, tmp_path):
    model = tiny_model()
    fit_gmm_sampler(model, tiny_data(), num_components=3)
    expected = model.sample(5, generator=seeded(7), sampler="gmm")
    model.push_to_hub(hub_repo_id, token=hub_token, endpoint=hub_server)
    torch.save(expected, tmp_path / "expected.pt")
    env = subprocess_env(hub_server, None, tmp_path / "hf_home")
    code = """
        import sys
        import torch

        if sys.argv[2] == "remote":
            sys.modules["hf_vae"] = None
            from transformers import AutoModel as Loader
            kwargs = {"trust_remote_code": True}
        else:
            from hf_vae import VAEModel as Loader
            kwargs = {}
        model = Loader.from_pretrained(sys.argv[1], **kwargs)
        images = model.sample(5, generator=torch.Generator().manual_seed(7), sampler="gmm")
        assert torch.equal(images, torch.load("expected.pt")), "different samples"
        print(type(model).__module__, model.samplers)
        """
    for how in ("hf_vae", "remote"):
        done = run_python(code, env, tmp_path, hub_repo_id, how, isolated=how == "remote")
        assert done.returncode == 0, done.stderr
        assert "('prior', 'gmm')" in done.stdout
        assert ("hf_vae" in done.stdout.split()[0]) == (how == "hf_vae")
