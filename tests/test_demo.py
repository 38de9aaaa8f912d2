"""The demo's work without a browser (`DemoSession`: each tab on small models of both families), the saved anomaly
threshold, the `hf-vae demo` command line, and `hf-vae push --with_demo` against the local Hub server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hub_server import subprocess_env
from huggingface_hub import HfApi, hf_hub_download
from PIL import Image

from hf_vae import VAEConfig, VAEModel
from hf_vae.code_prior import build_prior
from hf_vae.configuration_hvae import HVAEConfig
from hf_vae.configuration_vqvae import VQVAEConfig
from hf_vae.demo import DemoInputError, DemoSession, saved_threshold
from hf_vae.demo_explore import latent_cloud
from hf_vae.modeling_hvae import HVAEModel
from hf_vae.modeling_vqvae import VQVAEModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _vae(latent_dim: int = 2, **overrides) -> VAEModel:
    torch.manual_seed(0)
    return VAEModel(VAEConfig(hidden_sizes=[32], latent_dim=latent_dim, **overrides)).eval()


def _pixels(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("L"), dtype=np.int16)


class SamplerRecordingVAE(VAEModel):
    """A VAE with the post-hoc sampler interface (`samplers`, `sample(..., sampler=)`) that records what it is asked."""

    samplers = ("prior", "gmm")
    asked: list[dict]

    def sample(self, num_samples, generator=None, labels=None, temperature=1.0, **keywords):
        self.asked.append(keywords)
        return super().sample(num_samples, generator=generator, labels=labels, temperature=temperature)


def test_generate_is_seeded_and_passes_the_sampler_only_when_not_the_prior():
    session = DemoSession(_vae())
    assert session.samplers == ("prior",)
    first, again, other = (session.generate(seed, 12, 1.0, None, "prior") for seed in (1, 1, 2))
    assert np.array_equal(_pixels(first), _pixels(again)) and not np.array_equal(_pixels(first), _pixels(other))
    with pytest.raises(DemoInputError, match="Unknown sampler 'gmm'"):
        session.generate(0, 4, 1.0, None, "gmm")

    torch.manual_seed(0)
    model = SamplerRecordingVAE(VAEConfig(hidden_sizes=[32], latent_dim=2)).eval()
    model.asked = []
    session = DemoSession(model)
    session.generate(0, 4, 1.0, None, "prior")
    session.generate(0, 4, 1.0, None, "gmm")
    assert model.asked == [{}, {"sampler": "gmm"}]


def test_conditional_models_draw_the_class_asked_for_or_each_class_in_turn():
    session = DemoSession(_vae(num_classes=10))
    one_class = _pixels(session.generate(0, 10, 1.0, 3, "prior"))
    every_class = _pixels(session.generate(0, 10, 1.0, None, "prior"))
    assert one_class.shape == every_class.shape == (6 * 32, 6 * (10 * 30 + 2))
    assert not np.array_equal(one_class, every_class)


def test_explore_a_plane_principal_components_and_a_hierarchy():
    model = _vae()
    cloud = latent_cloud(model, torch.rand(50, 1, 28, 28), torch.arange(50) % 10)
    session = DemoSession(model, cloud=cloud)
    assert [slider.label for slider in session.explorer.sliders] == ["z₁ (x)", "z₂ (y)"]
    x, y = session.explorer.from_map(0, 0)  # the map's top-left corner is (min x, max y)
    assert (x, y) == (session.explorer.sliders[0].minimum, session.explorer.sliders[1].maximum)
    assert session.latent_map((x, y)).size == (320, 320)
    assert np.abs(_pixels(session.explore([x, y])) - _pixels(session.explore([-x, -y]))).mean() > 0

    wide = DemoSession(_vae(latent_dim=8))  # no data: prior samples, sliders along their principal components
    assert len(wide.explorer.sliders) == 6 and wide.explorer.latent_map is None
    assert "samples of the prior" in wide.explorer.description
    assert not np.array_equal(_pixels(wide.explore([0] * 6)), _pixels(wide.explore([3, 0, 0, 0, 0, 0])))

    torch.manual_seed(0)
    hierarchy = HVAEModel(HVAEConfig(latent_dims=[4, 3, 2], hidden_sizes=[16])).eval()
    session = DemoSession(hierarchy)
    assert [name for name, _ in session.explorer.rows] == [
        "layer 3 of 3 (top latents)", "layer 2 of 3 (noise)", "layer 1 of 3 (noise)"
    ]  # fmt: skip
    assert [len(row) for _, row in session.explorer.rows] == [2, 3, 4]
    base = _pixels(session.explore([0.0] * 9))
    for index in (0, 2, 5):  # a top latent, a middle noise, a bottom noise: each changes the digit
        values = [0.0] * 9
        values[index] = 3.0
        assert not np.array_equal(_pixels(session.explore(values)), base), index


def _vqvae(num_classes: int | None = 10) -> VQVAEModel:
    """A tiny VQ-VAE (8 codes, a 7 x 7 grid) with a one-layer code prior that has class tokens."""
    torch.manual_seed(0)
    config = VQVAEConfig(conv_channels=[4, 8], num_res_blocks=0, embedding_dim=3, codebook_size=8)
    model = VQVAEModel(config)
    model.set_code_prior(build_prior(8, config.grid_size, num_classes, 1, 16, 2, 0.0))
    return model.eval()


def test_a_vqvae_explores_an_editable_code_grid():
    model = _vqvae()
    pixels = (torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    session = DemoSession(model, cloud=latent_cloud(model, pixels, torch.arange(20) % 10))
    code_grid = session.explorer.code_grid
    assert session.explorer.sliders == [] and "the code grids of 20 test images" in session.explorer.description
    grid = session.code_grid_start(4)
    assert np.array_equal(grid, model.encode(pixels[4:5]).indices[0].numpy())
    picture = _pixels(session.explore_codes(grid.tolist()))
    expected = _pixels(session.explore_codes([[str(code) for code in row] for row in grid]))  # "3" reads as 3
    assert picture.shape == (168, 168) and np.array_equal(picture, expected)
    decoded = model.decode_indices(torch.as_tensor(grid)[None]).images
    assert np.array_equal(picture, _pixels(session.explore_codes(code_grid.parse(grid.astype(float)).numpy())))
    assert torch.equal(code_grid.decode(torch.as_tensor(grid)), decoded[0])

    edited = grid.copy()
    edited[3] = (edited[3] + 1) % 8
    assert not np.array_equal(_pixels(session.explore_codes(edited)), picture)
    resampled, image = session.resample_cell(grid.tolist(), 2, 5, 7)
    changed = np.argwhere(resampled != grid)
    assert changed.tolist() == [[1, 4]] and 0 <= resampled[1, 4] < 8
    assert np.array_equal(session.resample_cell(grid.tolist(), 2, 5, 7)[0], resampled)  # seeded
    assert np.array_equal(_pixels(image), _pixels(session.explore_codes(resampled)))

    bad = grid.tolist()
    bad[0][1], bad[2][0], bad[6][6] = 1.5, "x", 8
    with pytest.raises(DemoInputError) as error:
        session.explore_codes(bad)
    assert str(error.value) == (
        "Codes must be whole numbers in [0, 8): row 1, column 2 is '1.5' (not a whole number); row 3, column 1 is "
        "'x' (not a whole number); row 7, column 7 is '8' (outside the codebook)."
    )
    for cell in (None, "", -1, float("nan"), True):
        bad = grid.tolist()
        bad[0][0] = cell
        with pytest.raises(DemoInputError, match=r"^Codes must be whole numbers in \[0, 8\): row 1, column 1 is"):
            session.explore_codes(bad)
    with pytest.raises(DemoInputError, match="The code grid must be 7 x 7 cells, got 7 x 6"):
        session.explore_codes(grid[:, :6])
    with pytest.raises(DemoInputError, match=r"a row in 1..7 and a column in 1..7, got \(8, 1\)"):
        session.resample_cell(grid.tolist(), 8, 1, 0)
    with pytest.raises(DemoInputError, match="Start image must be a number from 0 to 19, got 20"):
        session.code_grid_start(20)
    with pytest.raises(DemoInputError, match="no code grid"):
        DemoSession(_vae()).explore_codes(grid)

    without_data = DemoSession(model)  # the prior's code grids to start from
    assert without_data.explorer.code_grid.starts.shape == (16, 7, 7)
    assert "16 code grids drawn from the prior" in without_data.explorer.description


def test_a_vqvae_generates_by_class_and_scores_with_its_likelihood_bound():
    session = DemoSession(_vqvae())
    assert session.num_classes is None and session.sample_classes == 10  # the code prior's class tokens
    asked, sample = [], session.model.sample

    def recording_sample(count, labels=None, **keywords):
        asked.append(labels)
        return sample(count, labels=labels, **keywords)

    session.model.sample = recording_sample
    assert session.generate(0, 4, 1.0, 3, "prior").size == (6 * (4 * 30 + 2), 6 * 32)
    session.generate(0, 4, 1.0, None, "prior")
    assert [labels.tolist() for labels in asked] == [[3, 3, 3, 3], [0, 1, 2, 3]]  # or each class in turn
    assert DemoSession(_vqvae(num_classes=None)).sample_classes is None

    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 12:16] = 255
    seen, rebuilt, score = session.reconstruct(digit)
    assert seen.size == rebuilt.size == (168, 168)
    assert score.negative_elbo == score.iwae_nll
    assert score.reconstruction_nll + score.prior_nll == pytest.approx(score.negative_elbo, rel=1e-6)
    pixel_values, _ = session.read_image(digit)
    with torch.no_grad():
        bound = -float(session.model.log_weights(pixel_values, 1)[0, 0])
    assert score.negative_elbo == pytest.approx(bound, rel=1e-5)
    text = score.markdown()
    assert text.startswith("**Likelihood bound:**") and "IWAE" in text and "Negative ELBO" not in text
    assert session.interpolate(digit, digit, 4).size == (6 * (4 * 30 + 2), 6 * 32)


def test_reconstruct_scores_against_the_threshold(tmp_path):
    session = DemoSession(_vae(), threshold={"threshold": 1e6, "method": "elbo"})
    digit = np.zeros((56, 56), np.uint8)
    digit[10:46, 24:32] = 255
    Image.fromarray(digit).save(tmp_path / "digit.png")
    seen, rebuilt, score = session.reconstruct(str(tmp_path / "digit.png"))
    assert seen.size == rebuilt.size == (168, 168)
    assert 0 < score.iwae_nll <= score.negative_elbo + 1.0
    assert score.is_anomaly is False and "normal (elbo score" in score.markdown()
    # A drawing: black strokes on a transparent canvas, as the sketchpad sends it, reads as a light digit on black.
    sketch = np.zeros((280, 280, 4), np.uint8)
    sketch[50:230, 120:160] = (0, 0, 0, 255)
    pixel_values, notes = session.read_image({"background": None, "layers": [], "composite": sketch})
    assert pixel_values[0, 0, 14, 14] == 1.0 and pixel_values[0, 0, 2, 2] == 0.0
    assert notes == []
    upload = np.full((40, 40), 255, np.uint8)
    upload[5:35, 18:22] = 0  # a dark digit on white paper, uploaded: inverted, and said so
    pixel_values, notes = session.read_image(upload)
    assert pixel_values[0, 0, 14, 14] == 1.0 and pixel_values[0, 0, 2, 2] == 0.0
    assert notes == ["Light background: inverted to a light digit on black, as the model was trained."]
    assert DemoSession(_vae()).reconstruct(str(tmp_path / "digit.png"))[2].is_anomaly is None


def test_bad_inputs_are_readable_errors_or_warnings(tmp_path):
    session = DemoSession(_vae())
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(DemoInputError, match=r"Cannot use this file: it is damaged or not an image .*'notes.png'"):
        session.reconstruct(str(tmp_path / "notes.png"))
    Image.new("L", (5000, 4000)).save(tmp_path / "huge.png")
    with pytest.raises(DemoInputError, match="5000x4000 pixels .* over the 16.8-megapixel limit"):
        session.reconstruct(str(tmp_path / "huge.png"))
    Image.new("RGB", (30, 30), (220, 20, 20)).save(tmp_path / "photo.png")
    notes = session.reconstruct(str(tmp_path / "photo.png"))[2].notes
    assert "This model was trained on grey digits: the colour image was converted to grey." in notes
    with pytest.raises(DemoInputError, match="No image"):
        session.reconstruct(None)
    with pytest.raises(DemoInputError, match="The sketchpad is empty"):
        session.reconstruct({"background": None, "layers": [], "composite": np.zeros((280, 280, 4), np.uint8)})
    with pytest.raises(DemoInputError, match="Steps must be between 2 and 32"):
        session.interpolate(str(tmp_path / "photo.png"), str(tmp_path / "photo.png"), 1)
    assert session.interpolate(str(tmp_path / "photo.png"), str(tmp_path / "photo.png"), 4).size == (
        6 * (4 * 30 + 2), 6 * 32
    )  # fmt: skip


def test_saved_threshold_is_read_from_evaluation_json(tmp_path):
    assert saved_threshold(str(tmp_path)) is None
    (tmp_path / "evaluation.json").write_text(json.dumps({"negative_elbo": 90.0}))
    assert saved_threshold(str(tmp_path)) is None
    (tmp_path / "evaluation.json").write_text(json.dumps({"anomaly": {"threshold": 123.5, "method": "iwae"}}))
    assert saved_threshold(str(tmp_path)) == {"threshold": 123.5, "method": "iwae"}


def test_demo_command_line_errors(tmp_path):
    def demo(*args: str) -> subprocess.CompletedProcess:
        command = [str(Path(sys.executable).with_name("hf-vae")), "demo", *args]  # the script: no eager imports
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    bad_port = demo(str(tmp_path), "--port", "70000")
    assert bad_port.returncode == 2 and "--port 70000 is not a port number" in bad_port.stderr
    missing = demo(str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "No model folder" in missing.stderr and "gradio" not in missing.stderr


def test_push_with_demo_creates_a_gradio_space(hub_server, hub_token, hub_repo_id, tmp_path):
    model = tmp_path / "model"
    _vae().save_pretrained(model)
    env = subprocess_env(hub_server, hub_token, tmp_path / "hf_home")
    hf_vae = Path(sys.executable).with_name("hf-vae")
    pushed = subprocess.run(
        [str(hf_vae), "push", str(model), "--repo_id", hub_repo_id, "--with_demo"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    space_id = f"{hub_repo_id}-demo"
    assert f"Demo Space: {hub_server}/spaces/{space_id}" in pushed.stdout
    api = HfApi(endpoint=hub_server, token=hub_token)
    assert {"preprocessor_config.json", "image_processing_vae.py"} <= set(api.list_repo_files(hub_repo_id))
    files = set(api.list_repo_files(space_id, repo_type="space"))
    assert {"app.py", "requirements.txt", "README.md"} <= files

    def read(name: str) -> str:
        path = hf_hub_download(space_id, name, repo_type="space", endpoint=hub_server, cache_dir=tmp_path / "c")
        return Path(path).read_text(encoding="utf-8")

    front = yaml.safe_load(read("README.md").split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py" and front["models"] == [hub_repo_id]
    app = read("app.py")
    compile(app, "app.py", "exec")
    assert f"launch({hub_repo_id!r}" in app and "from hf_vae.demo import launch" in app
    assert read("requirements.txt").startswith("hf-vae[demo]")

    no_demo = subprocess.run(
        [str(hf_vae), "push", str(model), "--repo_id", hub_repo_id, "--space_id", "x/y"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert no_demo.returncode == 2 and "pass --with_demo too" in no_demo.stderr
