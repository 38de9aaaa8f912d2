"""Subnormal floats on the CPU: x86 CPUs compute with them in slow microcode, and the small gradients and
activations of a long run produce them (the VampPrior hierarchical VAE's training step took twice as long, and its
evaluation 10-30% longer, without flushing them). Training and evaluation flush them to zero for their run and then
restore what the caller had, so that calling `train()` from a notebook does not change its arithmetic afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def denormals_are_flushed() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal floats to zero (torch has a setter only)."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


@contextlib.contextmanager
def denormals_flushed(enabled: bool = True) -> Iterator[None]:
    """Flush subnormals to zero inside the block when `enabled` (values below about 1e-38 become 0), and restore the
    previous setting after it. A no-op where the CPU has no such mode."""
    previous = denormals_are_flushed()
    if enabled:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)
