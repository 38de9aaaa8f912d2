"""Train samples/second of hf-vae's training loop against the reference tutorial's loop, in one process.

The reference pattern: a torch `DataLoader` (shuffle, batch 128) over a torchvision-style MNIST dataset that makes a
PIL image of each sample and applies `transforms.ToTensor()`, the tutorial's `nn.Module`, Adam 1e-3 and the
BCE-sum + KL loss, with a `.item()` per step. Ours: `hf_vae.training.train` on the `mnist-2d` preset (the same
network), batch 128, Adam 1e-3. Both train on the same 54k images (MNIST train minus the seeded 10% validation
split that `hf-vae train` holds out) and report the validation loss (eval mode, z sampled) after every epoch, so
that speed is compared at equal accuracy per epoch.

    python scripts/benchmark_training.py --epochs 2 --rounds 2
    python scripts/benchmark_training.py --epochs 2 --rounds 2 --compare_on_disk   # + ours reading batches from file
    python scripts/benchmark_training.py --whole_process --epochs 10               # whole processes, wall clock
    python scripts/benchmark_training.py --compare_streaming --steps 300 --rounds 2 # in memory against --streaming

Samples/second count the training steps only (not validation); with `--torch_compile` they include the first
step's compiling, which is printed apart. The rounds alternate reference and ours, so that a
machine shared with other work slows both alike; the figure reported is each loop's best round.

`--compare_on_disk` adds a run of ours whose training split stays in its decoded-image cache file and is read batch by
batch (`HF_VAE_IN_MEMORY_MAX_BYTES=0`, as for a split larger than memory) and prints its speed relative to the
in-memory run. `--whole_process` times two whole processes instead, start-up and data loading included: the reference
loop (`--reference_process`: import, load MNIST, train and validate every epoch) against `hf-vae train --preset
mnist-2d --num_train_epochs N` with its defaults (batch 256 at 2e-2 with a cosine decay, against the reference's 128 at
1e-3; test evaluation, pictures and model card at the end included), and prints each process's final validation loss
beside its time, so that the speed-up is read at the loss each reached.
`--compare_streaming` times ours alone for `--steps` steps, in memory against `--streaming` (batches read from the
Parquet file through `datasets`' shuffle buffer and decoded with PIL as training goes), alternating in each round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from hf_vae.convert import TutorialVAE
from hf_vae.data import IN_MEMORY_ENV, load_splits
from hf_vae.training import train
from hf_vae.training_args import DataArguments, ModelArguments, TrainingArguments

DEFAULT_MNIST = Path(__file__).resolve().parents[2] / "shared" / "mnist"


# ---------------------------------------------------------------------------------------------- the reference
class TorchvisionStyleMNIST(Dataset):
    """What `torchvision.datasets.MNIST` does per sample: uint8 array -> PIL image -> transform."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | None, transform):
        self.data = images[:, 0].numpy()
        self.targets = targets.tolist() if targets is not None else [0] * len(self.data)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index])
        return self.transform(image), self.targets[index]


