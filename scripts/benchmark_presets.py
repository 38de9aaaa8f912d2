"""How close each preset's training step runs to this CPU's arithmetic limit, measured in one run.

    python scripts/benchmark_presets.py --steps 30

For every preset (one family after another, through `hf_vae.families`), on random binary 28x28 (or 32x32 RGB)
batches of 128: the training step's samples per second (forward, backward and the fused AdamW step, after warm-up
steps), its FLOPs per sample counted by `torch.utils.flop_counter.FlopCounterMode` over one forward + backward, the
achieved GFLOP/s, and their ratio to the fp32 matmul rate measured in the same run (1024x1024 `torch.mm`, best of
several). On a machine shared with other work, run it twice and keep the faster figures.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_vae.families import config_from_preset, model_class, presets


def matmul_gflops(size: int = 1024, repeats: int = 20) -> float:
    """The machine's fp32 matmul rate: the best of `repeats` timed products of two size x size matrices."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def benchmark_preset(name: str, steps: int, batch_size: int) -> dict:
    torch.manual_seed(0)
    config = config_from_preset(name)
    model = model_class(config.model_type)(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    shape = (batch_size, config.num_channels, config.image_size, config.image_size)
    pixels = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3).float()

    def step() -> None:
        model(pixels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        model(pixels).loss.backward()
    optimizer.zero_grad(set_to_none=True)
    flops_per_sample = counter.get_total_flops() / batch_size
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = time.perf_counter() - started
    samples_per_second = steps * batch_size / seconds
    return {
        "preset": name,
        "model_type": config.model_type,
        "samples_per_second": round(samples_per_second, 1),
        "mflop_per_sample": round(flops_per_sample / 1e6, 2),
        "achieved_gflops": round(samples_per_second * flops_per_sample / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="Timed training steps per preset.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--presets", nargs="*", default=None, help="Default: every preset of every family.")
    parser.add_argument("--output", default=None, help="Write the figures as JSON here.")
    args = parser.parse_args()
    rows = []
    peak = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul {peak:.1f} GFLOP/s")
    names = args.presets or sorted(presets())
    width = max(12, *map(len, names))
    print(f"{'preset':<{width}} {'samples/s':>10} {'MFLOP/sample':>13} {'GFLOP/s':>8} {'of matmul':>10}")
    for name in names:
        row = benchmark_preset(name, args.steps, args.batch_size)
        row["fraction_of_matmul"] = round(row["achieved_gflops"] / peak, 3)
        rows.append(row)
        print(
            f"{name:<{width}} {row['samples_per_second']:>10.0f} {row['mflop_per_sample']:>13.2f} "
            f"{row['achieved_gflops']:>8.1f} {row['fraction_of_matmul']:>10.2f}",
            flush=True,
        )
    peak_after = matmul_gflops()
    print(f"fp32 matmul again at the end: {peak_after:.1f} GFLOP/s (the ratios use the first figure)")
    if args.output:
        with open(args.output, "w") as handle:
            json.dump({"matmul_gflops": [peak, peak_after], "presets": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
