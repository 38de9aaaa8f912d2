"""The optimiser and the schedules of the training loop: AdamW, transformers' learning-rate schedules, KL warm-up."""

from __future__ import annotations

import torch
from transformers import get_scheduler

# Schedules stepped once per epoch on the validation loss rather than once per optimiser step.
METRIC_SCHEDULERS = ("reduce_lr_on_plateau", "greedy")


def create_optimizer(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    device: torch.device | None = None,
) -> torch.optim.Optimizer:
    """AdamW (Adam when weight_decay is 0), fused into one kernel launch per step where torch supports it: the
    per-tensor Adam loop is a quarter of a small model's step time. Biases and norm weights are not decayed."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if weight_decay > 0:
        groups = [
            {"params": [p for p in parameters if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in parameters if p.ndim < 2], "weight_decay": 0.0},
        ]
    else:
        groups = [{"params": parameters, "weight_decay": 0.0}]
    fused = device is not None and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, eps=eps, fused=fused or None)


def create_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, max_steps: int):
    """transformers' schedules by name; 'reduce_lr_on_plateau' with the reference's factor 0.5 and patience 5,
    stepped on the validation loss once per epoch."""
    specific = {"mode": "min", "factor": 0.5, "patience": 5} if name == "reduce_lr_on_plateau" else None
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=max_steps,
        scheduler_specific_kwargs=specific,
    )


def kl_weight_at(step: int, warmup_steps: int) -> float:
    """KL annealing: the weight of the KL term grows linearly from 0 to 1 over `warmup_steps` optimiser steps."""
    return 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)


__all__ = ["METRIC_SCHEDULERS", "create_optimizer", "create_scheduler", "kl_weight_at"]
