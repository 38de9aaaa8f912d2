"""Hub push and pull against the local Hub-compatible server (tests/hub_server.py), with the real huggingface_hub
client and transformers: no mocks.

Loading from the Hub runs in fresh subprocesses with an empty HF_HOME (huggingface_hub reads HF_ENDPOINT and
HF_HUB_OFFLINE at import); pushes run through the `hf-vae push` command / the script, or in this process with an
explicit `endpoint=`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from hub_server import DEFAULT_USER, run_hub_server, subprocess_env
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, hf_hub_download
from huggingface_hub.hf_api import RepoFile
from PIL import Image
from safetensors.torch import load_file

from hf_vae import VAEConfig, VAEModel
from hf_vae.convert import TutorialVAE, convert_checkpoint
from hf_vae.hub import HubPushError, collect_files, push_to_hub
from hf_vae.model_card import build_model_card, write_model_card

REPO_ROOT = Path(__file__).resolve().parents[1]
HF_VAE_CLI = Path(sys.executable).with_name("hf-vae")
EVALUATION = {
    "negative_elbo": 148.6123,
    "reconstruction": 143.01,
    "kl": 5.6023,
    "iwae_nll": 144.25,
    "bits_per_dim": 0.2653,
    "active_units": 2,
    "iwae_samples": 1000,
    "binarize": "dynamic",
    "split": "test",
    "dataset": "ylecun/mnist",
    "num_images": 10000,
    "model": "/home/someone/private/out",  # a local path: never shown in a public card
    "standard_errors": {"negative_elbo": 0.3512, "iwae_nll": 0.3398},
    "per_class": {"0": {"negative_elbo": 120.5, "iwae_nll": 117.25, "count": 980}},
}
PICTURES = ("samples.png", "reconstructions.png", "latent_space.png", "training_curves.png")
# What a push must leave out of the repo.
LOCAL_ONLY = ("checkpoints/step_2/model.safetensors", "checkpoint-5/state.bin", ".hidden/x.json", ".DS_Store", "a.tmp")


def make_model_folder(path: Path, *, seed: int = 0, num_classes: int | None = None, extras: bool = True) -> Path:
    """A small model folder like `hf-vae train` writes, with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = VAEModel(VAEConfig(hidden_sizes=[32, 16], latent_dim=2, num_classes=num_classes, binarize="dynamic"))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.num_batches_tracked.fill_(seed + 7)
    model.save_pretrained(path)
    if not extras:
        return path
    with (path / "metrics.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            "epoch,train_loss,train_recon_loss,train_kl_loss,val_loss,val_recon_loss,val_kl_loss,learning_rate,"
            "epoch_time".split(",")
        )
        writer.writerow([1, 188.36, 181.2, 7.16, 164.15, 158.1, 6.05, 0.001, 3.9])
        writer.writerow([2, 160.21, 151.3, 8.91, 158.7, 151.0, 7.7, 0.001, 3.8])
    (path / "training_args.json").write_text(
        json.dumps({"dataset_name": "ylecun/mnist", "num_train_epochs": 2, "learning_rate": 1e-3, "seed": seed})
    )
    (path / "train_results.json").write_text(json.dumps({"train_loss": 160.21, "epoch": 2}))
    (path / "eval_results.json").write_text(json.dumps({"eval_loss": 158.7}))
    (path / "evaluation.json").write_text(json.dumps(EVALUATION))
    for index, name in enumerate(PICTURES):
        Image.new("L", (28, 28), color=40 * index).save(path / name)
    for relative in LOCAL_ONLY:
        (path / relative).parent.mkdir(parents=True, exist_ok=True)
        (path / relative).write_bytes(b"local only")
    return path


def make_converted_folder(path: Path) -> Path:
    """A folder written by `hf-vae convert` from a (randomly initialised) tutorial checkpoint."""
    torch.manual_seed(0)
    checkpoint = path.with_name("best_vae_model.pth")
    config = {"input_dim": 784, "latent_dim": 2, "hidden_dim": 32, "beta": 1.0}
    torch.save({"model_state_dict": TutorialVAE(**config).state_dict(), "model_config": config}, checkpoint)
    convert_checkpoint(checkpoint, path)
    return path


