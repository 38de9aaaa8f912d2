"""`hf-vae convert`: tutorial checkpoints become hf-vae models that compute the same thing, and nothing unsafe,
broken or foreign is ever converted or half-written."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from datetime import datetime

import huggingface_hub
import pytest
import torch

from hf_vae import VAEModel, __version__
from hf_vae.cli import main as cli_main
from hf_vae.convert import (
    DEFAULT_FILENAME,
    TOLERANCE,
    ConversionError,
    TutorialVAE,
    convert_checkpoint,
    convert_state_dict,
    file_sha256,
    max_differences,
    resolve_source,
)

DEFAULT_ARGS = {"input_dim": 784, "latent_dim": 2, "hidden_dim": 256, "beta": 1.0}
# The tutorial's own suggested variants.
VARIANTS = {
    "default": DEFAULT_ARGS,
    "beta-vae": {**DEFAULT_ARGS, "latent_dim": 10, "beta": 4.0},
    "wide": {**DEFAULT_ARGS, "hidden_dim": 512, "latent_dim": 64},
}


def main(argv: list[str]) -> int:
    """`hf-vae convert ...` in this process, as the command line runs it."""
    return cli_main(["convert", *argv])


def trained_tutorial(arguments: dict, steps: int = 8, seed: int = 0) -> TutorialVAE:
    """The tutorial's module after a few Adam steps on synthetic images, so that weights and BatchNorm statistics
    are far from their initial values."""
    torch.manual_seed(seed)
    model = TutorialVAE(**arguments)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # Sparse bright strokes on a dark background, roughly like MNIST's pixel statistics.
    images = (torch.rand(steps * 32, arguments["input_dim"]) > 0.8).float() * torch.rand(1)
    model.train()
    for batch in images.split(32):
        recon, mu, logvar = model(batch)
        loss = model.loss_function(recon, batch, mu, logvar)[0] / len(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save_tutorial(model: TutorialVAE, path, layout: str = "dict") -> None:
    """Save as the tutorial does (`model_state_dict` + `model_config`), or as a bare state dict."""
    if layout == "bare":
        torch.save(model.state_dict(), path)
        return
    config = {"input_dim": model.input_dim, "latent_dim": model.latent_dim, "hidden_dim": None, "beta": model.beta}
    config["hidden_dim"] = model.encoder[0].out_features
    torch.save({"model_state_dict": model.state_dict(), "model_config": config}, path)


@pytest.fixture(scope="module")
def tutorial() -> TutorialVAE:
    return trained_tutorial(DEFAULT_ARGS)


@pytest.fixture
def checkpoint(tmp_path, tutorial):
    path = tmp_path / "best_vae_model.pth"
    save_tutorial(tutorial, path)
    return path


def assert_same_network(tutorial: TutorialVAE, model: VAEModel) -> None:
    inputs = torch.rand(64, tutorial.input_dim, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        mu, logvar = tutorial.encode(inputs)
        ours = model.encode(inputs)
        torch.testing.assert_close(ours.mean, mu, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(ours.logvar, logvar, atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(model.decode(mu).images.flatten(1), tutorial.decode(mu), atol=TOLERANCE, rtol=0)


# ---------------------------------------------------------------------------------------------- conversions
@pytest.mark.parametrize("layout", ["dict", "bare"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_converted_model_computes_what_the_tutorial_computes(tmp_path, variant, layout):
    arguments = VARIANTS[variant]
    tutorial = trained_tutorial(arguments)
    path = tmp_path / "best_vae_model.pth"
    save_tutorial(tutorial, path, layout)

    result = convert_checkpoint(path, tmp_path / "out", beta=arguments["beta"] if layout == "bare" else None)
    assert max(result.differences.values()) <= TOLERANCE

    model = VAEModel.from_pretrained(tmp_path / "out")
    assert not model.training
    config = model.config
    assert (config.image_size, config.num_channels, config.latent_dim) == (28, 1, arguments["latent_dim"])
    assert config.hidden_sizes == [arguments["hidden_dim"], arguments["hidden_dim"] // 2]
    assert (config.beta, config.dropout, config.use_batch_norm, config.binarize) == (
        arguments["beta"],
        0.2,
        True,
        "none",
    )
    our_state = model.state_dict()
    for key, value in convert_state_dict(tutorial.state_dict()).items():
        assert torch.equal(our_state[key], value), key
    assert tutorial.encoder[1].num_batches_tracked.item() == 8
    assert not torch.allclose(tutorial.encoder[1].running_var, torch.ones_like(tutorial.encoder[1].running_var))
    assert_same_network(tutorial, model)


def test_loss_matches_the_tutorial_loss_at_the_posterior_mean(tmp_path, checkpoint, tutorial):
    convert_checkpoint(checkpoint, tmp_path / "out")
    model = VAEModel.from_pretrained(tmp_path / "out")
    images = (torch.rand(128, 784, generator=torch.Generator().manual_seed(5)) > 0.7).float()
    with torch.no_grad():
        mu, logvar = tutorial.encode(images)
        expected = tutorial.loss_function(tutorial.decode(mu), images, mu, logvar)[0] / len(images)
        ours = model(images, sample_posterior=False).loss
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-3)


def test_legacy_torch_save_format_is_read(tmp_path, tutorial):
    path = tmp_path / "old.pth"
    torch.save(
        {"model_state_dict": tutorial.state_dict(), "model_config": DEFAULT_ARGS},
        path,
        _use_new_zipfile_serialization=False,
    )
    convert_checkpoint(path, tmp_path / "out")
    assert_same_network(tutorial, VAEModel.from_pretrained(tmp_path / "out"))


def test_output_folder_is_a_model_folder_with_a_card(tmp_path, checkpoint):
    result = convert_checkpoint(checkpoint, tmp_path / "out")
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "README.md", "modeling_vae.py", "configuration_vae.py"} <= {
        path.name for path in out.iterdir()
    }
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoModel"] == "modeling_vae.VAEModel"
    card = huggingface_hub.ModelCard.load(out / "README.md")
    assert card.data.library_name == "hf-vae"
    assert {"vae", "generative", "converted"} <= set(card.data.tags)
    assert card.data.license is None  # the weights are under their source's terms, not hf-vae's
    assert result.sha256 in card.text and "the local file `best_vae_model.pth`" in card.text
    assert "## Converted from" in card.text and "| decoded probabilities | 0 |" in card.text
    assert len(result.sha256) == 64
    assert 'VAEModel.from_pretrained("out")' in card.text
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []
    assert "`conversion.json`" in card.text and "`modeling_vae.py`" in card.text  # the files section


def test_conversion_json_records_the_provenance(tmp_path, checkpoint):
    result = convert_checkpoint(checkpoint, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "conversion.json").read_text())
    date = record.pop("date")
    assert record == {
        "converter": "hf-vae convert",
        "hf_vae_version": __version__,
        "source": {"kind": "file", "filename": "best_vae_model.pth"},  # never the local path: the file is uploaded
        "sha256": file_sha256(checkpoint),
        "layout": "tutorial dict",
        "ignored_entries": [],
        "tutorial_arguments": DEFAULT_ARGS,
        "max_differences": result.differences,
        "tolerance": TOLERANCE,
        "num_inputs": 256,
    }
    assert datetime.fromisoformat(date).tzinfo is not None


def test_cli(tmp_path, checkpoint, capsys):
    assert main([str(checkpoint), "--output_dir", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "tutorial dict" in printed and "latent_dim=2" in printed and "probabilities 0" in printed
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_local_folder_source_uses_filename(tmp_path, tutorial):
    repo = tmp_path / "VariationalAutoencoders"
    (repo / "vae_logs_latent2_beta1.0").mkdir(parents=True)
    save_tutorial(tutorial, repo / "vae_logs_latent2_beta1.0" / "best_vae_model.pth")
    path, source = resolve_source(str(repo))
    assert path == repo / "vae_logs_latent2_beta1.0" / "best_vae_model.pth"
    assert source == {"kind": "file", "filename": DEFAULT_FILENAME}
    with pytest.raises(ConversionError, match="folder without 'other.pth'"):
        resolve_source(str(repo), filename="other.pth")


def test_missing_local_file_and_bad_repo_id(tmp_path):
    with pytest.raises(ConversionError, match="No such file"):
        resolve_source(str(tmp_path / "best_vae_model.pth"))
    with pytest.raises(ConversionError, match="neither an existing file or folder nor a valid Hub repo id"):
        resolve_source("not/a/repo/id")


def test_offline_hub_says_to_download_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["someone/tutorial-vae-not-cached", "--output_dir", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "offline mode is on" in error and "pass its local path as SOURCE" in error
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------- safety
class _CreatesFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Custom:
    pass


def test_code_in_the_pickle_is_refused_and_never_runs(tmp_path, tutorial):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": tutorial.state_dict(), "model_config": _CreatesFile(marker)}, path)
    with pytest.raises(ConversionError, match=r"Refused evil\.pth.*open.*weights_only=True"):
        convert_checkpoint(path, tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_pickled_class_is_refused(tmp_path, tutorial):
    path = tmp_path / "custom.pth"
    torch.save({"model_state_dict": tutorial.state_dict(), "extra": _Custom()}, path)
    with pytest.raises(ConversionError, match="_Custom"):
        convert_checkpoint(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _edit_state_dict(edit):
    def write(path, tutorial):
        state = {key: value.clone() for key, value in tutorial.state_dict().items()}
        edit(state)
        torch.save({"model_state_dict": state, "model_config": DEFAULT_ARGS}, path)

    return write


def _write_bytes(data: bytes):
    def write(path, tutorial):
        path.write_bytes(data)

    return write


def _truncated(path, tutorial):
    save_tutorial(tutorial, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


BAD_CHECKPOINTS = {
    "truncated": (_truncated, r"truncated or corrupted"),
    "empty": (_write_bytes(b""), r"is empty"),
    "random bytes": (_write_bytes(random.Random(0).randbytes(4096)), r"not a PyTorch checkpoint"),
    "json": (_write_bytes(json.dumps({"model_state_dict": {}}).encode()), r"not a PyTorch checkpoint"),
    "list": (lambda path, tutorial: torch.save([1, 2], path), r"holds a list"),
    "foreign dict": (
        lambda path, tutorial: torch.save({"epoch": 3, "lr": 1e-3}, path),
        r"no 'model_state_dict'",
    ),
    "missing key": (_edit_state_dict(lambda state: state.pop("decoder.8.bias")), r"missing keys: \['decoder.8.bias'\]"),
    "unexpected key": (
        _edit_state_dict(lambda state: state.update({"decoder.10.weight": torch.ones(3)})),
        r"unexpected keys: \['decoder.10.weight'\]",
    ),
    "wrong shape": (
        _edit_state_dict(lambda state: state.update({"encoder.4.weight": torch.zeros(128, 255)})),
        r"encoder.4.weight has shape \(128, 255\), expected \(128, 256\)",
    ),
    "not finite": (
        _edit_state_dict(lambda state: state["decoder.4.bias"].fill_(float("nan"))),
        r"decoder.4.bias is not a finite",
    ),
    "config contradicts weights": (
        lambda path, tutorial: torch.save(
            {"model_state_dict": tutorial.state_dict(), "model_config": {**DEFAULT_ARGS, "latent_dim": 10}}, path
        ),
        r"model_config says latent_dim=10 but fc_mu.weight has shape \(2, 128\)",
    ),
    "unknown config key": (
        lambda path, tutorial: torch.save(
            {"model_state_dict": tutorial.state_dict(), "model_config": {**DEFAULT_ARGS, "depth": 3}}, path
        ),
        r"'model_config' has keys \['depth'\]",
    ),
    "overflowing weights": (
        _edit_state_dict(lambda state: state["fc_mu.weight"].fill_(3e38)),
        r"non-finite outputs",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_refused_and_nothing_is_written(tmp_path, tutorial, case):
    write, message = BAD_CHECKPOINTS[case]
    path = tmp_path / "best_vae_model.pth"
    write(path, tutorial)
    out = tmp_path / "new" / "models" / "out"
    with pytest.raises(ConversionError, match=message):
        convert_checkpoint(path, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_vae_model.pth"]


def test_non_square_input_dim_is_refused(tmp_path):
    tutorial = trained_tutorial({**DEFAULT_ARGS, "input_dim": 500, "hidden_dim": 16}, steps=1)
    save_tutorial(tutorial, tmp_path / "ckpt.pth")
    with pytest.raises(ConversionError, match="input_dim=500 is not the pixel count of a square greyscale image"):
        convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_beta_flag_contradicting_the_checkpoint_is_refused(tmp_path, checkpoint):
    with pytest.raises(ConversionError, match="contradicts"):
        convert_checkpoint(checkpoint, tmp_path / "out", beta=4.0)


# ---------------------------------------------------------------------------------------------- the output folder
def test_non_empty_output_dir_needs_overwrite(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match="not empty; pass --overwrite"):
        convert_checkpoint(checkpoint, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    convert_checkpoint(checkpoint, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_vae_model.pth", "out"]


def test_empty_output_dir_is_used(tmp_path, checkpoint):
    (tmp_path / "out").mkdir()
    convert_checkpoint(checkpoint, tmp_path / "out")
    assert (tmp_path / "out" / "config.json").is_file()


def test_overwrite_never_deletes_the_source(tmp_path, checkpoint):
    for overwrite in (False, True):
        with pytest.raises(ConversionError, match="contains .*best_vae_model.pth, which converting must not replace"):
            convert_checkpoint(checkpoint, tmp_path, overwrite=overwrite)
    assert checkpoint.is_file()


def test_check_detects_a_wrong_conversion(tmp_path, checkpoint, tutorial):
    convert_checkpoint(checkpoint, tmp_path / "out")
    model = VAEModel.from_pretrained(tmp_path / "out")
    assert max(max_differences(tutorial, model).values()) == 0
    with torch.no_grad():
        model.decoder.layers[5].running_var.mul_(1.01)
    differences = max_differences(tutorial, model)
    assert differences["probabilities"] > TOLERANCE
    assert differences["mean"] == 0


# ---------------------------------------------------------------------------------------------- from the Hub
def test_converts_a_checkpoint_from_a_hub_repo(
    tmp_path, checkpoint, tutorial, hub_server, hub_token, hub_repo_id, hub_env
):
    """The tutorial's layout on the Hub (`<repo>/vae_logs_latent2_beta1.0/best_vae_model.pth`, an LFS file),
    uploaded with the real client to the local Hub-compatible server, converted by the real CLI from its repo id."""
    api = huggingface_hub.HfApi(endpoint=hub_server, token=hub_token)
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj=checkpoint, path_in_repo=DEFAULT_FILENAME, repo_id=hub_repo_id)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hf_vae.cli", "convert", hub_repo_id, "--output_dir", str(out)]
    run = subprocess.run(command, env=hub_env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    sha256 = file_sha256(checkpoint)
    assert sha256 in run.stdout
    card = (out / "README.md").read_text()
    assert f"https://huggingface.co/{hub_repo_id}" in card and DEFAULT_FILENAME in card and sha256 in card
    record = json.loads((out / "conversion.json").read_text())
    assert record["sha256"] == sha256
    assert record["source"] == {"kind": "hub", "repo_id": hub_repo_id, "filename": DEFAULT_FILENAME, "revision": "main"}
    assert_same_network(tutorial, VAEModel.from_pretrained(out))

    hub = {"token": hub_token, "cache_dir": tmp_path / "cache", "endpoint": hub_server}
    path, source = resolve_source(hub_repo_id, **hub)
    assert file_sha256(path) == sha256
    assert source == {"kind": "hub", "repo_id": hub_repo_id, "filename": DEFAULT_FILENAME, "revision": "main"}
    with pytest.raises(ConversionError, match="has no such file; pass the right --filename"):
        resolve_source(hub_repo_id, filename="vae_logs_latent10_beta4.0/best_vae_model.pth", **hub)
    with pytest.raises(ConversionError, match="no such repo, or it is private"):
        resolve_source(f"{hub_repo_id}-missing", **hub)
    with pytest.raises(ConversionError, match="has no revision 'v2'"):
        resolve_source(hub_repo_id, revision="v2", **hub)


@pytest.mark.parametrize(("offset", "refused"), [(1e-3, True), (1e-8, False)])
def test_a_difference_above_the_tolerance_is_refused_and_nothing_is_written(
    tmp_path, checkpoint, monkeypatch, offset, refused
):

    """The check that guards every conversion: converted weights that make the network differ from the tutorial's by
    more than 1e-5 are refused (here a fault is injected into the key mapping), and nothing is written; a difference
    far below the tolerance converts."""
    from hf_vae import convert

    original = convert.convert_state_dict

    def shifted(state_dict):
        converted = original(state_dict)
        converted["decoder.layers.8.bias"] = converted["decoder.layers.8.bias"] + offset
        return converted

    monkeypatch.setattr(convert, "convert_state_dict", shifted)
    if not refused:
        assert max(convert_checkpoint(checkpoint, tmp_path / "out").differences.values()) <= TOLERANCE
        return
    with pytest.raises(ConversionError, match=r"disagrees with the tutorial's network .*tolerance 1e-05.*Nothing was"):
        convert_checkpoint(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["best_vae_model.pth"]
