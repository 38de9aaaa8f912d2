"""Every model family the project has, through the shared tester (`family_tester.FamilyTester`)."""

from __future__ import annotations

from family_tester import FamilyTester, tiny_dataset  # noqa: F401  (the fixture)

from hf_vae import VAEConfig
from hf_vae.configuration_hvae import HVAEConfig

TINY_MLP = ["--hidden_sizes", "16", "--latent_dim", "2"]


class TestGaussianMLP(FamilyTester):
    config = VAEConfig(image_size=28, latent_dim=2, hidden_sizes=[16], binarize="dynamic")
    train_arguments = ["--preset", "mnist", *TINY_MLP]


class TestGaussianConvConditional(FamilyTester):
    config = VAEConfig(
        architecture="conv", image_size=28, latent_dim=3, conv_channels=[4, 8], num_classes=10, dropout=0.0
    )
    train_arguments = ["--preset", "mnist-conv", "--conv_channels", "4", "8", "--latent_dim", "3",
                       "--num_classes", "10"]  # fmt: skip


class TestGaussianVampPriorIWAE(FamilyTester):
    config = VAEConfig(
        image_size=28, latent_dim=2, hidden_sizes=[16], prior="vamp", num_pseudo_inputs=6, num_importance_samples=3
    )
    train_arguments = ["--preset", "mnist", *TINY_MLP, "--prior", "vamp", "--num_pseudo_inputs", "6",
                       "--num_importance_samples", "3"]  # fmt: skip


class TestHierarchicalVAE(FamilyTester):
    config = HVAEConfig(image_size=28, latent_dims=[4, 3, 2], hidden_sizes=[16], binarize="dynamic")
    train_arguments = ["--preset", "mnist-hvae", "--latent_dims", "4", "3", "2", "--hidden_sizes", "16"]


class TestHierarchicalVAEIWAE(FamilyTester):
    config = HVAEConfig(image_size=28, latent_dims=[4, 2], hidden_sizes=[16], num_importance_samples=3)
    train_arguments = ["--preset", "mnist-hvae", "--latent_dims", "4", "2", "--hidden_sizes", "16",
                       "--num_importance_samples", "3"]  # fmt: skip


class TestGaussianMixturePriorConditional(FamilyTester):
    config = VAEConfig(image_size=28, latent_dim=2, hidden_sizes=[16], prior="mog", num_pseudo_inputs=3, num_classes=10)
    train_arguments = ["--preset", "mnist", *TINY_MLP, "--prior", "mog", "--num_pseudo_inputs", "3",
                       "--num_classes", "10"]  # fmt: skip


class TestHierarchicalConvRGBIWAE(FamilyTester):
    config = HVAEConfig(
        architecture="conv", image_size=32, num_channels=3, latent_dims=[4, 3, 2], conv_channels=[4, 8],
        num_res_blocks=1, hidden_sizes=[16], normalization="batch", likelihood="discretized_logistic",
        num_importance_samples=3,
    )  # fmt: skip
    train_arguments = ["--preset", "rgb32-hvae-conv", "--image_size", "32", "--num_channels", "3", "--latent_dims",
                       "4", "3", "2", "--conv_channels", "4", "8", "--hidden_sizes", "16",
                       "--num_importance_samples", "3"]  # fmt: skip


class TestHierarchicalVampPrior(FamilyTester):
    config = HVAEConfig(latent_dims=[4, 2], hidden_sizes=[16], normalization="batch", prior="vamp", num_pseudo_inputs=4)
    train_arguments = ["--preset", "mnist-hvae", "--latent_dims", "4", "2", "--hidden_sizes", "16", "--prior", "vamp",
                       "--num_pseudo_inputs", "4"]  # fmt: skip
