"""The README, followed line by line as a new user would: every `hf-vae` / `python` command of its bash blocks and
every python block runs, in order, in a fresh folder, against the local MNIST and the local Hub server, with sizes
made small (options appended to a command override the README's own, as on the command line). A command that no
longer works fails here, so the README cannot drift from the code.

Left out, with the reason: the install and test commands (CI runs them), `accelerate config` / `hf auth login`
(interactive), multi-GPU launches (no GPU; the 2-process CPU launch is tested in test_training.py), placeholders
(`...`, `path/to/`), the tutorial's Hub repo (not on the local server), the pretrained model's 5000-sample
evaluation (its 1000-sample siblings run), `hf-vae demo` (it serves until stopped: tests/test_demo_browser.py runs it)
and fitting a committed model's mixture (it would rewrite the committed file).

The steps form two independent chains, each run in order in its own folder: the first model's (every step that
names the folder `out` or the Hub repo it is pushed to: train, evaluate, sample, draw, push, pull), here, and all the
others (the quick start, streaming, the committed models, the VQ-VAE, the conditional model), in
`test_readme_others.py`. Two files, so that `pytest -n 2 --dist loadfile` runs them side by side: the README's
commands are a third of the suite's time, one Python start-up after another.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP = (
    "pip install", "pytest", "accelerate", "hf auth", "...", "path/to/", "karthik-2905", "--iwae_samples 5000",
    "hf-vae demo", "fit-sampler pretrained/",
)  # fmt: skip
# Appended to each command: the last value of an option wins.
SMALL = {
    "train": ["--max_train_samples", "600", "--max_eval_samples", "200", "--num_train_epochs", "1",
              "--per_device_train_batch_size", "100", "--disable_tqdm"],  # fmt: skip
    "evaluate": ["--iwae_samples", "5", "--elbo_samples", "2", "--max_samples", "100",
                 "--max_threshold_samples", "200", "--generated_samples", "500"],  # fmt: skip
    "fit-sampler": ["--max_samples", "600"],
    "visualize": ["--max_samples", "200"],
    "train-prior": ["--max_train_samples", "300", "--max_eval_samples", "100", "--num_train_epochs", "1",
                    "--num_layers", "1", "--hidden_size", "16", "--num_heads", "2"],  # fmt: skip
    "encode": ["--max_samples", "100"],
}
FIRST_MODEL = re.compile(r"""(^|[\s"(])out(?!\s*=)([\s"/)]|$)|your-name/mnist-vae""")  # not `out = model(x)`
pytestmark = pytest.mark.slow


def readme_steps() -> list[tuple[str, str]]:
    """("bash", one command) and ("python", one block), in README order."""
    steps = []
    for language, body in re.findall(r"```(bash|python)\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL):
        if language == "python":
            steps.append(("python", body))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#") and not any(skip in line for skip in SKIP):
                steps.append(("bash", line))
    return steps


def run_readme_steps(steps: list[tuple[str, str]], mnist_dir: Path, hub_env: dict, hub_repo_id: str, folder: Path):
    """Run `steps` in order in `folder`, as a user in a fresh clone would; return the steps that ran."""
    for name in ("pretrained", "configs", "scripts"):
        (folder / name).symlink_to(REPO / name)
    image_folder = folder / "my_images"
    image_folder.mkdir()
    from PIL import Image

    Image.new("L", (28, 28), 0).save(image_folder / "blank.png")
    Image.new("L", (40, 30), 255).save(image_folder / "white.png")

    ran = []
    for language, step in steps:
        step = step.replace("your-name/mnist-vae", hub_repo_id).replace("ylecun/mnist", str(mnist_dir))
        step = step.replace("../shared/mnist", str(mnist_dir))
        if language == "python":
            script = folder / f"step{len(ran)}.py"
            script.write_text("import torch\nfrom hf_vae import VAEConfig, VAEModel\n" + step)
            command = [sys.executable, str(script)]
        else:
            command = shlex.split(step)
            if command[0] == "hf-vae":
                command = [sys.executable, "-m", "hf_vae.cli", *command[1:]]
                command += SMALL.get(command[3], [])
            elif command[0] == "python":
                if "--update" in command or "build_pretrained.py" in step or "benchmark" in step:
                    continue
                command[0] = sys.executable
        completed = subprocess.run(command, cwd=folder, env=hub_env, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, f"README step failed: {step}\n{completed.stdout[-2000:]}\n{completed.stderr}"
        ran.append(step)
    return ran


def first_model_steps() -> list[tuple[str, str]]:
    return [(language, step) for language, step in readme_steps() if FIRST_MODEL.search(step)]


def other_steps() -> list[tuple[str, str]]:
    return [(language, step) for language, step in readme_steps() if not FIRST_MODEL.search(step)]


def test_the_first_model_chain_starts_by_training_it():
    """The split is sound only if `out` is made inside its chain, before any step reads it, and by no other step."""
    (_, first), *_ = first_model_steps()
    assert first.startswith("hf-vae train") and first.endswith("--output_dir out")
    assert not any(step.endswith("--output_dir out") for _, step in other_steps())


def test_readme_first_model_commands_run_in_order(mnist_dir, hub_env, hub_repo_id, tmp_path):
    commands = " ".join(run_readme_steps(first_model_steps(), mnist_dir, hub_env, hub_repo_id, tmp_path))
    for promised in ("hf-vae train", "hf-vae evaluate", "hf-vae visualize", "hf-vae push", "from_pretrained"):
        assert promised in commands
    assert (tmp_path / "out" / "evaluation.json").is_file() and (tmp_path / "scores.csv").is_file()
    assert (tmp_path / "out" / "pictures" / "samples.png").is_file() and (tmp_path / "out-again").is_dir()
