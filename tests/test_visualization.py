"""Pictures: every PNG is written at its promised pixel size and shows something; 2-D and higher-D latents,
conditional models, training curves, and the `hf-vae visualize` command line."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_vae import VAEConfig, VAEModel
from hf_vae.data import DataError, ImageTensors, evaluation_images, to_pixel_values
from hf_vae.visualization import (
    FIGURE_DPI,
    figure_pixel_size,
    plot_latent_space,
    plot_reconstructions,
    plot_samples,
    plot_training_curves,
    read_metrics,
    save_figures,
)


def evaluation_pixel_values(images: torch.Tensor, binarize: str, seed: int = 0) -> torch.Tensor:
    """Float pixels of uint8 images as models are evaluated on them (`hf_vae.data.evaluation_images`)."""
    return to_pixel_values(evaluation_images(ImageTensors(images), binarize, seed).images)


IMAGE_SIZE = 8
ALL_FIGURES = {"samples", "reconstructions", "latent_space", "latent_manifold", "interpolation", "training_curves"}


pytestmark = pytest.mark.usefixtures("one_thread")


def bar_images(count: int, seed: int = 0) -> ImageTensors:
    """uint8 (N, 1, 8, 8) images of a bright bar (row or column), labelled by its orientation and half (4 classes)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (count,), generator=generator)
    positions = torch.randint(0, IMAGE_SIZE // 2, (count,), generator=generator) + IMAGE_SIZE // 2 * (labels % 2)
    images = torch.zeros(count, 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    for index, (label, position) in enumerate(zip(labels.tolist(), positions.tolist(), strict=True)):
        if label < 2:
            images[index, 0, position, :] = 255
        else:
            images[index, 0, :, position] = 255
    return ImageTensors(images, labels)


def trained(config: VAEConfig, data: ImageTensors, steps: int = 150) -> VAEModel:
    """A model that has seen the bars, so its pictures are not a uniform grey."""
    torch.manual_seed(0)
    model = VAEModel(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        index = torch.arange(step * 64, step * 64 + 64) % len(data)
        labels = data.labels[index] if config.num_classes else None
        loss = model(data.images[index].float() / 255, labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def small_config(**overrides) -> VAEConfig:
    values = {"image_size": IMAGE_SIZE, "latent_dim": 2, "hidden_sizes": [32], "dropout": 0.0}
    values.update(overrides)
    return VAEConfig(**values)


@pytest.fixture(scope="module")
def data() -> ImageTensors:
    return bar_images(512)


@pytest.fixture(scope="module")
def model_2d(data) -> VAEModel:
    return trained(small_config(), data)


def write_metrics(path, epochs: int = 4) -> None:
    columns = (
        "epoch,train_loss,train_recon_loss,train_kl_loss,val_loss,val_recon_loss,val_kl_loss,learning_rate,epoch_time"
    )
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns.split(","))
        for epoch in range(1, epochs + 1):
            recon, kl = 150 / epoch, 3 + epoch
            writer.writerow(
                [epoch, recon + kl, recon, kl, recon + kl - 2, recon - 2, kl, 1e-3 / 2 ** (epoch // 2), 4.0]
            )


def assert_picture(path, name: str) -> None:
    """The PNG exists, has the figure's promised pixel size, and is not blank."""
    assert path.is_file(), path
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == figure_pixel_size(name), (name, image.size)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 20, f"{name} looks blank (pixel std {pixels.std():.1f})"


def test_save_figures_writes_every_picture(model_2d, data, tmp_path):
    metrics = tmp_path / "metrics.csv"
    write_metrics(metrics)
    model_2d.train()
    paths = save_figures(model_2d, data, tmp_path / "figures", metrics_csv=metrics, seed=0)
    assert model_2d.training  # handed back in the mode it came in
    model_2d.eval()
    assert set(paths) == ALL_FIGURES
    for name, path in paths.items():
        assert path == tmp_path / "figures" / f"{name}.png"
        assert_picture(path, name)
    assert figure_pixel_size("samples") == (8 * FIGURE_DPI, 8 * FIGURE_DPI)


def test_pictures_repeat_for_a_seed(model_2d, data, tmp_path):
    first = save_figures(model_2d, data, tmp_path / "a", seed=3)
    second = save_figures(model_2d, data, tmp_path / "b", seed=3)
    assert "training_curves" not in first  # no metrics.csv given
    for name in ("samples", "interpolation"):
        assert np.array_equal(np.asarray(Image.open(first[name])), np.asarray(Image.open(second[name])))


def test_higher_dimensional_latent_is_projected_by_pca(data, tmp_path):
    model = trained(small_config(latent_dim=5), data, steps=30)
    paths = save_figures(model, data, tmp_path, seed=0)
    assert set(paths) == ALL_FIGURES - {"latent_manifold", "training_curves"}
    assert not (tmp_path / "latent_manifold.png").exists()
    figure = plot_latent_space(model, data.images.float() / 255, data.labels)
    axes = figure.axes[0]
    assert "PCA" in axes.get_title() and "principal component 1" in axes.get_xlabel()
    two_d = plot_latent_space(trained(small_config(), data, steps=5), data.images.float() / 255, data.labels)
    assert "PCA" not in two_d.axes[0].get_title() and two_d.axes[0].get_xlabel() == "z₁"


def test_conditional_samples_have_one_row_per_class(data, tmp_path):
    model = trained(small_config(num_classes=4), data)
    figure = plot_samples(model, seed=0, per_row=10)
    grid = figure.axes[0].images[0].get_array()
    cell = IMAGE_SIZE + 2
    assert grid.shape[:2] == (4 * cell + 2, 10 * cell + 2)
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == ["0", "1", "2", "3"]
    paths = save_figures(model, data, tmp_path, seed=0)
    assert_picture(paths["samples"], "samples")
    with pytest.raises(DataError, match="conditional"):
        save_figures(model, ImageTensors(data.images), tmp_path)


def test_binarised_model_shows_binary_originals(data):
    model = trained(small_config(binarize="dynamic"), data, steps=5)
    grey = ImageTensors((data.images // 2)[:4], data.labels[:4])  # grey bars: only binarisation makes them 0/255
    figure = plot_reconstructions(model, evaluation_pixel_values(grey.images, "dynamic", 0), per_row=4, blocks=1)
    originals = figure.axes[0].images[0].get_array()[: IMAGE_SIZE + 2]
    assert set(np.unique(originals).tolist()) <= {0.0, 1.0}


def test_training_curves_from_metrics_csv(tmp_path):
    metrics = tmp_path / "metrics.csv"
    write_metrics(metrics, epochs=5)
    values = read_metrics(metrics)
    assert values["epoch"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    figure = plot_training_curves(values)
    titles = [axes.get_title() for axes in figure.axes]
    assert any("Loss" in title for title in titles) and "Learning rate" in titles
    assert [len(axes.get_lines()) for axes in figure.axes] == [2, 2, 2, 1]  # train + validation, and the rate
    assert figure.axes[3].get_yscale() == "linear"
    (tmp_path / "empty.csv").write_text("epoch,train_loss\n")
    with pytest.raises(DataError, match="no rows"):
        read_metrics(tmp_path / "empty.csv")


def test_visualize_cli(model_2d, data, tmp_path):
    model_dir = tmp_path / "model"
    model_2d.save_pretrained(model_dir)
    write_metrics(model_dir / "metrics.csv")  # found next to the model without --metrics_csv
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    rows = {"img": [Image.fromarray(image[0].numpy()) for image in data.images[:200]], "label": data.labels[:200]}
    test = datasets.Dataset.from_dict({"img": rows["img"], "label": rows["label"].tolist()}, features=features)
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "data"))
    output = tmp_path / "pictures"
    command = [sys.executable, "-m", "hf_vae.cli", "visualize", "--model", str(model_dir)]
    command += ["--dataset_name", str(tmp_path / "data"), "--output_dir", str(output), "--max_samples", "150"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr
    for name in ALL_FIGURES:
        assert_picture(output / f"{name}.png", name)
        assert f"{output / name}.png" in completed.stdout

    bad = subprocess.run(
        command[:-6] + ["--dataset_name", str(tmp_path / "nowhere"), "--output_dir", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert bad.returncode == 1 and "No dataset folder" in bad.stderr


def test_colour_convolutional_model(tmp_path):
    """RGB images through a convolutional decoder with the discretised logistic likelihood."""
    generator = torch.Generator().manual_seed(0)
    images = (torch.rand(64, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) * 255).to(torch.uint8)
    config = VAEConfig(
        architecture="conv",
        conv_channels=[4, 8],
        image_size=IMAGE_SIZE,
        num_channels=3,
        latent_dim=3,
        likelihood="discretized_logistic",
    )
    paths = save_figures(VAEModel(config), ImageTensors(images), tmp_path)
    assert set(paths) == ALL_FIGURES - {"latent_manifold", "training_curves"}
    for name, path in paths.items():
        with Image.open(path) as image:
            assert image.size == figure_pixel_size(name)
