"""Pictures: every PNG is written at its promised pixel size and shows something; 2-D and higher-D latents,
conditional models, training curves, and the `hf-vae visualize` command line. Pictures tell the truth: each names
its model, the reconstructions name the binarisation seed they show, a constant learning rate looks constant, LDA
separates classes PCA cannot, and the manifold labels its first and last rows and columns."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from matplotlib.text import Text
from PIL import Image

from hf_vae import VAEConfig, VAEModel, visualization
from hf_vae.cli import main as cli_main
from hf_vae.data import DataError, ImageTensors, evaluation_images, to_pixel_values
from hf_vae.visualization import (
    FIGURE_DPI,
    command_caption,
    draw_figures,
    figure_pixel_size,
    plot_latent_manifold,
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


def test_higher_dimensional_latent_is_projected(data, tmp_path):
    model = trained(small_config(latent_dim=5), data, steps=30)
    paths = save_figures(model, data, tmp_path, seed=0)
    assert set(paths) == ALL_FIGURES - {"latent_manifold", "training_curves"}
    assert not (tmp_path / "latent_manifold.png").exists()
    pixels = data.images.float() / 255
    axes = plot_latent_space(model, pixels, data.labels).axes[0]  # "auto": labelled, 5-D -> LDA
    assert "LDA" in axes.get_title() and "discriminant 1" in axes.get_xlabel()
    axes = plot_latent_space(model, pixels, data.labels, projection="pca").axes[0]
    assert "PCA" in axes.get_title() and "principal component 1" in axes.get_xlabel()
    assert "% of the variance" in axes.get_title()
    axes = plot_latent_space(model, pixels).axes[0]  # unlabelled: PCA
    assert "PCA" in axes.get_title()
    two_d = plot_latent_space(trained(small_config(), data, steps=5), pixels, data.labels)
    assert "PCA" not in two_d.axes[0].get_title() and two_d.axes[0].get_xlabel() == "z₁"
    with pytest.raises(ValueError, match="projection"):
        plot_latent_space(model, pixels, data.labels, projection="tsne")


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


@pytest.fixture(scope="module")
def dataset_dir(data, tmp_path_factory):
    """The first 200 bars as a `save_to_disk` folder with a test split, as `hf-vae visualize` reads them."""
    folder = tmp_path_factory.mktemp("bars") / "data"
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    rows = {"img": [Image.fromarray(image[0].numpy()) for image in data.images[:200]], "label": data.labels[:200]}
    test = datasets.Dataset.from_dict({"img": rows["img"], "label": rows["label"].tolist()}, features=features)
    datasets.DatasetDict({"test": test}).save_to_disk(str(folder))
    return folder


def test_visualize_cli(model_2d, dataset_dir, tmp_path):
    model_dir = tmp_path / "model"
    model_2d.save_pretrained(model_dir)
    write_metrics(model_dir / "metrics.csv")  # found next to the model without --metrics_csv
    output = tmp_path / "pictures"
    command = [sys.executable, "-m", "hf_vae.cli", "visualize", "--model", str(model_dir)]
    command += ["--dataset_name", str(dataset_dir), "--output_dir", str(output), "--max_samples", "150"]
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


# ---------------------------------------------------------------------------------------------- truthful pictures
CAPTION = "pretrained/mnist, epoch 12 (step 5520)"


def figure_texts(figure) -> list[str]:
    """Every piece of text drawn on a figure: its own texts, suptitle and caption line, axes titles and labels."""
    return [text.get_text() for text in figure.findobj(Text)]


def write_constant_rate_metrics(path, rate: float = 1e-3, epochs: int = 6) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", "train_loss", "val_loss", "learning_rate"])
        for epoch in range(1, epochs + 1):
            writer.writerow([epoch, 100 / epoch, 101 / epoch, rate])


def rate_panel(figure):
    return next(axes for axes in figure.axes if axes.get_title().startswith("Learning rate"))


def test_every_figure_names_its_model(model_2d, data, tmp_path):
    metrics = tmp_path / "metrics.csv"
    write_metrics(metrics)
    figures = draw_figures(model_2d, data, metrics_csv=metrics, seed=0, caption=CAPTION)
    assert set(figures) == ALL_FIGURES
    for name, figure in figures.items():
        assert CAPTION in figure_texts(figure), name
    # Without a caption: where the model was loaded from, else its class.
    assert "VAEModel" in figure_texts(draw_figures(model_2d, data, seed=0)["samples"])
    model_2d.save_pretrained(tmp_path / "model")
    loaded = VAEModel.from_pretrained(tmp_path / "model")
    for figure in draw_figures(loaded, data, seed=0).values():
        assert str(tmp_path / "model") in figure_texts(figure)
    # The caption does not change the pictures' pixel sizes.
    paths = save_figures(model_2d, data, tmp_path / "figures", metrics_csv=metrics, caption="x" * 300)
    for name, path in paths.items():
        assert_picture(path, name)


def test_visualize_names_the_model_and_epoch(model_2d, dataset_dir, tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    model_2d.save_pretrained(model_dir)
    assert command_caption(str(model_dir)) == str(model_dir)
    results = {"epochs_completed": 14, "best_epoch": 12, "best_step": 5520}
    (model_dir / "train_results.json").write_text(json.dumps(results))
    expected = f"{model_dir}, best model of epoch 12 of 14 (step 5520)"
    assert command_caption(str(model_dir)) == expected
    captions = []

    def spy(*args, **kwargs):
        captions.append(kwargs.get("caption"))
        return save_figures(*args, **kwargs)

    monkeypatch.setattr(visualization, "save_figures", spy)
    arguments = ["--model", str(model_dir), "--dataset_name", str(dataset_dir), "--output_dir", str(tmp_path / "out")]
    assert cli_main(["visualize", *arguments, "--max_samples", "40"]) == 0
    assert captions == [expected]
    (model_dir / "train_results.json").write_text("{damaged")
    assert command_caption(str(model_dir)) == str(model_dir)


def test_reconstructions_title_names_the_seed_that_binarised(data):
    model = trained(small_config(binarize="dynamic"), data, steps=5)
    shown = ImageTensors(data.images[:10] // 2, data.labels[:10])  # grey bars: each seed draws other pixels
    for seed in (0, 7):
        axes = draw_figures(model, shown, seed=seed)["reconstructions"].axes[0]
        assert f"seed {seed})" in axes.get_title()
        grid = axes.images[0].get_array()
        expected = evaluation_images(shown, "dynamic", seed).images.float() / 255
        cell = IMAGE_SIZE + 2
        for index in range(10):
            originals = grid[2 : 2 + IMAGE_SIZE, 2 + index * cell : 2 + index * cell + IMAGE_SIZE]
            assert np.array_equal(originals, expected[index, 0].numpy()), (seed, index)
    first = evaluation_images(shown, "dynamic", 0).images
    assert not torch.equal(first, evaluation_images(shown, "dynamic", 7).images)  # the seed matters


def test_constant_learning_rate_is_drawn_flat(tmp_path):
    for rate in (1e-3, 2.5e-4):
        write_constant_rate_metrics(tmp_path / "metrics.csv", rate)
        figure = plot_training_curves(read_metrics(tmp_path / "metrics.csv"))
        figure.draw_without_rendering()
        axes = rate_panel(figure)
        assert axes.yaxis.get_offset_text().get_text() == ""
        assert axes.get_yticks().tolist() == [rate]
        assert [label.get_text() for label in axes.get_yticklabels()] == [f"{rate:.1e}".replace(".0e", "e")]
        low, high = axes.get_ylim()
        assert low < rate < high and high - low >= rate  # no 0.96-1.04 magnification
    # Round-off in a CSV (a relative spread below 1e-9) is still constant.
    metrics = read_metrics(tmp_path / "metrics.csv")
    metrics["learning_rate"] = [1e-3, 1e-3 * (1 + 1e-12), 1e-3, 1e-3, 1e-3, 1e-3]
    axes = rate_panel(plot_training_curves(metrics))
    assert axes.get_yticks().tolist() == [pytest.approx(1e-3, rel=1e-9)]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["1e-03"]


def test_varying_learning_rate_has_full_tick_labels(tmp_path):
    write_metrics(tmp_path / "metrics.csv", epochs=5)  # 1e-3 halved every other epoch: a ratio of 4
    figure = plot_training_curves(read_metrics(tmp_path / "metrics.csv"))
    figure.draw_without_rendering()
    axes = rate_panel(figure)
    assert axes.get_yscale() == "linear" and axes.yaxis.get_offset_text().get_text() == ""
    labels = [label.get_text() for label in axes.get_yticklabels()]
    assert len(labels) > 1 and "5e-04" in labels
    metrics = read_metrics(tmp_path / "metrics.csv")
    metrics["learning_rate"] = [1e-2, 1e-3, 1e-4, 1e-5, 1e-5]
    assert rate_panel(plot_training_curves(metrics)).get_yscale() == "log"


class IdentityEncoder(torch.nn.Module):
    """A stand-in model whose posterior mean is its input, so that projections are tested on chosen latents."""

    device = torch.device("cpu")

    def encode(self, pixel_values, labels=None):
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: pixel_values))


def separation(points: np.ndarray, labels: np.ndarray) -> float:
    """Between-class over within-class variance (traces of the scatters) of 2-D points."""
    centre = points.mean(0)
    between = within = 0.0
    for label in np.unique(labels):
        members = points[labels == label]
        between += len(members) * ((members.mean(0) - centre) ** 2).sum()
        within += ((members - members.mean(0)) ** 2).sum()
    return between / within


def latents_with_hidden_classes(per_class: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """8-D latents of three classes that differ only along the two lowest-variance axes (means on a triangle of
    radius 1, spread 0.3), the other six axes pure noise of spread 3: PCA looks at the noise."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat_interleave(per_class)
    angles = labels.double() * 2 * torch.pi / 3
    latents = torch.randn(3 * per_class, 8, generator=generator, dtype=torch.float64)
    latents[:, :6] *= 3.0
    latents[:, 6:] = 0.3 * latents[:, 6:] + torch.stack([angles.cos(), angles.sin()], dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8, generator=generator, dtype=torch.float64))
    return (latents @ rotation).float(), labels  # rotated: the separating plane is no coordinate plane


