"""How close each preset's training step runs to this CPU's arithmetic limit, measured in one run.

    python scripts/benchmark_presets.py --steps 30
    python scripts/benchmark_presets.py --presets mnist-conv --variants eager channels_last compile --rounds 3

For every preset (one family after another, through `hf_vae.families`), on random binary 28x28 (or 32x32 RGB)
batches of 128: the training step's samples per second (forward, backward and the fused AdamW step, after warm-up
steps), its FLOPs per sample counted by `torch.utils.flop_counter.FlopCounterMode` over one forward + backward, the
achieved GFLOP/s, and their ratio to the fp32 matmul rate measured in the same run (1024x1024 `torch.mm`, best of
several, measured again after every round and the best kept, so that a moment of load does not inflate the ratios).

Variants of the step (`--variants`): `eager` (the model as built), `channels_last` (weights and activations in
NHWC, as `hf-vae train` runs convolutional models on a CPU), `compile` (`torch.compile` of the model, as
`--torch_compile`) and `compile_channels_last`; each of them with `bf16` in its name runs the forward under bf16
autocast, as `--mixed_precision bf16` does (weights, gradients and the optimiser stay fp32). With a bf16 variant the
bf16 matmul rate is measured too, and a second ratio, to it, is printed: on a CPU with AMX tiles bf16 products run
several times faster than fp32 ones, so the fp32 ratio alone would flatter a bf16 step. For compiled variants the
first step's time, mostly compiling (or loading the compiled code from inductor's on-disk cache: run twice to see
both), is printed apart from the steady-state speed. With `--rounds N` the variants are timed in turn N times and
each keeps its best round, so that a machine shared with other work slows them alike.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from hf_vae.families import config_from_preset, model_class, presets

VARIANTS = (
    "eager", "channels_last", "compile", "compile_channels_last",
    "bf16", "bf16_channels_last", "compile_bf16", "compile_bf16_channels_last",
)  # fmt: skip


def matmul_gflops(size: int = 1024, repeats: int = 20, dtype: torch.dtype = torch.float32) -> float:
    """The machine's matmul rate in `dtype`: the best of `repeats` timed products of two size x size matrices."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


class PresetStep:
    """One preset's model, optimiser and batch, set up as `variant` says; `time(steps)` gives samples/s."""

    def __init__(self, name: str, variant: str, batch_size: int):
        torch.manual_seed(0)
        self.config = config_from_preset(name)
        model = model_class(self.config.model_type)(self.config).train()
        shape = (batch_size, self.config.num_channels, self.config.image_size, self.config.image_size)
        self.pixels = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.3).float()
        if "channels_last" in variant:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        self.forward = torch.compile(model, dynamic=False) if variant.startswith("compile") else model
        self.autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in variant)
        self.batch_size = batch_size
        started = time.perf_counter()
        self.step()
        self.first_step_seconds = time.perf_counter() - started
        for _ in range(2):
            self.step()

    def step(self) -> None:
        with self.autocast:
            loss = self.forward(self.pixels).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def flops_per_sample(self) -> float:
        with FlopCounterMode(display=False) as counter:
            self.model(self.pixels).loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops() / self.batch_size

    def samples_per_second(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        return steps * self.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="Timed training steps per preset, variant and round.")
    parser.add_argument("--rounds", type=int, default=1, help="Times each variant is timed; the best is kept.")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--presets", nargs="*", default=None, help="Default: every preset of every family.")
    parser.add_argument("--variants", nargs="*", default=["eager"], choices=VARIANTS)
    parser.add_argument("--torch_compile", action="store_true", help="Add the compile variants.")
    parser.add_argument("--output", default=None, help="Write the figures as JSON here.")
    args = parser.parse_args()
    variants = list(dict.fromkeys(args.variants + (["compile", "compile_channels_last"] if args.torch_compile else [])))
    rows = []
    peak = matmul_gflops()
    with_bf16 = any("bf16" in variant for variant in variants)
    peak_bf16 = matmul_gflops(dtype=torch.bfloat16) if with_bf16 else None
    bf16_rate = f", bf16 matmul {peak_bf16:.1f} GFLOP/s" if with_bf16 else ""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; fp32 matmul {peak:.1f} GFLOP/s{bf16_rate}")
    names = args.presets or sorted(presets())
    width = max(12, *map(len, names))
    print(
        f"{'preset':<{width}} {'variant':<26} {'samples/s':>10} {'MFLOP/sample':>13} {'GFLOP/s':>8} {'of matmul':>10} "
        f"{'first step s':>13}" + (f" {'of bf16 matmul':>15}" if with_bf16 else "")
    )
    for name in names:
        steps = {variant: PresetStep(name, variant, args.batch_size) for variant in variants}
        # Counting FLOPs runs one eager fp32 forward and backward first. That also raises glibc's mmap threshold to
        # the model's largest activations, as the training loop's first steps and validation do; without it a fresh
        # process maps and faults them afresh every step (mnist-conv's compiled bf16 step: 3,500-3,800 against
        # 4,500-5,100 samples/s; docs/recipes.md, "glibc's allocator").
        flops = steps[variants[0]].flops_per_sample()
        best = dict.fromkeys(variants, 0.0)
        for _ in range(args.rounds):
            for variant in variants:
                best[variant] = max(best[variant], steps[variant].samples_per_second(args.steps))
            peak = max(peak, matmul_gflops())  # between rounds too: a dip in the machine's speed must not flatter us
            if with_bf16:
                peak_bf16 = max(peak_bf16, matmul_gflops(dtype=torch.bfloat16))
        for variant in variants:
            achieved = best[variant] * flops / 1e9
            row = {
                "preset": name,
                "variant": variant,
                "model_type": steps[variant].config.model_type,
                "samples_per_second": round(best[variant], 1),
                "mflop_per_sample": round(flops / 1e6, 2),
                "achieved_gflops": round(achieved, 1),
                "fraction_of_matmul": round(achieved / peak, 3),
                "first_step_seconds": round(steps[variant].first_step_seconds, 2),
            }
            if "bf16" in variant:
                row["fraction_of_bf16_matmul"] = round(achieved / peak_bf16, 3)
            rows.append(row)
            of_bf16 = f" {row['fraction_of_bf16_matmul']:>15.2f}" if "bf16" in variant else ""
            print(
                f"{name:<{width}} {variant:<26} {row['samples_per_second']:>10.0f} {row['mflop_per_sample']:>13.2f} "
                f"{row['achieved_gflops']:>8.1f} {row['fraction_of_matmul']:>10.2f} {row['first_step_seconds']:>13.2f}"
                + of_bf16,
                flush=True,
            )
    peak_after = matmul_gflops()
    print(
        f"fp32 matmul at the end: {peak_after:.1f} GFLOP/s; the ratios use the best rate measured up to their row, "
        f"finally {peak:.1f} GFLOP/s" + (f" (bf16: {peak_bf16:.1f} GFLOP/s)" if with_bf16 else "")
    )
    if args.output:
        figures = {"matmul_gflops": [peak, peak_after], "bf16_matmul_gflops": peak_bf16, "presets": rows}
        with open(args.output, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
