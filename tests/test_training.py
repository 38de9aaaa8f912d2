"""The training loop (`hf-vae train`): outputs, real-MNIST learning, two CPU processes, exact resume after SIGKILL,
NaN stop, options.

Runs that must be a real process (the CLI, `accelerate launch`, SIGKILL) go through subprocesses; the rest call
`hf_vae.training.main` in this process. Models are tiny (one hidden layer of 32) and datasets small, so that the
file stays around a minute on two busy cores.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from PIL import Image
from safetensors.torch import load_file

from hf_vae import VAEConfig, VAEModel
from hf_vae.checkpointing import CHECKPOINTS_DIR, STATE_FILE, checkpoint_folders, resolve_checkpoint
from hf_vae.cli import main as cli_main
from hf_vae.cli.arguments import UsageError
from hf_vae.data import load_splits
from hf_vae.training_args import ModelArguments, parse_args
from hf_vae.training_metrics import metrics_columns
from hf_vae.training_setup import build_model

REPO = Path(__file__).resolve().parents[1]
METRICS_COLUMNS = metrics_columns(["recon_loss", "kl_loss"])  # the Gaussian VAE's: the reference tutorial's columns
TRAIN_IMAGES, TEST_IMAGES = 200, 40
VALIDATION_IMAGES = 20  # the default 10% held out of train
TINY = [
    "--preset",
    "mnist-2d",
    "--hidden_sizes",
    "32",
    "--latent_dim",
    "2",
    "--per_device_train_batch_size",
    "32",
    "--skip_figures",
    "--disable_tqdm",
]


def main(argv: list[str]) -> int:
    """`hf-vae train ...` in this process, as the command line runs it."""
    return cli_main(["train", *argv])


def _grey_digits(count: int, rng: np.random.Generator, size: int = 28) -> list[Image.Image]:
    """Blurry grey strokes: structure to learn, grey levels for binarisation to matter."""
    images = []
    for _ in range(count):
        canvas = np.zeros((size, size), dtype=np.float32)
        row, column = rng.integers(4, size - 12, size=2)
        canvas[row : row + 8, column : column + 3] = 1.0
        canvas[row : row + 3, column : column + 8] = rng.uniform(0.3, 1.0)
        canvas = np.clip(canvas + rng.normal(0, 0.1, canvas.shape), 0, 1)
        images.append(Image.fromarray((canvas * 255).astype(np.uint8)))
    return images


def make_dataset(path: Path, size: int = 28, labels: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    features = {"image": datasets.Image()}
    if labels:
        features["label"] = datasets.ClassLabel(num_classes=10)

    def split(count: int) -> datasets.Dataset:
        columns = {"image": _grey_digits(count, rng, size)}
        if labels:
            columns["label"] = rng.integers(0, 10, count).tolist()
        return datasets.Dataset.from_dict(columns, features=datasets.Features(features))

    datasets.DatasetDict({"train": split(TRAIN_IMAGES), "test": split(TEST_IMAGES)}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "digits")


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf_vae.cli", "train", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env or subprocess_env(), cwd=REPO, timeout=600)


def train_here(*args: str) -> int:
    """`hf-vae train` in this process, with accelerate's process-wide state reset afterwards."""
    try:
        return main(list(args))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


pytestmark = pytest.mark.usefixtures("one_thread")


