"""Train, evaluate and card one reference model into `pretrained/NAME/` from its recipe `configs/NAME.json`.

    python scripts/build_pretrained.py mnist-2d --dataset_name ../shared/mnist --iwae_samples 1000

runs, from the repository root, exactly the commands a user would type:

    hf-vae train configs/NAME.json --dataset_name DATA --output_dir pretrained/NAME --overwrite_output_dir
    hf-vae evaluate pretrained/NAME --dataset_name DATA --split test --iwae_samples K \
        --output pretrained/NAME/evaluation.json

and, when a prior recipe `configs/NAME-prior.json` exists (a VQ-VAE's prior over its codes), between the two:

    hf-vae train-prior --model pretrained/NAME --dataset_name DATA --OPTION VALUE ...   (the recipe's options)
    hf-vae visualize pretrained/NAME --dataset_name DATA --output_dir pretrained/NAME   (samples now from the prior)

then drops the training checkpoints (they are for resuming, and `hf-vae push` leaves them out too), writes the model
card as `README.md`, and records the commands and their wall times in `build.json`. The folder is then what
`hf-vae push pretrained/NAME --repo_id ...` uploads, and `VAEModel.from_pretrained("pretrained/NAME")` loads it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(command: list[str]) -> float:
    print("+ " + shlex.join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO_ROOT)
    return round(time.perf_counter() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the recipe configs/NAME.json; the model goes to pretrained/NAME")
    parser.add_argument("--dataset_name", default="ylecun/mnist", help="Hub dataset id or local copy of MNIST")
    parser.add_argument("--iwae_samples", type=int, default=5000, help="K of the test IWAE estimate")
    parser.add_argument(
        "--prior_only",
        action="store_true",
        help="keep the trained model and its train command (build.json); train the prior again, redraw, evaluate",
    )
    parser.add_argument(
        "--evaluate_only",
        type=float,
        default=None,
        metavar="TRAIN_SECONDS",
        help="keep the model an interrupted build trained, give its train command's wall time, evaluate and card it",
    )
    args = parser.parse_args(argv)

    recipe = Path("configs") / f"{args.name}.json"
    if not (REPO_ROOT / recipe).is_file():
        available = sorted(path.stem for path in (REPO_ROOT / "configs").glob("*.json"))
        parser.error(f"no recipe {recipe}; available: {available}")
    model_dir = Path("pretrained") / args.name
    hf_vae = [sys.executable, "-m", "hf_vae.cli"]
    train = [*hf_vae, "train", str(recipe), "--dataset_name", args.dataset_name, "--output_dir", str(model_dir),
             "--overwrite_output_dir"]
    evaluate = [*hf_vae, "evaluate", str(model_dir), "--dataset_name", args.dataset_name, "--split", "test",
                "--iwae_samples", str(args.iwae_samples), "--output", str(model_dir / "evaluation.json")]
    commands = [train]
    if args.prior_only:
        previous = json.loads((REPO_ROOT / model_dir / "build.json").read_text())
        train_seconds = previous["train_command_seconds"]
    elif args.evaluate_only is not None:
        train_seconds = args.evaluate_only
    else:
        train_seconds = _run(train)
    prior_recipe = REPO_ROOT / "configs" / f"{args.name}-prior.json"
    prior_seconds = None
    if prior_recipe.is_file() and args.evaluate_only is None:
        options = json.loads(prior_recipe.read_text())
        train_prior = [*hf_vae, "train-prior", "--model", str(model_dir), "--dataset_name", args.dataset_name]
        for key, value in options.items():
            train_prior += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
        visualize = [*hf_vae, "visualize", str(model_dir), "--dataset_name", args.dataset_name, "--output_dir",
                     str(model_dir)]  # fmt: skip
        prior_seconds = _run(train_prior)
        _run(visualize)
        commands += [train_prior, visualize]
    evaluate_seconds = _run(evaluate)
    commands.append(evaluate)

    shutil.rmtree(REPO_ROOT / model_dir / "checkpoints", ignore_errors=True)
    build = {
        "commands": [shlex.join(["hf-vae", *command[3:]]) for command in commands],
        "train_command_seconds": train_seconds,
        **({"train_prior_command_seconds": prior_seconds} if prior_seconds is not None else {}),
        "evaluate_command_seconds": evaluate_seconds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    (REPO_ROOT / model_dir / "build.json").write_text(json.dumps(build, indent=2) + "\n")
    from hf_vae.model_card import write_model_card

    write_model_card(REPO_ROOT / model_dir)
    print(f"{model_dir}: train {train_seconds} s, evaluate {evaluate_seconds} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