class ReferenceRun:
    """The tutorial's loop, one epoch per call, state kept between calls."""

    def __init__(self, train_set: Dataset, val_set: Dataset, seed: int):
        torch.manual_seed(seed)
        self.model = TutorialVAE()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, mode="min", factor=0.5, patience=5)
        self.train_loader = DataLoader(train_set, batch_size=128, shuffle=True)
        self.val_loader = DataLoader(val_set, batch_size=128, shuffle=False)

    def epoch(self) -> dict[str, float]:
        self.model.train()
        started = time.perf_counter()
        train_loss = 0.0
        for data, _ in self.train_loader:
            self.optimizer.zero_grad()
            recon, mu, logvar = self.model(data)
            loss, _, _ = self.model.loss_function(recon, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            self.optimizer.step()
        train_seconds = time.perf_counter() - started
        self.model.eval()
        val_loss = 0.0
        with torch.no_grad():
            for data, _ in self.val_loader:
                recon, mu, logvar = self.model(data)
                val_loss += self.model.loss_function(recon, data, mu, logvar)[0].item()
        val_loss /= len(self.val_loader.dataset)
        self.scheduler.step(val_loss)
        return {
            "train_seconds": train_seconds,
            "epoch_seconds": time.perf_counter() - started,
            "train_loss": train_loss / len(self.train_loader.dataset),
            "val_loss": val_loss,
        }


def run_reference(train_set: Dataset, val_set: Dataset, epochs: int, seed: int) -> dict:
    torch.set_flush_denormal(False)  # as the tutorial runs; our loop turns it on (--flush_denormal) in this process
    run = ReferenceRun(train_set, val_set, seed)
    rows = [run.epoch() for _ in range(epochs)]
    train_seconds = sum(row["train_seconds"] for row in rows)
    return {
        "samples_per_second": len(train_set) * epochs / train_seconds,
        "train_seconds": train_seconds,
        "epochs": rows,
    }


# ---------------------------------------------------------------------------------------------- ours
@contextlib.contextmanager
def environment(**values: str):
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_ours(dataset_name: str, epochs: int, seed: int, extra: dict, on_disk: bool = False) -> dict:
    reading = environment(**{IN_MEMORY_ENV: "0"}) if on_disk else contextlib.nullcontext()
    with reading, tempfile.TemporaryDirectory(prefix="hf-vae-bench-") as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir,
            num_train_epochs=epochs,
            per_device_train_batch_size=128,
            learning_rate=1e-3,
            lr_scheduler_type="reduce_lr_on_plateau",
            seed=seed,
            checkpointing_steps="no",
            skip_figures=True,
            disable_tqdm=True,
            **extra,
        )
        results = train(ModelArguments(preset="mnist-2d"), DataArguments(dataset_name=dataset_name), training_args)
        metrics = (Path(output_dir) / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    rows = [dict(zip(header, map(float, line.split(",")), strict=True)) for line in metrics[1:]]
    return {
        "samples_per_second": results["train_samples_per_second"],
        "train_seconds": results["training_steps_seconds"],
        "first_step_seconds": results["first_step_seconds"],
        "epochs": [
            {"epoch_seconds": row["epoch_time"], "train_loss": row["train_loss"], "val_loss": row["val_loss"]}
            for row in rows
        ],
    }


def run_steps(dataset_name: str, steps: int, seed: int, streaming: bool) -> dict:
    """Ours for `steps` steps of mnist-2d (batch 128, Adam 1e-3), in memory or from the stream, one validation at the
    end (1,000 images, so that it weighs the same in both)."""
    with tempfile.TemporaryDirectory(prefix="hf-vae-bench-") as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=128,
            learning_rate=1e-3,
            lr_scheduler_type="constant",
            seed=seed,
            checkpointing_steps="no",
            skip_figures=True,
            disable_tqdm=True,
        )
        data_args = DataArguments(dataset_name=dataset_name, streaming=streaming, max_eval_samples=1000)
        results = train(ModelArguments(preset="mnist-2d"), data_args, training_args)
    return {
        "samples_per_second": results["train_samples_per_second"],
        "train_seconds": results["training_steps_seconds"],
        "total_wall_time": results["total_wall_time"],
        "final_val_loss": results["final_val_loss"],
    }