def read_metrics(output_dir: Path) -> list[dict[str, str]]:
    with (output_dir / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- one run, every file
def test_one_epoch_writes_every_output(synthetic, tmp_path):
    output_dir = tmp_path / "run"
    completed = run_cli(
        "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "1", "--output_dir", str(output_dir),
        "--report_to", "tensorboard", "--binarize", "dynamic",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "hf-vae rank" not in completed.stderr and "[RANK" not in completed.stderr  # one process: no rank lines
    assert f"Saved the best model (epoch 1) to {output_dir}" in completed.stdout
    assert "Epoch   1 | Total Loss: " in completed.stdout and "| Val Loss: " in completed.stdout
    assert "| LR: " in completed.stdout and "| Time: " in completed.stdout

    with (output_dir / "metrics.csv").open() as handle:
        assert next(csv.reader(handle)) == list(METRICS_COLUMNS)
    (row,) = read_metrics(output_dir)
    assert row["epoch"] == "1" and all(math.isfinite(float(row[name])) for name in METRICS_COLUMNS)

    model = VAEModel.from_pretrained(output_dir)
    assert model.config.binarize == "dynamic" and model.config.hidden_sizes == [32]
    for name in ("config.json", "model.safetensors", "modeling_vae.py", "configuration_vae.py", "README.md"):
        assert (output_dir / name).is_file()
    assert "library_name: hf-vae" in (output_dir / "README.md").read_text()  # the generated card, with the results

    results = read_json(output_dir / "train_results.json")
    assert results["num_processes"] == 1 and results["weights_identical_across_processes"] is True
    assert results["validation_images"] == results["validation_images_expected"] == VALIDATION_IMAGES
    assert results["train_images"] == TRAIN_IMAGES - VALIDATION_IMAGES and results["epochs_completed"] == 1
    assert results["best_epoch"] == 1 and results["best_val_loss"] == pytest.approx(float(row["val_loss"]))
    for name in ("train_samples_per_second", "total_wall_time", "train_runtime"):
        assert results[name] > 0

    evaluation = read_json(output_dir / "eval_results.json")
    assert evaluation["test_images"] == TEST_IMAGES and evaluation["binarize"] == "dynamic"
    assert evaluation["test_loss"] == pytest.approx(evaluation["test_recon_loss"] + evaluation["test_kl_loss"])

    (checkpoint,) = checkpoint_folders(output_dir)
    assert checkpoint.name == "checkpoint-6" and read_json(checkpoint / STATE_FILE)["epoch"] == 1
    assert list(output_dir.glob("runs/**/events.out.tfevents.*")), "tensorboard wrote no event file"

    # training_args.json holds every option and reads back as a single arguments file.
    model_args, data_args, training_args = parse_args([str(output_dir / "training_args.json")])
    assert data_args.dataset_name == str(synthetic) and model_args.hidden_sizes == [32]
    assert training_args.report_to == "tensorboard" and model_args.binarize == "dynamic"


def test_real_mnist_validation_loss_falls(tmp_path, mnist_dir):
    output_dir = tmp_path / "mnist"
    completed = run_cli(
        "--dataset_name", str(mnist_dir), "--preset", "mnist-2d", "--max_train_samples", "3000",
        "--max_eval_samples", "1000", "--num_train_epochs", "3", "--checkpointing_steps", "no", "--skip_figures",
        "--output_dir", str(output_dir),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    torch.manual_seed(42)  # the seed the run used for its initial weights
    fresh = VAEModel(VAEConfig.from_preset("mnist-2d")).eval()
    validation = load_splits(str(mnist_dir), seed=42).validation.images[:1000].float() / 255
    with torch.no_grad():
        first_loss = fresh(validation, generator=torch.Generator().manual_seed(0)).loss.item()
    rows = read_metrics(output_dir)
    val_losses = [float(row["val_loss"]) for row in rows]
    assert len(rows) == 3 and val_losses[-1] < val_losses[0]
    assert val_losses[-1] < 0.5 * first_loss, (first_loss, val_losses)
    evaluation = read_json(output_dir / "eval_results.json")
    assert evaluation["test_images"] == 1000 and evaluation["test_loss"] < 0.5 * first_loss


# ---------------------------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_on_cpu_train_one_synchronised_model(synthetic, tmp_path):
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(REPO / "scripts" / "train.py"),
        "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "2", "--per_device_eval_batch_size", "8",
        "--output_dir", str(output_dir),
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, env=subprocess_env(ACCELERATE_USE_CPU="1"), cwd=REPO, timeout=600
    )
    assert completed.returncode == 0, completed.stderr
    assert "hf-vae rank 0 of 2" in completed.stderr and "hf-vae rank 1 of 2" in completed.stderr
    assert completed.stdout.count("Epoch   1 |") == 1 and completed.stdout.count("Epoch   2 |") == 1

    results = read_json(output_dir / "train_results.json")
    assert results["num_processes"] == 2 and results["weights_identical_across_processes"] is True
    # 20 validation images in batches of 8 over 2 processes: padded shards, each image counted exactly once.
    assert results["validation_images"] == VALIDATION_IMAGES
    assert results["train_samples_seen"] >= 2 * (TRAIN_IMAGES - VALIDATION_IMAGES)
    assert [row["epoch"] for row in read_metrics(output_dir)] == ["1", "2"]
    assert [path.name for path in checkpoint_folders(output_dir)] == ["checkpoint-3", "checkpoint-6"]
    checkpoint = checkpoint_folders(output_dir)[-1]
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    assert not list((output_dir / CHECKPOINTS_DIR).glob(".staging-*"))
    VAEModel.from_pretrained(output_dir)


def test_two_machines_train_one_synchronised_model(synthetic, tmp_path):
    """Two `accelerate launch` commands, one per "machine" (`--num_machines 2 --machine_rank 0|1`, one process each,
    gloo over 127.0.0.1), as on a cluster whose machines share the output folder: each sees world size 2, both end
    with identical weights, and only machine 0 writes the outputs and the epoch lines."""
    output_dir = tmp_path / "two-machines"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
    ]  # fmt: skip
    train = [
        str(REPO / "scripts" / "train.py"), "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "2",
        "--per_device_eval_batch_size", "8", "--output_dir", str(output_dir),
    ]  # fmt: skip
    machines = [
        subprocess.Popen(
            [*launch, "--machine_rank", str(rank), *train],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(ACCELERATE_USE_CPU="1"),
            cwd=REPO,
        )
        for rank in (0, 1)
    ]
    outputs = [machine.communicate(timeout=600) for machine in machines]
    for machine, (_, stderr) in zip(machines, outputs, strict=True):
        assert machine.returncode == 0, stderr
    assert "hf-vae rank 0 of 2" in outputs[0][1] and "hf-vae rank 1 of 2" in outputs[1][1]
    assert outputs[0][0].count("Epoch   2 |") == 1 and "Epoch" not in outputs[1][0]
    results = read_json(output_dir / "train_results.json")
    assert results["num_processes"] == 2 and results["weights_identical_across_processes"] is True
    assert results["validation_images"] == VALIDATION_IMAGES
    VAEModel.from_pretrained(output_dir)


def test_refuses_a_multi_process_launch_that_runs_unsynchronised(synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert train_here("--dataset_name", str(synthetic), *TINY, "--output_dir", str(tmp_path / "out")) == 1
    error = capsys.readouterr().err
    assert "WORLD_SIZE=2" in error and "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2" in error


# ---------------------------------------------------------------------------------------------- resume
def _kill_at_first_checkpoint(arguments: list[str], output_dir: Path) -> Path:
    """Start `hf-vae train` and SIGKILL it from outside as soon as a complete checkpoint exists, as a crash or a
    pre-empted job would end it; return the newest complete checkpoint."""
    command = [sys.executable, "-m", "hf_vae.cli", "train", *arguments, "--output_dir", str(output_dir)]
    process = subprocess.Popen(
        command, env=subprocess_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        while not checkpoint_folders(output_dir) and process.poll() is None:
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        stderr = process.communicate(timeout=60)[1].decode()
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{stderr}"
    return checkpoint_folders(output_dir)[-1]


def test_killed_run_resumes_to_identical_weights(synthetic, tmp_path):
    # 6 steps an epoch, a checkpoint every 4: most checkpoints fall mid-epoch. 30 epochs leave the run far from
    # its end when it is killed at its first checkpoint.
    arguments = [
        "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "30", "--checkpointing_steps", "4",
        "--binarize", "dynamic", "--save_total_limit", "2", "--kl_warmup_steps", "10",
    ]  # fmt: skip
    uninterrupted, interrupted = tmp_path / "a", tmp_path / "b"
    assert run_cli(*arguments, "--output_dir", str(uninterrupted)).returncode == 0

    latest = _kill_at_first_checkpoint(arguments, interrupted)
    assert not (interrupted / "train_results.json").exists()
    assert read_json(latest / STATE_FILE)["global_step"] < 180

    resumed = run_cli(*arguments, "--output_dir", str(interrupted), "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed from" in resumed.stderr and latest.name in resumed.stderr

    expected, actual = load_file(uninterrupted / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    drop_time = [{k: v for k, v in row.items() if k != "epoch_time"} for row in read_metrics(uninterrupted)]
    assert drop_time == [{k: v for k, v in row.items() if k != "epoch_time"} for row in read_metrics(interrupted)]
    assert read_json(interrupted / "train_results.json")["resumed_from_checkpoint"].endswith(latest.name)


def test_latest_checkpoint_ignores_incomplete_folders(tmp_path):
    root = tmp_path / CHECKPOINTS_DIR
    for name, complete in (("checkpoint-5", True), ("checkpoint-12", True), ("checkpoint-20", False)):
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / STATE_FILE).write_text("{}")
    (root / ".staging-checkpoint-30").mkdir()
    (root / ".staging-checkpoint-30" / STATE_FILE).write_text("{}")
    assert [path.name for path in checkpoint_folders(tmp_path)] == ["checkpoint-5", "checkpoint-12"]
    assert resolve_checkpoint("latest", tmp_path).name == "checkpoint-12"
    assert resolve_checkpoint("latest", tmp_path / "elsewhere") is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        resolve_checkpoint(str(root / "checkpoint-20"), tmp_path)


# ---------------------------------------------------------------------------------------------- failures
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(synthetic, tmp_path):
    output_dir = tmp_path / "nan"
    completed = run_cli(
        "--dataset_name", str(synthetic), *TINY, "--learning_rate", "1e30", "--checkpointing_steps", "1",
        "--output_dir", str(output_dir),
    )  # fmt: skip
    assert completed.returncode == 1
    assert "The training loss became NaN/inf at global step 2 (epoch 1)" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert [path.name for path in checkpoint_folders(output_dir)] == ["checkpoint-1"]
    assert "the last good checkpoint is" in completed.stderr and "checkpoint-1" in completed.stderr
    state = load_file(output_dir / CHECKPOINTS_DIR / "checkpoint-1" / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in state.values())
    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "metrics.csv").exists()


def test_refuses_to_overwrite_a_finished_run(synthetic, tmp_path, capsys):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "metrics.csv").write_text("epoch\n")
    assert train_here("--dataset_name", str(synthetic), *TINY, "--output_dir", str(output_dir)) == 1
    error = capsys.readouterr().err
    assert "already holds a training run" in error and "--resume_from_checkpoint latest" in error
    assert (output_dir / "metrics.csv").read_text() == "epoch\n"


def test_option_errors_name_the_fix(synthetic, tmp_path, capsys):
    base = ["--dataset_name", str(synthetic), "--output_dir", str(tmp_path / "out")]
    assert train_here(*base, "--push_to_hub") == 2
    assert "--push_to_hub needs --hub_model_id" in capsys.readouterr().err
    assert train_here(*base, "--lr_scheduler_type", "reduce_lr_on_plateau", "--warmup_steps", "10") == 2
    assert "--warmup_steps needs a per-step schedule" in capsys.readouterr().err
    assert train_here(*base, "--checkpointing_steps", "often") == 2
    assert "--checkpointing_steps" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_conditional_training_needs_a_label_column(tmp_path, capsys):
    unlabelled = make_dataset(tmp_path / "unlabelled", labels=False)
    output_dir = tmp_path / "out"
    assert (
        train_here("--dataset_name", str(unlabelled), *TINY, "--num_classes", "10", "--output_dir", str(output_dir))
        == 1
    )
    error = capsys.readouterr().err
    assert "needs class labels" in error and "['image']" in error and "--label_column" in error


# ---------------------------------------------------------------------------------------------- options
def test_preset_overrides_and_continuing_from_a_saved_model(tmp_path):
    config = build_model(ModelArguments(preset="mnist-2d", latent_dim=4, beta=2.0, binarize="static")).config
    assert (config.latent_dim, config.beta, config.binarize, config.hidden_sizes) == (4, 2.0, "static", [256, 128])
    assert build_model(ModelArguments()).config.binarize == VAEConfig.from_preset("mnist").binarize
    saved = tmp_path / "saved"
    build_model(ModelArguments(preset="mnist-2d", hidden_sizes=[16])).save_pretrained(saved)
    continued = build_model(ModelArguments(model_name_or_path=str(saved), beta=3.0))
    assert continued.config.beta == 3.0 and continued.config.hidden_sizes == [16]
    with pytest.raises(ValueError, match="would change the network"):
        build_model(ModelArguments(model_name_or_path=str(saved), latent_dim=8))


def test_accumulation_clipping_schedules_conditioning_and_early_stopping(synthetic, tmp_path):
    output_dir = tmp_path / "options"
    status = train_here(
        "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "2", "--gradient_accumulation_steps", "2",
        "--max_grad_norm", "5", "--kl_warmup_steps", "4", "--lr_scheduler_type", "cosine", "--warmup_steps", "2",
        "--binarize", "static", "--num_classes", "10", "--eval_steps", "2", "--checkpointing_steps", "2",
        "--output_dir", str(output_dir),
    )  # fmt: skip
    assert status == 0
    results = read_json(output_dir / "train_results.json")
    assert results["global_step"] == 2 * math.ceil(6 / 2)  # 6 batches an epoch, an optimiser step every 2
    rates = [float(row["learning_rate"]) for row in read_metrics(output_dir)]
    assert rates[1] < rates[0] <= 2e-2  # the mnist-2d preset's default peak rate
    model = VAEModel.from_pretrained(output_dir)
    assert model.config.num_classes == 10 and model.config.binarize == "static"

    stopped = tmp_path / "stopped"
    status = train_here(
        "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "5", "--learning_rate", "1e-12",
        "--early_stopping_patience", "1", "--checkpointing_steps", "no", "--output_dir", str(stopped),
    )  # fmt: skip
    assert status == 0
    results = read_json(stopped / "train_results.json")
    assert results["stop_reason"] == "early_stopping" and results["epochs_completed"] < 5


def test_training_defaults_follow_the_preset(tmp_path):
    def resolved(*flags: str) -> tuple[float, str, int]:
        _, _, args = parse_args(["--output_dir", str(tmp_path), *flags])
        return args.learning_rate, args.lr_scheduler_type, args.per_device_train_batch_size

    assert resolved("--preset", "mnist-2d") == (2e-2, "cosine", 256)
    assert resolved("--preset", "mnist") == (1e-3, "reduce_lr_on_plateau", 128)
    assert resolved("--preset", "mnist-2d", "--learning_rate", "1e-3") == (1e-3, "cosine", 256)
    assert resolved("--preset", "mnist-2d", "--per_device_train_batch_size", "64") == (2e-2, "cosine", 64)
    assert resolved("--preset", "mnist-2d", "--model_name_or_path", "x") == (1e-3, "reduce_lr_on_plateau", 128)
    with pytest.raises(UsageError, match="--per_device_train_batch_size must be at least 1, got 0"):
        parse_args(["--output_dir", str(tmp_path), "--per_device_train_batch_size", "0"])


def test_yaml_arguments_file(tmp_path, synthetic):
    path = tmp_path / "args.yaml"
    path.write_text(f"dataset_name: {synthetic}\noutput_dir: {tmp_path / 'out'}\nhidden_sizes: [8, 4]\nbeta: 0.5\n")
    model_args, data_args, training_args = parse_args([str(path)])
    assert model_args.hidden_sizes == [8, 4] and model_args.beta == 0.5
    assert model_args.config_overrides() == {"hidden_sizes": [8, 4], "beta": 0.5}
    assert training_args.output_dir == str(tmp_path / "out") and training_args.num_train_epochs == 20
    path.write_text("output_dir: out\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="learning_rat"):
        parse_args([str(path)])


def test_figures_every_epoch_leave_training_unchanged(synthetic, tmp_path):
    common = ["--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "2", "--checkpointing_steps", "no"]
    assert train_here(*common, "--output_dir", str(tmp_path / "plain")) == 0
    pictured = tmp_path / "pictured"
    assert (
        train_here(
            *[a for a in common if a != "--skip_figures"], "--plot_every_n_epochs", "1", "--output_dir", str(pictured)
        )
        == 0
    )
    for folder in (pictured, pictured / "figures" / "epoch-1", pictured / "figures" / "epoch-2"):
        assert (folder / "samples.png").is_file() and (folder / "reconstructions.png").is_file()
    assert (pictured / "training_curves.png").is_file()
    plain, with_figures = load_file(tmp_path / "plain" / "model.safetensors"), load_file(pictured / "model.safetensors")
    assert all(torch.equal(plain[name], with_figures[name]) for name in plain)


def test_push_to_hub_uploads_the_trained_model(synthetic, tmp_path, hub_server, hub_env, hub_repo_id):
    from huggingface_hub import HfApi

    output_dir = tmp_path / "pushed"
    completed = run_cli(
        "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "1", "--output_dir", str(output_dir),
        "--push_to_hub", "--hub_model_id", hub_repo_id, env=hub_env,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    files = HfApi(endpoint=hub_server).list_repo_files(hub_repo_id)
    assert {"config.json", "model.safetensors", "metrics.csv", "train_results.json", "eval_results.json"} <= set(files)
    assert not any(name.startswith(CHECKPOINTS_DIR) for name in files)


def test_failed_push_keeps_the_trained_model_and_says_how_to_push_again(
    synthetic, tmp_path, hub_server, hub_env, hub_repo_id
):
    output_dir = tmp_path / "trained"
    completed = run_cli(
        "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "1", "--output_dir", str(output_dir),
        "--push_to_hub", "--hub_model_id", hub_repo_id, env={**hub_env, "HF_TOKEN": "hf_wrong_token"},
    )  # fmt: skip
    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert f"saved in {output_dir}" in completed.stderr
    assert f"hf-vae push {output_dir} --repo_id {hub_repo_id}" in completed.stderr
    assert "hf_wrong_token" not in completed.stderr + completed.stdout
    assert VAEModel.from_pretrained(output_dir).config.latent_dim > 0


def test_a_tracker_that_is_not_installed_is_refused(synthetic, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("dvclive") is not None:
        pytest.skip("dvclive is installed here")
    output_dir = tmp_path / "run"
    assert (
        train_here("--dataset_name", str(synthetic), *TINY, "--report_to", "dvclive", "--output_dir", str(output_dir))
        == 2
    )
    assert "--report_to dvclive: not installed" in capsys.readouterr().err
    assert not output_dir.exists()


def test_an_arguments_file_is_overridden_by_the_flags_after_it(tmp_path):
    recipe = Path(__file__).resolve().parents[1] / "configs" / "mnist-2d.json"
    model_args, data_args, training_args = parse_args(
        [str(recipe), "--dataset_name", "elsewhere/mnist", "--output_dir", str(tmp_path / "run"), "--seed", "7"]
    )
    values = json.loads(recipe.read_text())
    assert data_args.dataset_name == "elsewhere/mnist" and training_args.output_dir == str(tmp_path / "run")
    assert training_args.seed == 7
    assert model_args.preset == values["preset"] and training_args.learning_rate == values["learning_rate"]
    assert training_args.per_device_train_batch_size == values["per_device_train_batch_size"]

    yaml_file = tmp_path / "recipe.yaml"
    yaml_file.write_text("preset: mnist-2d\noutput_dir: from-file\nlatent_dim: 3\n")
    model_args, _, training_args = parse_args([str(yaml_file)])
    assert training_args.output_dir == "from-file" and model_args.latent_dim == 3

    yaml_file.write_text("preset: mnist-2d\nlatnet_dim: 3\n")
    with pytest.raises(ValueError, match="unknown option.*latnet_dim"):
        parse_args([str(yaml_file), "--output_dir", str(tmp_path)])


# ---------------------------------------------------------------------------------------------- README promises
def test_saved_model_is_the_best_epoch_by_validation_loss(synthetic, tmp_path):
    """40 training images and a high constant learning rate overfit within a few epochs (validation about 217 nats at
    epoch 5, about 250 at epoch 10): the folder must hold the best epoch's weights (its validation loss, recomputed,
    is the minimum of metrics.csv), not the last epoch's."""
    output_dir = tmp_path / "run"
    assert (
        train_here(
            "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "10", "--learning_rate", "0.02",
            "--max_train_samples", "40",
            "--lr_scheduler_type", "constant", "--checkpointing_steps", "no", "--output_dir", str(output_dir),
        )  # fmt: skip
        == 0
    )
    val_losses = [float(row["val_loss"]) for row in read_metrics(output_dir)]
    best_epoch = 1 + val_losses.index(min(val_losses))
    assert val_losses[-1] > min(val_losses) + 10, f"the run did not overfit, so this test proves nothing: {val_losses}"
    results = read_json(output_dir / "train_results.json")
    assert results["best_epoch"] == best_epoch and results["best_val_loss"] == pytest.approx(min(val_losses))

    from hf_vae.data import tensor_batches
    from hf_vae.evaluation import per_image_figures

    validation = load_splits(str(synthetic), seed=42).validation
    saved = VAEModel.from_pretrained(output_dir)
    figures = per_image_figures(saved, tensor_batches(validation, 1000), seed=42)
    assert len(figures["loss"]) == VALIDATION_IMAGES
    assert figures["loss"].mean().item() == pytest.approx(min(val_losses), rel=1e-5)


def test_num_importance_samples_trains_on_the_iwae_bound(synthetic, tmp_path):
    output_dir = tmp_path / "run"
    arguments = ["--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "1", "--output_dir", str(output_dir)]
    assert train_here(*arguments, "--num_importance_samples", "4", "--checkpointing_steps", "no") == 0
    assert VAEModel.from_pretrained(output_dir).config.num_importance_samples == 4
    (row,) = read_metrics(output_dir)
    # The training loss is minus the K-sample bound, which lies above the ELBO: below reconstruction + KL.
    assert float(row["train_loss"]) < float(row["train_recon_loss"]) + float(row["train_kl_loss"]) - 0.1


def test_save_total_limit_keeps_that_many_checkpoints(synthetic, tmp_path):
    output_dir = tmp_path / "run"
    assert (
        train_here(
            "--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "2", "--checkpointing_steps", "2",
            "--save_total_limit", "2", "--output_dir", str(output_dir),
        )  # fmt: skip
        == 0
    )
    # 6 steps an epoch, 12 in all: checkpoints at 2, 4, ..., 12; the newest two are kept.
    assert [path.name for path in checkpoint_folders(output_dir)] == ["checkpoint-10", "checkpoint-12"]
    assert sorted(path.name for path in (output_dir / CHECKPOINTS_DIR).iterdir()) == ["checkpoint-10", "checkpoint-12"]


def test_mixed_precision_bf16_trains_on_cpu(synthetic, tmp_path):
    output_dir = tmp_path / "run"
    arguments = ["--dataset_name", str(synthetic), *TINY, "--num_train_epochs", "1", "--output_dir", str(output_dir)]
    assert train_here(*arguments, "--mixed_precision", "bf16", "--checkpointing_steps", "no") == 0
    assert read_json(output_dir / "train_results.json")["mixed_precision"] == "bf16"
    (row,) = read_metrics(output_dir)
    assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["val_loss"]))
    weights = load_file(output_dir / "model.safetensors")
    assert all(tensor.dtype in (torch.float32, torch.int64) for tensor in weights.values())


def test_a_checkpoint_written_by_hf_vae_0_1_resumes(synthetic, tmp_path):
    """tests/data/checkpoint-hf-vae-0.1 is a mid-epoch checkpoint (step 8, 2 steps into epoch 2) written by the
    training loop before the family-contract change, with these options on the synthetic digits: it resumes and
    finishes the run, keeping the epoch the old loop had logged."""
    arguments = [
        "--dataset_name", str(synthetic), "--preset", "mnist-2d", "--hidden_sizes", "4", "--latent_dim", "2",
        "--per_device_train_batch_size", "32", "--skip_figures", "--disable_tqdm", "--num_train_epochs", "2",
        "--checkpointing_steps", "4", "--binarize", "dynamic", "--kl_warmup_steps", "10",
    ]  # fmt: skip
    output_dir = tmp_path / "run"
    old = Path(__file__).parent / "data" / "checkpoint-hf-vae-0.1" / "checkpoint-8"
    shutil.copytree(old, output_dir / CHECKPOINTS_DIR / "checkpoint-8")
    resumed = run_cli(*arguments, "--output_dir", str(output_dir), "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resumed from" in resumed.stderr and "checkpoint-8" in resumed.stderr
    rows = read_metrics(output_dir)
    old_row = read_json(old / STATE_FILE)["history"][0]
    assert len(rows) == 2 and float(rows[0]["train_loss"]) == old_row["train_loss"]
    assert math.isfinite(float(rows[1]["val_loss"]))
    assert read_json(output_dir / "train_results.json")["global_step"] == 12
