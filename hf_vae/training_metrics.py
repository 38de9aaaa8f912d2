"""The training loop's loss bookkeeping and metrics.csv.

Losses stay on the device and are read every `--logging_steps` steps: reading them every step would stall a GPU
pipeline. Each read checks them for NaN/inf and names the first bad step. The terms are whatever the family's
`forward` names in `loss_terms`, so metrics.csv has the columns epoch, train_loss, train_<term>..., val_loss,
val_<term>..., learning_rate, epoch_time (for the Gaussian VAE: the reference tutorial's columns).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator


class TrainingDivergedError(RuntimeError):
    """The loss or the weights became NaN/inf; nothing was saved from the broken state."""


def metrics_columns(term_names: list[str]) -> list[str]:
    terms = ["loss", *term_names]
    return ["epoch", *[f"train_{name}" for name in terms], *[f"val_{name}" for name in terms], "learning_rate",
            "epoch_time"]  # fmt: skip


class RunningLosses:
    """Per-epoch sums of the loss and its terms (weighted by batch size), kept on the device."""

    def __init__(self, accelerator: Accelerator, carried: list[float]):
        self.accelerator = accelerator
        self.names: list[str] | None = None
        self.pending: list[tuple[int, int, tuple[torch.Tensor, ...]]] = []
        self.carried = carried
        self.sums: torch.Tensor | None = None

    def add(self, step: int, batch_size: int, outputs) -> None:
        if self.names is None:
            self.names = ["loss", *outputs.loss_terms]
        if self.sums is None:
            # The main process starts from the sums a checkpoint carried over (summed over processes), in the order
            # an uninterrupted run adds them, so that a resumed run's metrics are bit-identical.
            self.sums = torch.zeros(len(self.names) + 1, dtype=torch.float64, device=self.accelerator.device)
            if self.carried and self.accelerator.is_main_process:
                self.sums += torch.tensor(self.carried, dtype=torch.float64, device=self.accelerator.device)
        # Kept as they are: stacking is done once per flush, not once per step.
        terms = (value.detach() for value in outputs.loss_terms.values())
        self.pending.append((step, batch_size, (outputs.loss.detach(), *terms)))

    def flush(self, epoch: int, last_checkpoint: Path | None) -> dict[str, float] | None:
        """Fold pending losses into the epoch sums; return the last step's values by name, or None."""
        if not self.pending:
            return None
        values = torch.stack([torch.stack(entry[2]) for entry in self.pending]).double()
        sizes = torch.tensor([entry[1] for entry in self.pending], dtype=torch.float64, device=values.device)
        finite = torch.isfinite(values).all(dim=1)
        diverged = ~finite.all()
        if self.accelerator.num_processes > 1:
            diverged = self.accelerator.gather(diverged.view(1)).any()
        if diverged:
            bad = (~finite).nonzero()
            where = (
                f"at global step {self.pending[int(bad[0])][0]}"
                if len(bad)
                else f"on another process, by global step {self.pending[-1][0]}"
            )
            checkpoint = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint exists"
            raise TrainingDivergedError(
                f"The training loss became NaN/inf {where} (epoch {epoch + 1}). Training stopped without saving the "
                f"broken state; {checkpoint}. Lower --learning_rate, clip gradients with --max_grad_norm, or anneal "
                "the KL term with --kl_warmup_steps."
            )
        self.sums += torch.cat(((values * sizes[:, None]).sum(0), sizes.sum().view(1)))
        self.pending.clear()
        return dict(zip(self.names, values[-1].tolist(), strict=True))

    def epoch_totals(self) -> list[float]:
        """(loss, each term..., images) summed over every process, with the sums carried over from a checkpoint
        (the main process's); a collective call."""
        if self.sums is None:  # no step yet this epoch
            carried = self.carried if self.accelerator.is_main_process else [0.0] * len(self.carried)
            return self.accelerator.reduce(torch.tensor(carried, dtype=torch.float64), reduction="sum").tolist()
        return self.accelerator.reduce(self.sums.clone(), reduction="sum").tolist()

    def epoch_means(self) -> dict[str, float]:
        *totals, images = self.epoch_totals()
        return {name: total / max(images, 1.0) for name, total in zip(self.names or [], totals, strict=True)}

    def reset(self) -> None:
        self.sums = None
        self.carried = []


def write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    """metrics.csv, one row per epoch, rewritten whole (atomically) each epoch."""
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(staging, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(staging, path)


def parameters_checksum(model: torch.nn.Module) -> torch.Tensor:
    """A float64 fingerprint of the parameters, compared across processes at the end of a run."""
    flat = torch.cat([parameter.detach().double().flatten() for parameter in model.parameters()])
    positions = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
    return torch.stack((flat.sum(), (flat * positions).sum(), flat.abs().sum()))


def check_finite_weights(model: torch.nn.Module, global_step: int, epoch: int) -> None:
    if not all(torch.isfinite(parameter).all() for parameter in model.parameters()):
        raise TrainingDivergedError(
            f"The weights became NaN/inf by global step {global_step} (epoch {epoch + 1}). Training stopped without "
            "saving them. Lower --learning_rate or clip gradients with --max_grad_norm."
        )


__all__ = [
    "RunningLosses",
    "TrainingDivergedError",
    "check_finite_weights",
    "metrics_columns",
    "parameters_checksum",
    "write_json",
    "write_metrics",
]