def folder_state(path: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file: equal before and after means untouched."""
    return {
        file.relative_to(path).as_posix(): (hashlib.sha256(file.read_bytes()).hexdigest(), file.stat().st_mtime_ns)
        for file in sorted(path.rglob("*"))
        if file.is_file()
    }


def run(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def run_python(code: str, env: dict[str, str], cwd: Path, *args: str, isolated: bool = False):
    script = cwd / "child.py"
    script.write_text(textwrap.dedent(code))
    return run([sys.executable, *(["-I"] if isolated else []), str(script), *args], env, cwd=cwd)


def assert_same_weights(saved: Path, reference: Path) -> None:
    loaded, expected = load_file(saved), load_file(reference)
    assert loaded.keys() == expected.keys()
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def published(hub_server, hub_token, tmp_path_factory):
    """Version 1 pushed with `hf-vae push` (in a subprocess), then version 2 pushed in this process."""
    assert constants.HF_HUB_DISABLE_XET, "conftest.py must set HF_HUB_DISABLE_XET=1 before huggingface_hub loads"
    root = tmp_path_factory.mktemp("published")
    v1, v2 = make_model_folder(root / "v1", seed=1), make_model_folder(root / "v2", seed=2)
    repo_id = f"{DEFAULT_USER}/tiny-vae"
    before = folder_state(v1)
    env = subprocess_env(hub_server, hub_token, root / "push_home")
    cli = run([str(HF_VAE_CLI), "push", "--model_dir", str(v1), "--repo_id", repo_id], env)
    assert cli.returncode == 0, cli.stderr
    api = HfApi(endpoint=hub_server, token=hub_token)
    v1_commits = api.list_repo_commits(repo_id)
    second = push_to_hub(v2, repo_id, token=hub_token, endpoint=hub_server, commit_message="Version 2")
    return SimpleNamespace(
        repo_id=repo_id,
        v1=v1,
        v2=v2,
        before=before,
        after=folder_state(v1),
        cli=cli,
        api=api,
        v1_commits=v1_commits,
        v1_oid=v1_commits[0].commit_id,
        v2_oid=second.oid,
    )


@pytest.fixture(scope="module")
def downloaded(published, hub_server, tmp_path_factory):
    """Pull in fresh processes sharing one initially empty HF_HOME: hf-vae's class (latest and pinned to version
    1), then `AutoModel` with `trust_remote_code` in a process that cannot import hf_vae."""
    root = tmp_path_factory.mktemp("pull")
    hf_home = root / "hf_home"
    env = subprocess_env(hub_server, None, hf_home)  # public repo: no token needed to pull
    pulled = run_python(
        """
        import sys
        from safetensors.torch import save_file
        from hf_vae import VAEModel

        repo_id, v1_oid = sys.argv[1:3]
        save_file(VAEModel.from_pretrained(repo_id).state_dict(), "latest.safetensors")
        save_file(VAEModel.from_pretrained(repo_id, revision=v1_oid).state_dict(), "pinned.safetensors")
        """,
        env,
        root,
        published.repo_id,
        published.v1_oid,
    )
    remote_root = root / "remote_code"
    remote_root.mkdir()
    remote = run_python(
        """
        import re
        import sys

        sys.modules["hf_vae"] = None  # hf_vae is installed (editable) in this environment: block it
        try:
            import hf_vae  # noqa: F401
        except ImportError:
            pass
        else:
            sys.exit("hf_vae is importable")

        from huggingface_hub import hf_hub_download
        from safetensors.torch import save_file
        from transformers import AutoModel

        repo_id = sys.argv[1]
        model = AutoModel.from_pretrained(repo_id, trust_remote_code=True)
        save_file(model.state_dict(), "remote.safetensors")
        print("class module:", type(model).__module__)
        from PIL import Image
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(repo_id, trust_remote_code=True)
        pixels = processor(Image.new("RGB", (40, 30), (255, 255, 255)), return_tensors="pt").pixel_values
        print("processor:", type(processor).__module__, tuple(pixels.shape), float(pixels.min()))

        # The card's own snippets, as written: loading without hf-vae, then sampling / encoding / decoding.
        card = open(hf_hub_download(repo_id, "README.md"), encoding="utf-8").read()
        blocks = re.findall(r"```python\\n(.*?)```", card, re.DOTALL)
        namespace = {}
        exec(blocks[1], namespace)
        exec(blocks[2], namespace)
        print("snippet images:", tuple(namespace["images"].shape), tuple(namespace["decoded"].shape))
        loaded = [name for name, module in sys.modules.items() if module is not None and name.split(".")[0] == "hf_vae"]
        print("hf_vae modules:", loaded)
        """,
        env,
        remote_root,
        published.repo_id,
        isolated=True,
    )
    return SimpleNamespace(root=root, hf_home=hf_home, pulled=pulled, remote=remote, remote_root=remote_root)


def test_cli_push_uploads_the_folder_in_one_commit(published, hub_token):
    cli = published.cli
    assert f"{published.repo_id}/commit/{published.v1_oid}" in cli.stdout
    assert f'VAEModel.from_pretrained("{published.repo_id}")' in cli.stdout
    assert hub_token not in cli.stdout + cli.stderr
    assert published.after == published.before, "the model folder was modified"
    assert [commit.title for commit in published.v1_commits] == ["Upload tiny-vae with hf-vae", "initial commit"]


def test_repo_holds_the_folder_without_local_only_files(published, hub_token, tmp_path):
    api, repo_id, v1 = published.api, published.repo_id, published.v1
    tree = {entry.path: entry for entry in api.list_repo_tree(repo_id, revision=published.v1_oid, recursive=True)}
    files = {path for path, entry in tree.items() if isinstance(entry, RepoFile)}
    uploaded = {path.as_posix() for path in collect_files(v1)}
    assert files == uploaded | {".gitattributes", "README.md"}
    assert {"config.json", "model.safetensors", "configuration_vae.py", "modeling_vae.py", "metrics.csv"} <= files
    assert {"training_args.json", "evaluation.json", *PICTURES} <= files
    assert not any(path.startswith(("checkpoint", ".hidden")) or path in LOCAL_ONLY for path in files)
    # Both upload paths were used: binary files through LFS, text inline.
    assert tree["model.safetensors"].lfs is not None and tree["samples.png"].lfs is not None
    assert tree["config.json"].lfs is None and tree["README.md"].lfs is None and tree["metrics.csv"].lfs is None

    for path in sorted(files - {".gitattributes"}):
        content = Path(
            hf_hub_download(repo_id, path, revision=published.v1_oid, endpoint=api.endpoint, cache_dir=tmp_path)
        ).read_bytes()
        assert hub_token.encode() not in content, path
        if path != "README.md":
            assert content == (v1 / path).read_bytes(), path
    config = json.loads((v1 / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_vae.VAEConfig", "AutoModel": "modeling_vae.VAEModel"}


def test_card_on_the_hub_parses_and_validates(published, tmp_path):
    path = hf_hub_download(
        published.repo_id, "README.md", revision=published.v1_oid, endpoint=published.api.endpoint, cache_dir=tmp_path
    )
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "hf-vae" and data.license == "apache-2.0"
    assert {"vae", "generative", "image-generation"} <= set(data.tags)
    assert data.datasets == ["ylecun/mnist"] and data.pipeline_tag == "unconditional-image-generation"
    assert data.model_name == "tiny-vae"
    assert {result.metric_type: result.metric_value for result in data.eval_results} == {
        key: round(EVALUATION[key], 4) for key in ("negative_elbo", "iwae_nll", "bits_per_dim")
    }
    assert {result.dataset_split for result in data.eval_results} == {"test"}
    # The metadata block alone rebuilds the same card data (model-index included), as the Hub parses it.
    metadata = yaml.safe_load(Path(path).read_text(encoding="utf-8").split("---")[1])
    assert ModelCardData(**metadata).to_dict() == data.to_dict()
    assert published.api.model_info(published.repo_id, revision=published.v1_oid).card_data.library_name == "hf-vae"

    text = card.text
    assert f'VAEModel.from_pretrained("{published.repo_id}")' in text
    assert f'AutoModel.from_pretrained("{published.repo_id}", trust_remote_code=True)' in text
    assert "148.61 ± 0.3512 nats/image" in text and "(K = 1,000)" in text and "2 of 2" in text
    assert "| 0 | 980 | 120.50 | 117.25 |" in text and "/home/someone" not in text
    repo_files = set(published.api.list_repo_files(published.repo_id, revision=published.v1_oid))
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text))
    assert linked == set(PICTURES) and linked <= repo_files


def test_pull_in_a_fresh_process_is_bit_exact_and_revisions_pin(published, downloaded):
    assert downloaded.pulled.returncode == 0, downloaded.pulled.stderr
    assert_same_weights(downloaded.root / "latest.safetensors", published.v2 / "model.safetensors")
    assert_same_weights(downloaded.root / "pinned.safetensors", published.v1 / "model.safetensors")


def test_trust_remote_code_loads_without_hf_vae(published, downloaded):
    remote = downloaded.remote
    assert remote.returncode == 0, remote.stderr
    assert "class module: transformers_modules." in remote.stdout
    assert "processor: transformers_modules." in remote.stdout and "(1, 1, 28, 28) 1.0" in remote.stdout
    assert "hf_vae modules: []" in remote.stdout
    assert "snippet images: (16, 1, 28, 28) (16, 1, 28, 28)" in remote.stdout
    assert_same_weights(downloaded.remote_root / "remote.safetensors", published.v2 / "model.safetensors")


def test_offline_reload_after_a_first_download(published, downloaded, tmp_path):
    assert downloaded.pulled.returncode == 0 and downloaded.remote.returncode == 0
    env = subprocess_env(f"http://127.0.0.1:{free_port()}", None, downloaded.hf_home)  # nothing listens there
    env["HF_HUB_OFFLINE"] = "1"
    offline = run_python(
        """
        import sys
        from safetensors.torch import save_file
        from transformers import AutoModel
        from hf_vae import VAEModel

        repo_id, v1_oid = sys.argv[1:3]
        save_file(VAEModel.from_pretrained(repo_id).state_dict(), "latest.safetensors")
        save_file(VAEModel.from_pretrained(repo_id, revision=v1_oid).state_dict(), "pinned.safetensors")
        save_file(AutoModel.from_pretrained(repo_id, trust_remote_code=True).state_dict(), "auto.safetensors")
        """,
        env,
        tmp_path,
        published.repo_id,
        published.v1_oid,
    )
    assert offline.returncode == 0, offline.stderr
    assert_same_weights(tmp_path / "latest.safetensors", published.v2 / "model.safetensors")
    assert_same_weights(tmp_path / "pinned.safetensors", published.v1 / "model.safetensors")
    assert_same_weights(tmp_path / "auto.safetensors", published.v2 / "model.safetensors")


def test_push_to_a_branch_a_pull_request_and_a_private_repo(hub_server, hub_token, hub_repo_id, tmp_path):
    folder = make_model_folder(tmp_path / "model", extras=False)
    api = HfApi(endpoint=hub_server, token=hub_token)
    branch = push_to_hub(folder, hub_repo_id, private=True, revision="experiment", token=hub_token, endpoint=hub_server)
    refs = api.list_repo_refs(hub_repo_id)
    assert {ref.name: ref.target_commit for ref in refs.branches}["experiment"] == branch.oid
    assert "model.safetensors" in api.list_repo_files(hub_repo_id, revision="experiment")
    assert api.list_repo_files(hub_repo_id) == [".gitattributes"]  # main untouched
    assert api.model_info(hub_repo_id).private
    with pytest.raises(Exception, match="Repository Not Found|404"):
        HfApi(endpoint=hub_server, token=False).model_info(hub_repo_id)

    pull_request = push_to_hub(folder, hub_repo_id, create_pr=True, token=hub_token, endpoint=hub_server)
    assert pull_request.pr_url.endswith("/discussions/1") and pull_request.pr_revision == "refs/pr/1"
    assert "README.md" in api.list_repo_files(hub_repo_id, revision="refs/pr/1")
    assert api.list_repo_files(hub_repo_id) == [".gitattributes"]


def test_push_adds_the_remote_code_a_folder_lacks(hub_server, hub_token, hub_repo_id, tmp_path):
    folder = make_model_folder(tmp_path / "model", extras=False)
    for name in ("configuration_vae.py", "modeling_vae.py", "image_processing_vae.py", "preprocessor_config.json"):
        (folder / name).unlink()  # as saved before image processors existed, without code
    config = json.loads((folder / "config.json").read_text())
    del config["auto_map"]
    (folder / "config.json").write_text(json.dumps(config))
    before = folder_state(folder)
    push_to_hub(folder, hub_repo_id, token=hub_token, endpoint=hub_server)
    assert folder_state(folder) == before
    api = HfApi(endpoint=hub_server, token=hub_token)
    files = set(api.list_repo_files(hub_repo_id))
    assert {"configuration_vae.py", "modeling_vae.py", "image_processing_vae.py", "preprocessor_config.json"} <= files
    processor_file = hf_hub_download(hub_repo_id, "preprocessor_config.json", endpoint=hub_server, cache_dir=tmp_path)
    processor = json.loads(Path(processor_file).read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_vae.VAEImageProcessor"}
    assert (processor["image_size"], processor["num_channels"], processor["binarize"]) == (28, 1, "dynamic")
    pushed = json.loads(
        Path(hf_hub_download(hub_repo_id, "config.json", endpoint=hub_server, cache_dir=tmp_path)).read_text()
    )
    assert pushed == {
        **config,
        "auto_map": {"AutoConfig": "configuration_vae.VAEConfig", "AutoModel": "modeling_vae.VAEModel"},
    }


def test_rejected_token_is_explained_by_the_script(hub_server, hub_repo_id, tmp_path):
    folder = make_model_folder(tmp_path / "model", extras=False)
    before = folder_state(folder)
    wrong_token = "hf_WrongTokenThatMustNeverBePrinted"
    env = subprocess_env(hub_server, wrong_token, tmp_path / "hf_home")
    script = REPO_ROOT / "scripts" / "push_to_hub.py"
    result = run([sys.executable, str(script), "--model_dir", str(folder), "--repo_id", hub_repo_id], env)
    assert result.returncode == 1
    assert "401 Unauthorized" in result.stderr and "hf auth login" in result.stderr and "HF_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert wrong_token not in result.stdout + result.stderr
    assert folder_state(folder) == before
    assert not HfApi(endpoint=hub_server, token=False).repo_exists(hub_repo_id)


def test_missing_token_says_how_to_log_in(hub_server, hub_repo_id, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    # conftest gives the session an empty HF_HOME, so a token stored on the runner by `hf auth login` is not seen.
    assert not Path(constants.HF_TOKEN_PATH).exists()
    folder = make_model_folder(tmp_path / "model", extras=False)
    before = folder_state(folder)
    with pytest.raises(HubPushError, match=r"No Hugging Face token found.*hf auth login.*HF_TOKEN"):
        push_to_hub(folder, hub_repo_id, endpoint=hub_server)
    assert folder_state(folder) == before


def test_forbidden_namespace_server_error_and_unreachable_hub(hub_server, hub_token, tmp_path):
    folder = make_model_folder(tmp_path / "model")
    before = folder_state(folder)
    with pytest.raises(HubPushError, match=r"does not let your token write to someone-else/vae \(403") as forbidden:
        push_to_hub(folder, "someone-else/vae", token=hub_token, endpoint=hub_server)
    with run_hub_server(fail_with=500) as failing:
        with pytest.raises(HubPushError, match=rf"The Hub at {failing.url} answered HTTP 500") as server_error:
            push_to_hub(folder, f"{DEFAULT_USER}/vae", token=hub_token, endpoint=failing.url)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(HubPushError, match=rf"Could not reach the Hugging Face Hub at {dead}") as unreachable:
        push_to_hub(folder, f"{DEFAULT_USER}/vae", token=hub_token, endpoint=dead)
    for error in (forbidden, server_error, unreachable):
        assert "local folder is unchanged" in str(error.value) and hub_token not in str(error.value)
    assert folder_state(folder) == before


def test_a_folder_holding_the_token_is_not_pushed(hub_server, hub_token, hub_repo_id, tmp_path):
    folder = make_model_folder(tmp_path / "model")
    (folder / "training_args.json").write_text(json.dumps({"hub_token": hub_token, "seed": 0}))
    assert hub_token not in str(build_model_card(folder))  # secret-looking keys never reach the card
    with pytest.raises(HubPushError, match="token appears in training_args.json") as error:
        push_to_hub(folder, hub_repo_id, token=hub_token, endpoint=hub_server)
    assert hub_token not in str(error.value)
    assert not HfApi(endpoint=hub_server, token=hub_token).repo_exists(hub_repo_id)


def test_not_a_model_folder(hub_server, hub_token, hub_repo_id, tmp_path):
    with pytest.raises(ValueError, match="is not an hf-vae model folder: it needs config.json and model.safetensors"):
        push_to_hub(tmp_path, hub_repo_id, token=hub_token, endpoint=hub_server)
    assert not HfApi(endpoint=hub_server, token=hub_token).repo_exists(hub_repo_id)


def test_collect_files_leaves_out_local_only_files(tmp_path):
    folder = make_model_folder(tmp_path / "model")
    (folder / "README.md").write_text("an old card")
    (folder / "runs" / "events").mkdir(parents=True)
    (folder / "runs" / "events" / "log").write_text("tensorboard")
    files = {path.as_posix() for path in collect_files(folder)}
    code = {"configuration_vae.py", "modeling_vae.py", "modeling_utils.py", "layers.py", "distributions.py",
            "priors.py", "likelihoods.py", "estimators.py", "image_processing_vae.py",
            "configuration_utils.py"}  # fmt: skip
    assert files == {
        "config.json", "preprocessor_config.json", "model.safetensors", "metrics.csv", "training_args.json",
        "train_results.json", "eval_results.json", "evaluation.json", *PICTURES, "runs/events/log", *code,
    }  # fmt: skip


def test_push_of_a_converted_folder_carries_its_provenance(hub_server, hub_token, hub_repo_id, tmp_path):
    folder = make_converted_folder(tmp_path / "converted")
    sha256 = json.loads((folder / "conversion.json").read_text())["sha256"]
    before = folder_state(folder)
    commit = push_to_hub(folder, hub_repo_id, token=hub_token, endpoint=hub_server)
    assert folder_state(folder) == before
    files = set(HfApi(endpoint=hub_server, token=hub_token).list_repo_files(hub_repo_id))
    assert {"conversion.json", "README.md", "model.safetensors"} <= files

    def download(name: str) -> Path:
        return Path(hf_hub_download(hub_repo_id, name, revision=commit.oid, endpoint=hub_server, cache_dir=tmp_path))

    assert download("conversion.json").read_bytes() == (folder / "conversion.json").read_bytes()
    card = ModelCard.load(download("README.md"))
    assert "## Converted from" in card.text and "the local file `best_vae_model.pth`" in card.text
    assert sha256 in card.text
    assert f'VAEModel.from_pretrained("{hub_repo_id}")' in card.text
    assert "converted" in card.data.tags and card.data.license is None


def test_card_of_a_converted_folder_says_where_it_comes_from(tmp_path):
    folder = make_converted_folder(tmp_path / "converted")
    record = json.loads((folder / "conversion.json").read_text())
    card = build_model_card(folder, "me/vae")
    assert record["sha256"] in card.text and "the local file `best_vae_model.pth`, layout: tutorial dict" in card.text
    assert "`VAE(input_dim=784, latent_dim=2, hidden_dim=32, beta=1.0)`" in card.text
    assert "max \\|difference\\|" in card.text and "| decoded probabilities | 0 |" in card.text
    assert "(tolerance 1e-05)" in card.text
    assert "converted to the `hf-vae` package from a checkpoint trained elsewhere" in card.text
    assert "No license is stated" in card.text and card.data.license is None
    assert "`conversion.json`: where the weights were converted from" in card.text
    assert build_model_card(folder, license="mit").data.license == "mit"
    assert "No license is stated" not in build_model_card(folder, license="mit").text

    record["source"] = {"kind": "hub", "repo_id": "someone/tutorial", "filename": "a/best.pth", "revision": "v1"}
    (folder / "conversion.json").write_text(json.dumps(record))
    source = "`a/best.pth` from the Hub repo [someone/tutorial](https://huggingface.co/someone/tutorial), revision `v1`"
    assert source in build_model_card(folder).text
    # A hand-edited file: what is malformed is left out, a local path is never shown.
    record.update(source={"kind": "file", "filename": "/home/someone/private/best.pth"}, sha256="not a hash")
    record["max_differences"] = {"mean": "small"}
    (folder / "conversion.json").write_text(json.dumps(record))
    text = build_model_card(folder).text
    assert "the local file `best.pth`" in text and "/home/someone" not in text
    assert "SHA-256" not in text and "max \\|difference\\|" not in text
    (folder / "conversion.json").write_text("{not json")
    card = build_model_card(folder)
    assert "## Converted from" in card.text and card.data.license is None and "converted" in card.data.tags


@pytest.mark.parametrize("num_classes", [None, 10])
def test_card_snippets_run_as_written(tmp_path, num_classes):
    folder = make_model_folder(tmp_path / "model", num_classes=num_classes)
    card = build_model_card(folder, repo_id=str(folder))  # a local path works in from_pretrained too
    load_with_hf_vae, load_with_remote_code, use = re.findall(r"```python\n(.*?)```", str(card), re.DOTALL)[:3]
    exec(load_with_remote_code, {})
    namespace: dict = {}
    exec(load_with_hf_vae, namespace)
    exec(use, namespace)
    assert tuple(namespace["images"].shape) == tuple(namespace["decoded"].shape) == (16, 1, 28, 28)
    assert tuple(namespace["path"].shape) == (8, 1, 28, 28) and namespace["scores"].shape == (16,)
    if num_classes:
        assert card.data.pipeline_tag is None and "conditional" in card.data.tags
        assert "model.sample(16, labels=3" in card.text and "class label in `[0, 10)`" in card.text
    else:
        assert card.data.pipeline_tag == "unconditional-image-generation" and "labels=" not in card.text


def test_card_works_with_any_subset_of_the_folder(tmp_path):
    folder = make_model_folder(tmp_path / "model")
    (folder / "evaluation.json").write_text(json.dumps({"negative_elbo": 150.5, "split": "test"}))  # keys optional
    optional = ["metrics.csv", "training_args.json", "train_results.json", "eval_results.json", *PICTURES]
    for name in [None, *optional, "evaluation.json"]:
        if name:
            (folder / name).unlink()
        card = ModelCard(str(build_model_card(folder, "me/vae")))  # parses back
        assert card.data.library_name == "hf-vae"
        if name is None:
            assert [result.metric_type for result in card.data.eval_results] == ["negative_elbo"]
            assert "150.50 nats/image" in card.text and "Trained for 2 epochs in 7.7 s" in card.text
    assert card.data.eval_results is None and "No evaluation was recorded" in card.text
    assert "## Pictures" not in card.text and "does not record how the model was trained" in card.text
    path = write_model_card(folder, tmp_path / "card" / "README.md", repo_id="me/vae")
    assert ModelCard.load(path).data.to_dict() == card.data.to_dict()


# ---------------------------------------------------------------------------------------------- datasets from the Hub
def test_train_downloads_a_hub_dataset_through_the_server(hub_server, hub_token, hub_repo_id, hub_env, tmp_path):
    """`hf-vae train --dataset_name OWNER/NAME` downloads a dataset repo laid out like ylecun/mnist (parquet shards
    under a config folder, a README with `configs`) from the Hub, here the local server, and trains on it."""
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=10)})
    folder = tmp_path / "dataset-repo"
    (folder / "digits").mkdir(parents=True)
    for split, count in (("train", 60), ("test", 20)):
        images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(count)]
        labels = rng.integers(0, 10, count).tolist()
        split_data = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        split_data.to_parquet(str(folder / "digits" / f"{split}-00000-of-00001.parquet"))
    (folder / "README.md").write_text(
        "---\nconfigs:\n- config_name: digits\n  data_files:\n  - split: train\n    path: digits/train-*\n"
        "  - split: test\n    path: digits/test-*\n  default: true\n---\n# Tiny digits\n"
    )
    api = HfApi(endpoint=hub_server, token=hub_token)
    api.create_repo(hub_repo_id, repo_type="dataset")
    api.upload_folder(folder_path=str(folder), repo_id=hub_repo_id, repo_type="dataset")

    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "hf_vae.cli", "train", "--dataset_name", hub_repo_id, "--preset", "mnist-2d",
        "--hidden_sizes", "16", "--max_steps", "2", "--per_device_train_batch_size", "16", "--skip_figures",
        "--disable_tqdm", "--output_dir", str(output_dir),
    ]  # fmt: skip
    completed = subprocess.run(command, env=hub_env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    results = json.loads((output_dir / "train_results.json").read_text())
    assert results["train_images"] == 54 and results["global_step"] == 2  # 60 minus the 10% held out
    assert json.loads((output_dir / "eval_results.json").read_text())["test_images"] == 20
    assert list((tmp_path / "hf_home").rglob("*.parquet")), "the dataset was not downloaded into the Hub cache"


# ---------------------------------------------------------------------------------------------- the transformers way
def test_model_push_to_hub_uploads_our_card_with_the_folders_results(hub_server, hub_token, hub_repo_id, tmp_path):
    """`model.push_to_hub(repo)` (what a transformers user tries first) uploads hf-vae's generated card, not
    transformers' empty template, with the results of the folder the model was loaded from, the code for
    `trust_remote_code`, and weights that load back bit-exactly in a process without hf_vae."""
    folder = make_model_folder(tmp_path / "trained")
    before = folder_state(folder)
    env = subprocess_env(hub_server, hub_token, tmp_path / "push_home")
    pushed = run_python(
        """
        import sys
        from hf_vae import VAEModel

        VAEModel.from_pretrained(sys.argv[1]).push_to_hub(sys.argv[2], commit_message="via transformers")
        """,
        env,
        tmp_path,
        str(folder),
        hub_repo_id,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert folder_state(folder) == before

    api = HfApi(endpoint=hub_server, token=hub_token)
    files = set(api.list_repo_files(hub_repo_id))
    assert {"config.json", "model.safetensors", "README.md", "metrics.csv", "evaluation.json", "samples.png"} <= files
    assert {"modeling_vae.py", "configuration_vae.py", "modeling_utils.py", "priors.py", "layers.py"} <= files
    assert not {name for name in files if name.startswith(("checkpoints/", "checkpoint-"))}
    card = Path(hf_hub_download(hub_repo_id, "README.md", endpoint=hub_server, cache_dir=tmp_path / "cache"))
    text = card.read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    assert metadata["library_name"] == "hf-vae" and "More Information Needed" not in text
    (result,) = metadata["model-index"][0]["results"]
    assert {metric["type"]: metric["value"] for metric in result["metrics"]}["iwae_nll"] == EVALUATION["iwae_nll"]
    assert f'VAEModel.from_pretrained("{hub_repo_id}")' in text

    pulled = run_python(
        """
        import sys
        sys.modules["hf_vae"] = None
        from safetensors.torch import save_file
        from transformers import AutoModel

        save_file(AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).state_dict(), "remote.safetensors")
        """,
        subprocess_env(hub_server, None, tmp_path / "pull_home"),
        tmp_path,
        hub_repo_id,
        isolated=True,
    )
    assert pulled.returncode == 0, pulled.stderr
    assert_same_weights(tmp_path / "remote.safetensors", folder / "model.safetensors")