def compare_streaming(args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {"in_memory": [], "streaming": []}
    for round_index in range(args.rounds):
        for name in runs:
            runs[name].append(run_steps(args.dataset_name, args.steps, args.seed, streaming=name == "streaming"))
            run = runs[name][-1]
            print(
                f"round {round_index + 1} {name:<9}: {run['samples_per_second']:.0f} samples/s over {args.steps} steps "
                f"({run['train_seconds']:.2f} s of steps, {run['total_wall_time']:.2f} s in all; val loss "
                f"{run['final_val_loss']:.2f})",
                flush=True,
            )
    best = {name: max(run["samples_per_second"] for run in values) for name, values in runs.items()}
    ratio = best["streaming"] / best["in_memory"]
    print(
        f"train samples/s, best of {args.rounds}: in memory {best['in_memory']:.0f}, streaming {best['streaming']:.0f} "
        f"(streaming / in memory: {ratio:.3f})"
    )
    return {"runs": runs, "best": best, "streaming_over_in_memory": ratio}


# ---------------------------------------------------------------------------------------------- whole processes
def reference_process(dataset_name: str, epochs: int, seed: int) -> None:
    """The reference tutorial as one process: load MNIST, then train and validate every epoch, printing each."""
    splits = load_splits(dataset_name, validation_split=0.1, seed=seed)
    to_tensor = transforms.ToTensor()
    run = ReferenceRun(
        TorchvisionStyleMNIST(splits.train.images, splits.train.labels, to_tensor),
        TorchvisionStyleMNIST(splits.validation.images, splits.validation.labels, to_tensor),
        seed,
    )
    for epoch in range(epochs):
        row = run.epoch()
        print(f"Epoch {epoch + 1} | train {row['train_loss']:.4f} | val {row['val_loss']:.4f}", flush=True)


def time_process(command: list[str]) -> tuple[float, str]:
    """Wall seconds of one whole process, and what it printed (stdout and stderr)."""
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-2000:]}")
    return seconds, completed.stdout + completed.stderr