def test_lda_separates_classes_that_pca_misses():
    latents, labels = latents_with_hidden_classes()
    model = IdentityEncoder()
    measured = {}
    for projection in ("pca", "lda", "auto"):
        figure = plot_latent_space(model, latents, labels, projection=projection)
        points = np.asarray(figure.axes[0].collections[0].get_offsets())
        assert points.shape == (len(latents), 2)
        measured[projection] = separation(points, labels.numpy())
    assert "LDA" in plot_latent_space(model, latents, labels).axes[0].get_title()
    # The classes' own separation is 0.5 / 0.09 ~ 5.6 in their plane; PCA's plane of noise shows almost none.
    assert measured["lda"] > 3.0, measured
    assert measured["pca"] < 0.1, measured
    assert measured["auto"] == measured["lda"]
    # Two classes give one discriminant, not two: LDA falls back to PCA and says so.
    two = labels < 2
    axes = plot_latent_space(model, latents[two], labels[two], projection="lda").axes[0]
    assert "PCA" in axes.get_title() and "LDA needs labels of 3 or more classes" in axes.get_title()


def test_manifold_labels_first_and_last_rows_and_columns(model_2d):
    cell = IMAGE_SIZE + 2
    first, last = 2 + (IMAGE_SIZE - 1) / 2, 2 + 19 * cell + (IMAGE_SIZE - 1) / 2
    axes = plot_latent_manifold(model_2d, steps=20).axes[0]
    x_labels = [label.get_text() for label in axes.get_xticklabels()]
    y_labels = [label.get_text() for label in axes.get_yticklabels()]
    assert len(x_labels) == len(y_labels) == 20  # every row and column
    assert (x_labels[0], x_labels[-1], y_labels[0], y_labels[-1]) == ("-1.96", "1.96", "1.96", "-1.96")
    assert axes.get_xticks()[[0, -1]].tolist() == axes.get_yticks()[[0, -1]].tolist() == [first, last]
    axes = plot_latent_manifold(model_2d, steps=40).axes[0]  # too many to label: an even subset with both ends
    ticks = axes.get_xticks().tolist()
    assert 5 <= len(ticks) < 40 and ticks[0] == first and ticks[-1] == 2 + 39 * cell + (IMAGE_SIZE - 1) / 2
    assert axes.get_yticks().tolist() == ticks
