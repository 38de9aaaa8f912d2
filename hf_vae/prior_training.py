"""`hf-vae train-prior`: train the causal language model over a VQ-VAE's codes (`code_prior`) with an Accelerate loop.

The loop keeps the conventions of `training.py` on a smaller scale: one `Accelerator`, the shared optimiser and
schedules (`optimization`), seeded loaders, epochs of train / validate with the best model kept, metrics written
each epoch (`prior_metrics.csv`), the results at the end (`prior_results.json`, with the test split's code NLL). It
does not checkpoint mid-run: a prior trains in minutes.

Data: the train split is encoded to code grids once per epoch, from a fresh Bernoulli draw of its pixels for models
trained on dynamically binarised data (as the VQ-VAE itself saw them), and once for validation (a seeded fraction of
train held out, as `hf-vae train` does) and test, from the evaluation draw. Labels, when the data has them, become
the class token.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .code_prior import PRIOR_FOLDER, build_prior, token_sequences
from .codes import encode_images, require_codes
from .data import ImageTensors, binarize_statically, load_splits
from .families import load_pretrained
from .optimization import create_optimizer, create_scheduler
from .training_metrics import write_json, write_metrics

logger = logging.getLogger(__name__)

EVALUATION_SEED = 0


@dataclass
class PriorRun:
    """What `train_prior` needs besides the model: the options of `hf-vae train-prior` (see `cli/train_prior.py`)."""

    model: str
    dataset_name: str
    output_dir: str | None = None
    dataset_config_name: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    use_labels: bool = True
    validation_split: float = 0.05
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    num_train_epochs: int = 10
    per_device_train_batch_size: int = 64
    per_device_eval_batch_size: int = 500
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float | None = 1.0
    num_layers: int = 4
    hidden_size: int = 128
    num_heads: int = 4
    dropout: float = 0.1
    seed: int = 42
    use_cpu: bool = False
    disable_tqdm: bool = False
    cache_dir: str | None = None


def _tokens(prior, codes: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    return token_sequences(prior, codes, labels if prior.config.vq_num_classes else None)


def _first(data: ImageTensors, count: int | None) -> ImageTensors:
    return data if count is None else data.select(torch.arange(min(count, len(data))))


@torch.no_grad()
def code_nll(prior, loader, accelerator: Accelerator, grid_cells: int) -> float:
    """Mean -log p(codes | class) in nats per image (the class token's own term left out) over a token loader."""
    prior.eval()
    totals = []
    for (tokens,) in loader:
        logits = prior(input_ids=tokens).logits[:, :-1].float()
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none")[:, -grid_cells:].sum(1)
        totals.append(accelerator.gather_for_metrics(nll.double()))
    return float(torch.cat(totals).mean())


def train_prior(run: PriorRun) -> dict[str, Any]:
    """Train a prior over the codes of `run.model` and save the VQ-VAE with it in `prior/` of `run.output_dir`
    (default: the model's own folder). Returns the results written to `prior_results.json`."""
    started = time.perf_counter()
    accelerator = Accelerator(cpu=run.use_cpu)
    is_main = accelerator.is_main_process
    set_seed(run.seed)
    vqvae = load_pretrained(run.model).to(accelerator.device).eval()
    require_codes(vqvae)
    config = vqvae.config
    output_dir = Path(run.output_dir or run.model)
    if run.output_dir is None and not Path(run.model).is_dir():
        raise ValueError(f"{run.model!r} is not a local folder to write prior/ into: pass --output_dir DIR.")

    with accelerator.main_process_first():
        splits = load_splits(
            run.dataset_name,
            run.dataset_config_name,
            image_column=run.image_column,
            label_column=run.label_column,
            validation_split=run.validation_split,
            seed=run.seed,
            image_size=config.image_size,
            num_channels=config.num_channels,
            cache_dir=run.cache_dir,
        )
    train_data = _first(splits.train, run.max_train_samples)
    validation_data = _first(splits.validation, run.max_eval_samples)
    test_data = None if splits.test is None else _first(splits.test, run.max_eval_samples)
    labelled = run.use_labels and train_data.labels is not None
    num_classes = int(train_data.labels.max()) + 1 if labelled else None
    prior = build_prior(
        config.codebook_size, config.grid_size, num_classes, run.num_layers, run.hidden_size, run.num_heads, run.dropout
    )
    grid_cells = config.grid_size**2

    def token_loader(data: ImageTensors, seed: int, shuffle: bool, batch_size: int) -> DataLoader:
        codes = encode_images(vqvae, data, seed)
        dataset = TensorDataset(_tokens(prior, codes, data.labels))
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)

    dynamic = config.binarize == "dynamic"
    static_train = train_data
    if config.binarize == "static":  # the fixed draw the VQ-VAE trained on, encoded as it is
        static_train = ImageTensors(binarize_statically(train_data.images, run.seed), train_data.labels)
    train_loader = token_loader(static_train, run.seed, True, run.per_device_train_batch_size)
    eval_loader = token_loader(validation_data, EVALUATION_SEED, False, run.per_device_eval_batch_size)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.num_processes)
    max_steps = run.num_train_epochs * steps_per_epoch
    optimizer = create_optimizer(prior, run.learning_rate, run.weight_decay, device=accelerator.device)
    scheduler = create_scheduler(optimizer, run.lr_scheduler_type, run.warmup_steps, max_steps)
    prior, optimizer, eval_loader = accelerator.prepare(prior, optimizer, eval_loader)
    unwrapped = accelerator.unwrap_model(prior)
    if is_main:
        logger.info(
            f"Training a {type(unwrapped).__name__} prior ({unwrapped.num_parameters():,} parameters, "
            f"{'class tokens for ' + str(num_classes) + ' classes' if labelled else 'no class tokens'}) on the codes "
            f"of {len(train_data)} images, validating on {len(validation_data)}: {run.num_train_epochs} epoch(s), "
            f"{max_steps} steps."
        )

    history: list[dict[str, float]] = []
    best_loss, best_state, best_epoch = math.inf, None, 0
    progress = tqdm(total=max_steps, desc="Training the prior", unit="step", disable=not is_main or run.disable_tqdm)
    for epoch in range(run.num_train_epochs):
        epoch_started = time.perf_counter()
        if dynamic and epoch > 0:  # a fresh binarisation of the training images, encoded again
            draw = ImageTensors(binarize_statically(train_data.images, run.seed + epoch), train_data.labels)
            train_loader = token_loader(draw, run.seed + epoch, True, run.per_device_train_batch_size)
        loader = accelerator.prepare_data_loader(train_loader)
        prior.train()
        total, count = torch.zeros((), dtype=torch.float64, device=accelerator.device), 0
        for (tokens,) in loader:
            logits = prior(input_ids=tokens).logits[:, :-1]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            accelerator.backward(loss)
            if run.max_grad_norm is not None:
                accelerator.clip_grad_norm_(prior.parameters(), run.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total += loss.detach().double() * tokens.shape[0] * (tokens.shape[1] - 1)
            count += tokens.shape[0]
            progress.update(1)
        train_nll = float(accelerator.reduce(total, "sum")) / max(count * accelerator.num_processes, 1)
        val_nll = code_nll(prior, eval_loader, accelerator, grid_cells)
        row = {
            "epoch": epoch + 1,
            "train_token_nll": round(train_nll, 4),
            "val_code_nll": round(val_nll, 4),
            "learning_rate": scheduler.get_last_lr()[0],
            "epoch_time": round(time.perf_counter() - epoch_started, 3),
        }
        history.append(row)
        if val_nll < best_loss:
            best_loss, best_epoch = val_nll, epoch + 1
            best_state = copy.deepcopy(unwrapped.state_dict())
        if is_main:
            output_dir.mkdir(parents=True, exist_ok=True)
            write_metrics(output_dir / "prior_metrics.csv", history)
            tqdm.write(
                f"Prior epoch {epoch + 1:3d} | train NLL {train_nll:.3f} nats/image (all tokens) | val code NLL "
                f"{val_nll:.3f} nats/image | {row['epoch_time']:.1f}s"
            )
    progress.close()
    unwrapped.load_state_dict(best_state)
    unwrapped.eval()
    results: dict[str, Any] = {
        "prior": type(unwrapped).__name__,
        "num_parameters": unwrapped.num_parameters(),
        "class_tokens": num_classes,
        "train_images": len(train_data),
        "validation_images": len(validation_data),
        "best_epoch": best_epoch,
        "best_val_code_nll": best_loss,
        "epochs": run.num_train_epochs,
        "num_processes": accelerator.num_processes,
    }
    if test_data is not None:
        test_loader = accelerator.prepare(
            token_loader(test_data, EVALUATION_SEED, False, run.per_device_eval_batch_size)
        )
        results["test_code_nll"] = code_nll(prior, test_loader, accelerator, grid_cells)
        results["test_images"] = len(test_data)
    results["total_wall_time"] = round(time.perf_counter() - started, 1)
    results["arguments"] = asdict(run)
    if is_main:
        vqvae.set_code_prior(unwrapped.to("cpu"))
        if output_dir.resolve() == Path(run.model).resolve():
            unwrapped.save_pretrained(output_dir / PRIOR_FOLDER)
        else:
            vqvae.save_pretrained(output_dir)
        write_json(output_dir / "prior_results.json", results)
        logger.info(f"Saved the prior to {output_dir / PRIOR_FOLDER} (best epoch {best_epoch}).")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return results


__all__ = ["PriorRun", "code_nll", "train_prior"]
