"""The `hf-vae` command line: one vocabulary, one error style, fast help, a clear line for every mistake."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_training import TINY, make_dataset, subprocess_env

from hf_vae.checkpointing import checkpoint_folders
from hf_vae.cli import COMMANDS
from hf_vae.cli import main as cli_main
from hf_vae.evaluation import EvaluationError

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "datasets", "accelerate")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cli-data") / "digits")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_is_fast_and_imports_no_heavy_library(command):
    """`hf-vae --help` and `hf-vae <command> --help` as the installed script runs them (its argv[0] is `hf-vae`):
    the usage names the command, and neither torch, transformers, datasets nor accelerate is imported."""
    argv = ["hf-vae", *([command] if command else []), "--help"]
    script = (
        f"import sys; sys.argv = {argv!r}\n"
        "from hf_vae.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "LOADED []" in completed.stdout
    assert completed.stdout.startswith(f"usage: hf-vae {command or '<command>'}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--num_epochs", "3", "--output_dir", "x"], "Unknown option --num_epochs (did you mean --num_train_"),
        (["train", "--num_train_epoch", "3", "--output_dir", "x"], "(did you mean --num_train_epochs?)"),
        (["train", "--lr", "1e-3", "--output_dir", "x"], "Unknown option --lr"),
        (["train", "--binarize", "yes", "--output_dir", "x"], "--binarize: invalid choice: 'yes'"),
        (["train", "--latent_dim", "0", "--output_dir", "x", "--dataset_name", "./nowhere"], None),
        (["push", "--model", "out", "--repo_id", "me/vae", "--privat"], "(did you mean --private?)"),
        (["evaluate", "--dataset_name", "d"], "Which model? Pass a model folder or Hub repo id"),
        (["evalute"], "Did you mean `hf-vae evaluate`?"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_code_2(argv, message, capsys):
    code = cli_main(argv)
    err = capsys.readouterr().err
    if message is None:  # a value the config refuses: found before any data is read, a failure (exit 1)
        assert code == 1 and "`latent_dim` must be a positive integer, got 0" in err and "nowhere" not in err
        return
    assert code == 2 and message in err, err
    assert "Traceback (most recent call last)" not in err
    if argv[0] in COMMANDS:
        assert "usage:" not in err and len(err.strip().splitlines()) == 1
    command = argv[0] if argv[0] in COMMANDS else None
    assert err.startswith(f"hf-vae {command}: error: " if command else "hf-vae: error: ")


def test_old_option_names_are_aliases(tmp_path, capsys):
    from hf_vae import VAEConfig, VAEModel

    VAEModel(VAEConfig(hidden_sizes=[8])).save_pretrained(tmp_path / "model")
    # --max_eval_samples for --max_samples, --batch_size for --per_device_eval_batch_size, the model positional
    code = cli_main(
        ["evaluate", str(tmp_path / "model"), "--dataset_name", str(tmp_path / "nowhere"), "--max_eval_samples", "3",
         "--batch_size", "2"]  # fmt: skip
    )
    assert code == 1 and "nowhere" in capsys.readouterr().err  # parsed; the missing dataset is the failure
    assert cli_main(["evaluate", "a", "--model", "b", "--dataset_name", "d"]) == 2
    assert "Two models given" in capsys.readouterr().err


def test_a_local_looking_path_that_does_not_exist_is_named_at_once(tmp_path, capsys):
    started = time.perf_counter()
    assert cli_main(["evaluate", "./outt", "--dataset_name", "d"]) == 1
    assert "No model folder './outt': that path does not exist" in capsys.readouterr().err
    assert time.perf_counter() - started < 60  # no download retries (the real bound is seconds)


def test_a_bare_name_with_an_unreachable_hub_says_both_in_one_line(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on: the "Hub" refuses connections
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("HF_")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_XET="1")
    command = [sys.executable, "-m", "hf_vae.cli", "evaluate", "outt", "--dataset_name", "d"]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert completed.returncode == 1
    lines = [line for line in completed.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Retrying" not in completed.stderr, completed.stderr
    assert "No model folder 'outt' here, and the Hub" in lines[0] and "cannot be reached" in lines[0]


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(EvaluationError, match="that path does not exist"):
        cli_main(["evaluate", "./outt", "--dataset_name", "d", "--debug"])


def test_ctrl_c_ends_with_one_line_saying_how_to_resume(digits, tmp_path):
    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "hf_vae.cli", "train", "--dataset_name", str(digits), *TINY, "--num_train_epochs", "200",
        "--checkpointing_steps", "4", "--output_dir", str(output_dir),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not checkpoint_folders(output_dir) and process.poll() is None:
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    stderr = stderr.decode()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("hf-vae train: interrupted.")
    assert "--resume_from_checkpoint latest" in stderr
    assert checkpoint_folders(output_dir)


def test_resuming_a_finished_run_says_there_is_nothing_left(digits, tmp_path, capsys, caplog):
    arguments = ["train", "--dataset_name", str(digits), *TINY, "--num_train_epochs", "1", "--output_dir",
                 str(tmp_path / "run")]  # fmt: skip
    caplog.set_level(logging.INFO, logger="hf_vae")
    try:
        assert cli_main(arguments) == 0
        results = json.loads((tmp_path / "run" / "train_results.json").read_text())
        capsys.readouterr()
        assert cli_main([*arguments, "--resume_from_checkpoint", "latest"]) == 0
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    out, _ = capsys.readouterr()
    assert "nothing left to train" in caplog.text and "Epoch" not in out
    assert json.loads((tmp_path / "run" / "train_results.json").read_text())["global_step"] == results["global_step"]


def test_an_overwritten_output_folder_loses_the_previous_runs_pictures(digits, tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / "latent_manifold.png").write_bytes(b"a picture of the previous run")
    (output_dir / "evaluation.json").write_text("{}")
    try:
        assert cli_main(
            ["train", "--dataset_name", str(digits), *TINY, "--num_train_epochs", "1", "--output_dir", str(output_dir),
             "--overwrite_output_dir"]  # fmt: skip
        ) == 0
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    assert not (output_dir / "latent_manifold.png").exists() and not (output_dir / "evaluation.json").exists()


def test_the_light_option_lists_match_the_libraries():
    """`hf-vae train --help` does not import transformers or the configs, so it keeps its own lists: they must stay
    those of transformers' schedules and of hf-vae's presets."""
    from transformers import SchedulerType

    from hf_vae.families import presets
    from hf_vae.training_args import LR_SCHEDULERS, PRESET_NAMES

    assert set(LR_SCHEDULERS) == {scheduler.value for scheduler in SchedulerType}
    assert set(PRESET_NAMES) == set(presets())
