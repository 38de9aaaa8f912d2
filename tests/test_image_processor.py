"""`VAEImageProcessor`: every kind of input gives the model's pixel_values, binarisation follows evaluation, decoder
outputs come back as PIL images, and the processor is saved with (and found beside) every model, old folders
included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor

from hf_vae import VAEConfig, VAEImageProcessor, VAEModel
from hf_vae.data import ImageTensors, evaluation_images
from hf_vae.families import remote_code_files
from hf_vae.image_processing_vae import ImageDecodeError

GREY = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 251


def test_every_input_type_gives_the_same_pixel_values(tmp_path):
    processor = VAEImageProcessor()
    Image.fromarray(GREY).save(tmp_path / "digit.png")
    inputs = [
        Image.fromarray(GREY),
        GREY,
        GREY.astype(np.float32) / 255,
        torch.from_numpy(GREY),
        torch.from_numpy(GREY).float().div(255).unsqueeze(0),
        str(tmp_path / "digit.png"),
        (tmp_path / "digit.png").read_bytes(),
        Image.fromarray(GREY).convert("RGB"),
    ]
    expected = torch.from_numpy(GREY).float().div(255).view(1, 1, 28, 28)
    for item in inputs:
        pixel_values = processor(item, return_tensors="pt").pixel_values
        assert pixel_values.dtype == torch.float32
        torch.testing.assert_close(pixel_values, expected, atol=1 / 255, rtol=0)
    batch = processor(inputs, return_tensors="pt").pixel_values
    assert batch.shape == (len(inputs), 1, 28, 28)
    assert processor(torch.rand(5, 1, 28, 28)).pixel_values.shape == (5, 1, 28, 28)
    assert processor(np.zeros((3, 28, 28), np.uint8), return_tensors="np").pixel_values.shape == (3, 1, 28, 28)


def test_sizes_and_colour_modes_are_converted():
    grey = VAEImageProcessor(image_size=16)
    rgb = VAEImageProcessor(image_size=16, num_channels=3)
    photo = Image.new("RGB", (64, 40), (255, 0, 0))
    assert grey(photo).pixel_values.shape == (1, 1, 16, 16)
    assert rgb(photo).pixel_values.shape == (1, 3, 16, 16)
    assert rgb(photo).pixel_values[0, :, 8, 8].tolist() == [1.0, 0.0, 0.0]
    rgba = Image.new("RGBA", (20, 20), (255, 255, 255, 0))
    palette = Image.new("P", (20, 20))
    sixteen = Image.fromarray(np.full((20, 20), 65535, dtype=np.uint16))
    assert grey([rgba, palette, sixteen]).pixel_values[:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0]


def test_binarisation_is_the_evaluation_draw():
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    processor = VAEImageProcessor(binarize="dynamic", seed=3)
    drawn = processor(list(images)).pixel_values
    expected = evaluation_images(ImageTensors(images), "dynamic", seed=3).images.float() / 255
    assert torch.equal(drawn, expected)
    assert set(drawn.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(processor(list(images), seed=4).pixel_values, drawn)
    grey = processor(list(images), binarize=False).pixel_values
    assert torch.equal(grey, images.float() / 255)


def test_bad_inputs_are_one_line_errors():
    processor = VAEImageProcessor(max_image_pixels=100 * 100)
    with pytest.raises(ImageDecodeError, match="not an image PIL can decode"):
        processor(b"not an image")
    with pytest.raises(ImageDecodeError, match=r"101x100 pixels \(0.0101 megapixels\), over the 0.01-megapixel limit"):
        processor(Image.new("L", (101, 100)))
    with pytest.raises(ImageDecodeError, match=r"image 1: its float pixels span \[2, 2\]"):
        processor([GREY, np.full((4, 4), 2.0)])
    with pytest.raises(ImageDecodeError, match="is not an image"):
        processor(np.zeros((2, 3, 4, 5, 6)))
    with pytest.raises(ValueError, match="binarize must be one of"):
        VAEImageProcessor(binarize="sometimes")


def test_postprocess_returns_pil_images_of_the_decoder_output():
    processor = VAEImageProcessor()
    model = VAEModel(VAEConfig(hidden_sizes=[16], latent_dim=2)).eval()
    decoded = model.decode(torch.zeros(3, 2))
    pictures = processor.postprocess(decoded)
    assert [(picture.mode, picture.size) for picture in pictures] == [("L", (28, 28))] * 3
    again = processor(pictures).pixel_values
    torch.testing.assert_close(again, decoded.images, atol=0.5 / 255 + 1e-6, rtol=0)
    colour = VAEImageProcessor(num_channels=3).postprocess(torch.rand(3, 8, 8))
    assert colour[0].mode == "RGB"
    assert processor.postprocess(torch.rand(2, 1, 4, 4), output_type="np").shape == (2, 4, 4, 1)


def test_saved_with_the_model_and_found_by_auto_image_processor(tmp_path):
    config = VAEConfig(hidden_sizes=[16], latent_dim=2, image_size=16, binarize="dynamic")
    model = VAEModel(config)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "VAEImageProcessor"
    assert (saved["image_size"], saved["num_channels"], saved["binarize"]) == (16, 1, "dynamic")
    assert saved["auto_map"] == {"AutoImageProcessor": "image_processing_vae.VAEImageProcessor"}
    assert "image_processing_vae.py" in remote_code_files("hf_vae")
    assert (tmp_path / "image_processing_vae.py").is_file()
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(processor) is VAEImageProcessor and processor.image_size == 16
    loaded = VAEModel.from_pretrained(tmp_path)
    assert VAEImageProcessor.for_model(loaded).to_dict() == processor.to_dict()


def test_models_saved_before_processors_fall_back_to_their_config(tmp_path):
    model = VAEModel(VAEConfig(hidden_sizes=[16], latent_dim=2, binarize="static"))
    model.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").unlink()
    processor = VAEImageProcessor.for_model(VAEModel.from_pretrained(tmp_path))
    assert (processor.image_size, processor.num_channels, processor.binarize) == (28, 1, "static")


def test_a_processor_that_contradicts_the_model_is_refused(tmp_path):
    VAEModel(VAEConfig(hidden_sizes=[16], latent_dim=2)).save_pretrained(tmp_path)
    VAEImageProcessor(image_size=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="preprocessor_config.json makes 1-channel 32px images"):
        VAEImageProcessor.for_model(VAEModel.from_pretrained(tmp_path))


def test_committed_models_carry_a_processor_matching_their_config():
    from pathlib import Path

    from hf_vae.families import FAMILIES, config_class, model_type_of

    pretrained = Path(__file__).resolve().parents[1] / "pretrained"
    folders = sorted(path.parent for path in pretrained.glob("*/config.json") if model_type_of(path.parent) in FAMILIES)
    assert len(folders) >= 7  # the VAEs of every family, not the feature network
    for folder in folders:
        processor = AutoImageProcessor.from_pretrained(folder)
        config = config_class(model_type_of(folder)).from_pretrained(folder)
        assert type(processor) is VAEImageProcessor, folder.name
        expected = (config.image_size, config.num_channels, config.binarize)
        assert (processor.image_size, processor.num_channels, processor.binarize) == expected, folder.name
