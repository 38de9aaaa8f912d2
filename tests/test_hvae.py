"""The hierarchical VAE: its bounds are ordered (MLP and conv), its IWAE estimate matches numerical quadrature on a
two-layer toy, each layer reports its KL, a config.json written before the conv variant loads to the MLP variant, the
conv variant handles RGB photographs, and brief real-MNIST runs (MLP and conv) lower the validation loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_training import read_metrics, train_here

from hf_vae.configuration_hvae import HVAEConfig
from hf_vae.distributions import DiagonalGaussian
from hf_vae.estimators import chunked_log_weights, iwae_bound
from hf_vae.modeling_hvae import HVAEModel

pytestmark = pytest.mark.usefixtures("one_thread")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def toy_model() -> HVAEModel:
    """Two one-dimensional layers over 2x2 binary images: small enough to integrate p(x) on a grid."""
    torch.manual_seed(0)
    model = HVAEModel(HVAEConfig(image_size=2, latent_dims=[1, 1], hidden_sizes=[8], normalization="none")).eval()
    with torch.no_grad():  # a decoder that depends clearly on z_1 (the conditional prior keeps its default scale)
        for parameter in model.decoder.parameters():
            parameter.mul_(3.0)
    return model


CONV = {"architecture": "conv", "conv_channels": [4, 8]}
VAMP = {"prior": "vamp", "num_pseudo_inputs": 7}


@pytest.mark.parametrize("architecture", [{}, CONV, VAMP], ids=["mlp", "conv", "vamp"])
def test_iwae_is_at_least_the_elbo_and_grows_with_k(architecture):
    torch.manual_seed(0)
    model = HVAEModel(HVAEConfig(latent_dims=[6, 3], hidden_sizes=[16], **architecture)).eval()
    pixels = (torch.rand(8, 1, 28, 28, generator=seeded(1)) < 0.3).float()
    log_weights = chunked_log_weights(model, pixels, 64, generator=seeded(2)).double()
    assert (iwae_bound(log_weights) >= log_weights.mean(0)).all()  # the same draws: Jensen
    estimates = [iwae_bound(log_weights[:k]).mean().item() for k in (1, 8, 64)]
    assert estimates[0] < estimates[1] < estimates[2]


def test_iwae_estimate_matches_quadrature_on_a_two_layer_toy():
    model = toy_model()
    pixels = torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]).view(2, 1, 2, 2)
    grid = torch.linspace(-9, 9, 721, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    z2, z1 = torch.meshgrid(grid, grid, indexing="ij")
    with torch.no_grad():
        prior_top = -0.5 * (z2**2 + math.log(2 * math.pi))
        prior = model.prior_heads[0](model.top_down[0](z2.reshape(-1, 1).float())).double()
        mean, logvar = prior.chunk(2, dim=-1)
        z1_flat = z1.reshape(-1, 1)
        log_p_z1 = (-0.5 * ((z1_flat - mean) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi))).view_as(z1)
        logits = model.decoder(z1_flat.float(), None).double().flatten(1)
        exact = []
        for image in pixels:
            log_px = -torch.nn.functional.binary_cross_entropy_with_logits(
                logits, image.flatten().double().expand_as(logits), reduction="none"
            ).sum(-1).view_as(z1)
            exact.append(torch.logsumexp((prior_top + log_p_z1 + log_px).flatten(), 0).item() + 2 * math.log(step))
    estimate = model.log_likelihood(pixels, num_samples=20000, generator=seeded(3))
    assert estimate.tolist() == pytest.approx(exact, abs=0.03)


def test_each_layer_reports_its_kl():
    torch.manual_seed(0)
    model = HVAEModel(HVAEConfig(latent_dims=[6, 4, 2], hidden_sizes=[16]))
    pixels = (torch.rand(5, 1, 28, 28, generator=seeded(4)) < 0.3).float()
    terms = model(pixels, generator=seeded(5)).loss_terms
    assert set(terms) == {"recon_loss", "kl_loss", "kl_loss_1", "kl_loss_2", "kl_loss_3"}
    total = terms["kl_loss_1"] + terms["kl_loss_2"] + terms["kl_loss_3"]
    torch.testing.assert_close(terms["kl_loss"], total)
    assert all(terms[f"kl_loss_{level}"] >= 0 for level in (1, 2, 3))


@pytest.mark.parametrize("architecture", [{}, CONV], ids=["mlp", "conv"])
def test_free_bits_floor_each_layer_in_training_only(architecture):
    torch.manual_seed(0)
    model = HVAEModel(HVAEConfig(latent_dims=[4, 2], hidden_sizes=[16], free_bits=5.0, **architecture))
    pixels = (torch.rand(5, 1, 28, 28, generator=seeded(6)) < 0.3).float()
    trained = model.train()(pixels, generator=seeded(7))
    assert trained.loss >= trained.loss_terms["recon_loss"] + 5.0 * 6 - 1e-3  # 6 latent units, 5 nats each
    evaluated = model.eval()(pixels, generator=seeded(7))
    torch.testing.assert_close(evaluated.loss, evaluated.loss_terms["recon_loss"] + evaluated.loss_terms["kl_loss"])


def test_a_brief_real_mnist_run_lowers_the_validation_loss(mnist_dir, tmp_path):
    output_dir = tmp_path / "hvae"
    assert (
        train_here(
            "--dataset_name", str(mnist_dir), "--preset", "mnist-hvae", "--latent_dims", "16", "8", "--hidden_sizes",
            "128", "--max_train_samples", "3000", "--max_eval_samples", "500", "--num_train_epochs", "3",
            "--learning_rate", "1e-3", "--checkpointing_steps", "no", "--skip_figures", "--disable_tqdm",
            "--output_dir", str(output_dir),
        )  # fmt: skip
        == 0
    )
    rows = read_metrics(output_dir)
    val = [float(row["val_loss"]) for row in rows]
    assert len(val) == 3 and val[-1] < val[0] - 10, val
    assert {"train_kl_loss_1", "train_kl_loss_2", "val_kl_loss_1", "val_kl_loss_2"} <= set(rows[0])


def test_layer_picture_holds_one_level_fixed_per_row():
    from hf_vae.visualization import figure_pixel_size, plot_layers

    torch.manual_seed(0)
    model = HVAEModel(HVAEConfig(latent_dims=[4, 2], hidden_sizes=[16]))
    top, noise = torch.randn(2, 2, generator=seeded(8)), [torch.randn(2, 4, generator=seeded(9))]
    same_top = model.decode_top_down(top[[0, 0]], [noise[0]])
    same_noise = model.decode_top_down(top, [noise[0][[0, 0]]])
    assert not torch.equal(same_top[0], same_top[1]) and not torch.equal(same_noise[0], same_noise[1])
    torch.testing.assert_close(model.decode_top_down(top, noise), model.decode_top_down(top, noise))
    figure = plot_layers(model, seed=1)
    figure.canvas.draw()
    assert tuple(figure.canvas.get_width_height()) == figure_pixel_size("layers")
    assert [axes.get_title() for axes in figure.axes] == [
        "Top layer fixed per row, lower layers resampled",
        "Lower layers fixed per row, top layer resampled",
    ]


def test_evaluation_counts_active_units_per_layer():
    from hf_vae.evaluation import summarize_figures

    means = torch.cat([torch.randn(50, 3, generator=seeded(10)), torch.zeros(50, 2)], dim=1)
    figures = {name: torch.ones(50) for name in ("negative_elbo", "iwae_nll", "reference_style_loss", "loss")}
    figures.update(reference_style_loss_posterior_mean=torch.ones(50), posterior_means=means)
    summary = summarize_figures(figures, 784, latent_layers=[3, 2])
    assert summary["active_units"] == 3 and summary["active_units_per_layer"] == [3, 0]


# config.json as `save_pretrained` wrote it before the conv variant existed (no architecture, conv_channels or
# num_res_blocks), and the weight names of that model: pretrained models of that time must load unchanged.
CONFIG_BEFORE_CONV = {
    "activation": "silu", "architectures": ["HVAEModel"], "beta": 1.0, "binarize": "dynamic", "dtype": "float32",
    "free_bits": 0.0, "hidden_sizes": [8], "image_size": 2, "latent_dims": [1, 1], "likelihood": "bernoulli",
    "model_type": "hf_hvae", "normalization": "none", "num_channels": 1, "num_classes": None,
    "num_importance_samples": 1, "transformers_version": "5.24.0",
    "auto_map": {"AutoConfig": "configuration_hvae.HVAEConfig", "AutoModel": "modeling_hvae.HVAEModel"},
}  # fmt: skip
WEIGHTS_BEFORE_CONV = [
    "bottom_up.0.0.weight", "bottom_up.0.0.bias", "bottom_up.1.0.weight", "bottom_up.1.0.bias", "top_posterior.weight",
    "top_posterior.bias", "top_down.0.0.weight", "top_down.0.0.bias", "prior_heads.0.weight", "prior_heads.0.bias",
    "posterior_heads.0.0.weight", "posterior_heads.0.0.bias", "posterior_heads.0.3.weight", "posterior_heads.0.3.bias",
    "decoder.layers.0.weight", "decoder.layers.0.bias", "decoder.layers.3.weight", "decoder.layers.3.bias",
]  # fmt: skip


def test_a_config_written_before_the_conv_variant_loads_to_the_mlp_variant(tmp_path):
    from safetensors.torch import save_file

    from hf_vae.families import load_pretrained

    torch.manual_seed(0)
    state = {name: torch.randn(tensor.shape) for name, tensor in toy_model().state_dict().items()}
    assert list(state) == WEIGHTS_BEFORE_CONV
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG_BEFORE_CONV))
    loaded = load_pretrained(tmp_path)
    assert (loaded.config.architecture, loaded.config.hidden_sizes) == ("mlp", [8])
    assert list(loaded.state_dict()) == WEIGHTS_BEFORE_CONV
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in state.items())


def test_conv_variant_models_32x32_rgb_photographs():
    from hf_vae.visualization import plot_layers

    torch.manual_seed(0)
    config = HVAEConfig.from_preset(
        "rgb32-hvae-conv", latent_dims=[6, 4, 2], conv_channels=[4, 8, 8], hidden_sizes=[16]
    )
    model = HVAEModel(config).eval()
    photos = torch.randint(0, 256, (3, 3, 32, 32), generator=seeded(11)).float() / 255
    output = model(photos, generator=seeded(12))
    assert tuple(output.logits.shape) == (3, 6, 32, 32)  # the discretised logistic's location and log-scale
    assert output.latent_dist.mean.shape == (3, 12)
    assert {"kl_loss_1", "kl_loss_2", "kl_loss_3"} <= set(output.loss_terms)
    assert model.log_weights(photos, 5, seeded(13)).shape == (5, 3)
    assert tuple(model.sample(4, generator=seeded(14)).shape) == (4, 3, 32, 32)
    noise = [torch.randn(2, 6, generator=seeded(15)), torch.randn(2, 4, generator=seeded(16))]
    images = model.decode_top_down(torch.randn(2, 2, generator=seeded(17)), noise)
    assert tuple(images.shape) == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    plot_layers(model, seed=1, rows=2, columns=2).canvas.draw()
    with pytest.raises(ValueError, match="divisible by 2 \\*\\* len\\(conv_channels\\) = 8"):
        HVAEConfig.from_preset("rgb32-hvae-conv", image_size=28)


def test_a_brief_real_mnist_run_of_the_conv_variant_lowers_the_validation_loss(mnist_dir, tmp_path):
    output_dir = tmp_path / "hvae-conv"
    assert (
        train_here(
            "--dataset_name", str(mnist_dir), "--preset", "rgb32-hvae-conv", "--likelihood", "bernoulli",
            "--binarize", "dynamic", "--conv_channels", "8", "16", "--num_res_blocks", "0", "--hidden_sizes", "64",
            "--latent_dims", "16", "8", "--max_train_samples", "2000", "--max_eval_samples", "500",
            "--num_train_epochs", "3", "--learning_rate", "2e-3", "--checkpointing_steps", "no", "--skip_figures",
            "--disable_tqdm", "--output_dir", str(output_dir),
        )  # fmt: skip
        == 0
    )
    rows = read_metrics(output_dir)
    val = [float(row["val_loss"]) for row in rows]
    assert len(val) == 3 and val[-1] < val[0] - 10, val
    assert {"val_kl_loss_1", "val_kl_loss_2"} <= set(rows[0])


def test_the_vamp_prior_is_the_mixture_of_the_top_posteriors_of_the_pseudo_inputs():
    torch.manual_seed(0)
    config = HVAEConfig(latent_dims=[4, 3], hidden_sizes=[16], normalization="batch", prior="vamp", num_pseudo_inputs=5)
    model = HVAEModel(config).train()
    with torch.no_grad():
        model.top_prior.pseudo_inputs.uniform_(0, 1, generator=seeded(18))
        model(torch.rand(7, 1, 28, 28, generator=seeded(19)))  # moves the BatchNorm running statistics
        top = model.eval().encode(model.top_prior.pseudo_inputs).layer_dists[-1]
        model.train()  # the prior encodes its pseudo-inputs with the running statistics in training too
        latents = torch.randn(6, 3, generator=seeded(20))
        components = torch.stack([DiagonalGaussian(top.mean[k], top.logvar[k]).log_prob(latents) for k in range(5)])
        torch.testing.assert_close(model.top_prior.log_prob(latents), components.logsumexp(0) - math.log(5))
    assert all(module.training for module in model.modules())  # pseudo-inputs encoded in eval mode, then put back
    trained = model(torch.rand(4, 1, 28, 28, generator=seeded(21)), generator=seeded(22))
    trained.loss.backward()
    assert model.top_prior.pseudo_inputs.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="free_bits"):
        HVAEConfig(latent_dims=[4, 3], prior="vamp", free_bits=0.5)