def whole_processes(args: argparse.Namespace) -> dict:
    reference = [
        sys.executable, __file__, "--reference_process", "--epochs", str(args.epochs), "--seed", str(args.seed),
        "--dataset_name", args.dataset_name,
    ]  # fmt: skip
    times: dict[str, list[float]] = {"reference": [], "hf_vae": []}
    val_losses: dict[str, list[float]] = {"reference": [], "hf_vae": []}
    for round_index in range(args.rounds):
        seconds, output = time_process(reference)
        times["reference"].append(seconds)
        val_losses["reference"].append(float(re.findall(r"\| val ([0-9.]+)", output)[-1]))
        with tempfile.TemporaryDirectory(prefix="hf-vae-bench-") as output_dir:
            ours = [
                sys.executable, "-m", "hf_vae.cli", "train", "--preset", "mnist-2d", "--dataset_name",
                args.dataset_name, "--num_train_epochs", str(args.epochs), "--seed", str(args.seed), "--output_dir",
                output_dir, "--disable_tqdm",
            ]  # fmt: skip
            seconds, output = time_process(ours)
            times["hf_vae"].append(seconds)
            val_losses["hf_vae"].append(float(re.findall(r"Val Loss: ([0-9.]+)", output)[-1]))
        print(
            f"round {round_index + 1}: reference process {times['reference'][-1]:.1f} s (final validation loss "
            f"{val_losses['reference'][-1]:.2f}), hf-vae train {times['hf_vae'][-1]:.1f} s "
            f"({val_losses['hf_vae'][-1]:.2f})",
            flush=True,
        )
    best = {name: min(values) for name, values in times.items()}
    ratio = best["reference"] / best["hf_vae"]
    print(
        f"{args.epochs} epochs as whole processes (start-up and data loading included): reference "
        f"{best['reference']:.1f} s, hf-vae train {best['hf_vae']:.1f} s (best of {args.rounds}); speed-up {ratio:.2f}x"
    )
    return {"seconds": times, "best": best, "ratio": ratio, "final_val_loss": val_losses}


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset_name", default=str(DEFAULT_MNIST), help="MNIST, laid out like ylecun/mnist.")
    parser.add_argument("--epochs", type=int, default=2, help="Epochs per loop and round.")
    parser.add_argument("--rounds", type=int, default=1, help="Alternating reference/ours rounds.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--num_threads", type=int, default=None, help="torch.set_num_threads for both loops.")
    parser.add_argument("--skip_reference", action="store_true", help="Time our loop only.")
    parser.add_argument("--mixed_precision", default=None, help="Also pass this to our loop (e.g. bf16).")
    parser.add_argument("--torch_compile", action="store_true", help="Also pass --torch_compile to our loop.")
    parser.add_argument("--compare_on_disk", action="store_true", help="Also run ours reading batches from file.")
    parser.add_argument("--whole_process", action="store_true", help="Time whole processes instead (wall clock).")
    parser.add_argument(
        "--compare_streaming", action="store_true", help="Time ours in memory against --streaming instead."
    )
    parser.add_argument("--steps", type=int, default=300, help="Steps per run of --compare_streaming.")
    parser.add_argument("--reference_process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--output", default=None, help="Write the figures as JSON here.")
    args = parser.parse_args()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if args.reference_process:
        reference_process(args.dataset_name, args.epochs, args.seed)
        return
    if args.whole_process or args.compare_streaming:
        figures = whole_processes(args) if args.whole_process else compare_streaming(args)
        if args.output:
            Path(args.output).write_text(json.dumps(figures, indent=2))
        return

    splits = load_splits(args.dataset_name, validation_split=0.1, seed=args.seed)
    to_tensor = transforms.ToTensor()
    train_set = TorchvisionStyleMNIST(splits.train.images, splits.train.labels, to_tensor)
    val_set = TorchvisionStyleMNIST(splits.validation.images, splits.validation.labels, to_tensor)
    extra = {"mixed_precision": args.mixed_precision} if args.mixed_precision else {}
    if args.torch_compile:
        extra["torch_compile"] = True
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(train_set)} training images, "
        f"{len(val_set)} validation images; {args.epochs} epoch(s) x {args.rounds} round(s)",
        flush=True,
    )

    results: dict[str, list[dict]] = {"reference": [], "hf_vae": []}
    if args.compare_on_disk:
        results["hf_vae_on_disk"] = []
    for round_index in range(args.rounds):
        if not args.skip_reference:
            results["reference"].append(run_reference(train_set, val_set, args.epochs, args.seed))
            print(f"round {round_index + 1} reference: {results['reference'][-1]['samples_per_second']:.0f} samples/s")
        results["hf_vae"].append(run_ours(args.dataset_name, args.epochs, args.seed, extra))
        ours = results["hf_vae"][-1]
        print(
            f"round {round_index + 1} hf-vae:    {ours['samples_per_second']:.0f} samples/s (first step "
            f"{ours['first_step_seconds']:.2f} s{', compiling included' if args.torch_compile else ''})"
        )
        if args.compare_on_disk:
            results["hf_vae_on_disk"].append(run_ours(args.dataset_name, args.epochs, args.seed, extra, on_disk=True))
            speed = results["hf_vae_on_disk"][-1]["samples_per_second"]
            print(f"round {round_index + 1} hf-vae, batches read from the cache file: {speed:.0f} samples/s")

    print("\nvalidation loss after each epoch (nats per image, eval mode, z sampled):")
    for name, runs in results.items():
        for round_index, run in enumerate(runs):
            losses = " ".join(f"{row['val_loss']:.2f}" for row in run["epochs"])
            seconds = " ".join(f"{row['epoch_seconds']:.2f}" for row in run["epochs"])
            print(f"  {name:<9} round {round_index + 1}: val {losses} | epoch wall s {seconds}")
    summary = {}
    for name, runs in results.items():
        if runs:
            speeds = [run["samples_per_second"] for run in runs]
            summary[name] = {"best": max(speeds), "median": statistics.median(speeds)}
            print(f"{name:<9} train samples/s: best {max(speeds):.0f}, median {statistics.median(speeds):.0f}")
    if "reference" in summary:
        ratio = summary["hf_vae"]["best"] / summary["reference"]["best"]
        median_ratio = summary["hf_vae"]["median"] / summary["reference"]["median"]
        summary["ratio_best"], summary["ratio_median"] = ratio, median_ratio
        print(f"speed-up (hf-vae / reference): {ratio:.2f}x best, {median_ratio:.2f}x median")
    if "hf_vae_on_disk" in summary:
        on_disk = summary["hf_vae_on_disk"]["best"] / summary["hf_vae"]["best"]
        summary["on_disk_over_in_memory_best"] = on_disk
        print(f"batches read from the cache file / in memory: {on_disk:.3f} (best rounds)")
    if args.output:
        Path(args.output).write_text(json.dumps({"summary": summary, "runs": results}, indent=2, default=float))


if __name__ == "__main__":
    main()
