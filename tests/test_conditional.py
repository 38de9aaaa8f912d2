"""Conditional VAEs: the label reaches encoder and decoder of every architecture, `sample` / `decode` generate a
chosen class, and a conditional conv VAE trained briefly on real MNIST draws the digit it is asked for."""

from __future__ import annotations

import pytest
import torch

from hf_vae import VAEConfig, VAEModel
from hf_vae.data import load_splits, to_pixel_values


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", params=["mlp", "conv"])
def conditional(request) -> VAEModel:
    torch.manual_seed(0)
    overrides = {"conv_channels": [4, 8], "num_res_blocks": 1} if request.param == "conv" else {"hidden_sizes": [16]}
    config = VAEConfig(architecture=request.param, image_size=8, latent_dim=2, num_classes=4, **overrides)
    return VAEModel(config).eval()


def test_the_label_conditions_encoder_and_decoder(conditional):
    pixels = torch.rand(4, 1, 8, 8, generator=seeded(0))
    one, other = torch.tensor([0, 1, 2, 3]), torch.tensor([3, 2, 1, 0])
    assert not torch.allclose(conditional.encode(pixels, one).mean, conditional.encode(pixels, other).mean)
    latents = torch.randn(4, 2, generator=seeded(1))
    assert not torch.allclose(conditional.decode(latents, one).images, conditional.decode(latents, other).images)


def test_sample_and_decode_generate_the_chosen_class(conditional):
    latents = torch.randn(5, 2, generator=seeded(2))
    as_int = conditional.decode(latents, labels=3).images
    torch.testing.assert_close(as_int, conditional.decode(latents, labels=torch.full((5,), 3)).images)
    torch.testing.assert_close(as_int, conditional.decode(latents, labels=[3, 3, 3, 3, 3]).images)
    mixed = conditional.decode(latents, labels=torch.tensor([3, 0, 3, 1, 2])).images
    torch.testing.assert_close(mixed[[0, 2]], as_int[[0, 2]])

    # `sample` draws z ~ N(0, I) with the generator, then decodes with the labels.
    torch.testing.assert_close(conditional.sample(5, generator=seeded(2), labels=3), as_int)
    assert conditional.sample(5, generator=seeded(2), labels=torch.tensor(3)).shape == (5, 1, 8, 8)
    per_sample = conditional.sample(4, generator=seeded(3), labels=torch.tensor([0, 1, 2, 3]))
    assert per_sample.shape == (4, 1, 8, 8)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (None, r"conditional \(num_classes=4\): pass `labels`"),
        (4, r"labels must be class indices in \[0, 4\)"),
        (torch.tensor([0, 1]), "Got 2 labels for a batch of 3"),
    ],
)
def test_bad_labels_raise(conditional, labels, message):
    with pytest.raises(ValueError, match=message):
        conditional.sample(3, labels=labels)


# ---------------------------------------------------------------------------------------------- real MNIST
def test_conditional_conv_vae_trained_on_mnist_draws_the_asked_digit(mnist_dir):
    """Train a small conditional conv VAE for 250 steps on 6,000 digits, then ask for 50 samples of each digit
    and classify them with a logistic regression trained here on real digits. Chance is 10%; with a 2-D latent the
    decoder must take the digit's identity from the label, and about 90-97% of samples are classified as asked
    (80-86% by nearest class mean)."""
    splits = load_splits(str(mnist_dir), validation_split=0.1, seed=0)
    train = splits.train.select(torch.arange(6000))
    pixels, labels = to_pixel_values(train.images), train.labels
    held_out = splits.validation.select(torch.arange(2000))
    held_out_pixels, held_out_labels = to_pixel_values(held_out.images).flatten(1), held_out.labels

    torch.manual_seed(0)
    classifier = torch.nn.Linear(784, 10)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=0.01)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(classifier(pixels.flatten(1)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        classifier_accuracy = (classifier(held_out_pixels).argmax(1) == held_out_labels).float().mean().item()
    assert classifier_accuracy > 0.8  # the judge itself must be good on real digits

    config = VAEConfig(architecture="conv", conv_channels=[16, 32], latent_dim=2, num_classes=10, dropout=0.0)
    model = VAEModel(config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = seeded(0)
    for _ in range(250):
        index = torch.randint(0, len(pixels), (64,), generator=generator)
        loss = model(pixels[index], labels=labels[index], generator=generator).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 200  # nats per image; about 545 untrained

    asked = torch.arange(10).repeat_interleave(50)
    samples = model.sample(len(asked), generator=seeded(1), labels=asked).flatten(1)
    with torch.no_grad():
        predicted = classifier(samples).argmax(1)
    accuracy = (predicted == asked).float().mean().item()
    per_class = [(predicted[asked == digit] == digit).float().mean().item() for digit in range(10)]
    class_means = torch.stack([pixels[labels == digit].flatten(1).mean(0) for digit in range(10)])
    nearest_mean = (torch.cdist(samples, class_means).argmin(1) == asked).float().mean().item()
    report = f"accuracy {accuracy:.3f}, per class {[round(v, 2) for v in per_class]}, nearest mean {nearest_mean:.3f}"
    print(report)  # shown by `pytest -rP`
    assert accuracy > 0.6, report
    assert min(per_class) > 0.3, report
