"""`hf-vae train`: train a model of any hf-vae family with an Accelerate loop, on one CPU, one GPU or many processes.

Read it top to bottom, as accelerate's `examples/complete_nlp_example.py`: set-up -> data and model -> optimiser
and schedule -> `accelerator.prepare` -> resume -> epochs of (train steps, validation, metrics, checkpoint) ->
finish (test figures, pictures, card, push). Run it as `hf-vae train ...`, `python scripts/train.py ...` or under
`accelerate launch scripts/train.py ...`. The loop knows models only through the family contract
(`modeling_utils`): `forward` gives `loss` and `loss_terms`, which become the metrics.csv columns.

It is built for speed on small models, where per-step overheads rival the matrix products: batches are sliced from
uint8 tensors decoded once (`hf_vae.data`; with --streaming, decoded from a `datasets` stream as they come:
`hf_vae.streaming`), Adam is fused, and losses stay on the device until they are read every
`--logging_steps` steps (which is also when they are checked for NaN).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .checkpointing import (
    CHECKPOINTS_DIR,
    LoopState,
    check_checkpoint_folder,
    check_stream_checkpoint,
    load_checkpoint,
    read_loop_state,
    remove_stale_staging,
    resolve_checkpoint,
    restore_stream_state,
    save_checkpoint,
    save_model_atomically,
)
from .data import (
    DataError,
    ImageTensorDataset,
    ImageTensors,
    binarization_seed,
    binarize_statically,
    collate_batch,
    evaluation_images,
    tensor_batches,
    to_pixel_values,
)
from .denormals import denormals_flushed
from .evaluation import per_image_figures
from .families import load_pretrained
from .interrupts import interrupts_at_step_boundaries
from .optimization import METRIC_SCHEDULERS, create_optimizer, create_scheduler, kl_weight_at
from .training_args import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    check_streaming_arguments,
    resolve_defaults,
    save_arguments,
)
from .training_metrics import (
    RunningLosses,
    TrainingDivergedError,
    check_finite_weights,
    metrics_columns,
    parameters_checksum,
    write_json,
    write_metrics,
)
from .training_setup import (
    build_model,
    check_data,
    check_model_options,
    check_output_dir,
    check_world_size,
    compiled_for_training,
    in_training_layout,
    load_data,
    tracker_config,
    with_image_shape_of,
)

logger = logging.getLogger(__name__)

# The test split is binarised (for binarised models) and z drawn with this seed, as `hf-vae evaluate` does.
EVALUATION_SEED = 0
# Without a gradient scaler, accelerate's optimizer wrapper only adds per-step overhead (a package lookup and a
# signature inspection, ~80 us here) on top of the torch optimizer, whose step it calls when gradients are synced.
PLAIN_OPTIMIZER_BACKENDS = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict[str, Any]:
    """Train, evaluate and write everything to `args.output_dir`; return the train results."""
    with denormals_flushed(args.flush_denormal):
        return _train(model_args, data_args, args)


def _train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict[str, Any]:
    run_started = time.perf_counter()
    args = resolve_defaults(model_args, args)
    check_streaming_arguments(model_args, data_args, args)
    streaming = data_args.streaming
    output_dir = Path(args.output_dir)

    # 1. Set-up: one Accelerator for the launch (processes, device, precision, trackers); refuse a launch whose
    # processes do not see each other, or an output folder that holds another run.
    trackers = [name for name in args.report_to_list if name != "none"]
    accelerator = Accelerator(
        cpu=args.use_cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    is_main = accelerator.is_main_process
    if accelerator.num_processes > 1:
        print(f"hf-vae rank {accelerator.process_index} of {accelerator.num_processes}\n", end="", file=sys.stderr)
    check_world_size(accelerator)
    check_output_dir(args, output_dir)
    resume_from = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    if resume_from is not None:  # a damaged checkpoint is refused before this run writes anything
        check_checkpoint_folder(resume_from)
        read_loop_state(resume_from)
        check_stream_checkpoint(resume_from, streaming)
    if args.resume_from_checkpoint == "latest" and resume_from is None:
        if is_main:
            logger.warning(f"No complete checkpoint in {output_dir / CHECKPOINTS_DIR}: starting from scratch.")
    accelerator.wait_for_everyone()
    _quiet_libraries(is_main)
    set_seed(args.seed)

    # 2. Data, then the model: a new one takes the data's image shape unless given. Binarised models train on a
    # fresh Bernoulli draw per batch (dynamic) or one fixed draw (static), and validate on one fixed draw.
    check_model_options(model_args)
    splits = load_data(data_args, model_args, args.seed, accelerator)
    model_args = with_image_shape_of(model_args, splits.train)
    model = in_training_layout(build_model(model_args), accelerator.device)
    config = model.config
    check_data(splits, config)
    train_data = splits.train
    if streaming:
        train_data.num_classes = config.num_classes  # each streamed batch's labels are checked against it
    if streaming and config.binarize == "static":
        raise DataError(
            "The model's config has binarize='static', one fixed binarisation of the whole train split, which a "
            "stream never holds: pass --binarize dynamic (a fresh draw per batch) with --streaming."
        )
    if config.binarize == "static":
        train_data = ImageTensors(binarize_statically(train_data.images, args.seed), train_data.labels)
    validation = evaluation_images(splits.validation, config.binarize, args.seed)
    dynamic = config.binarize == "dynamic"
    conditional = config.num_classes is not None
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        if args.overwrite_output_dir and args.resume_from_checkpoint is None:
            _remove_previous_run(output_dir)
        remove_stale_staging(output_dir)
        save_arguments((model_args, data_args, args), output_dir / "training_args.json")

    # 3. Loaders with their own generators (iterating them must not consume the global RNG that dropout and the
    # posterior draws use, or a resumed run would drift from an uninterrupted one), the optimiser and the schedule.
    train_loader = None
    if not streaming:
        train_loader = DataLoader(
            ImageTensorDataset(train_data),
            batch_size=args.per_device_train_batch_size,
            shuffle=True,
            collate_fn=collate_batch,
            generator=torch.Generator().manual_seed(args.seed),
        )
    eval_loader = DataLoader(
        ImageTensorDataset(validation),
        batch_size=args.per_device_eval_batch_size,
        collate_fn=collate_batch,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = create_optimizer(
        model,
        args.learning_rate,
        args.weight_decay,
        (args.adam_beta1, args.adam_beta2),
        args.adam_epsilon,
        accelerator.device,
    )

    # 4. Prepare for the launch (DDP wrapping, device placement, sharded loaders; a stream is split by
    # `split_dataset_by_node` instead, and its batches are put on the device as they are decoded).
    if streaming:
        model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    else:
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    unwrapped = accelerator.unwrap_model(model)
    # The training step may run compiled; validation, checkpoints and the saved model use the module itself, so
    # saved weight names carry no `_orig_mod.` prefix.
    step_model = compiled_for_training(model, args)
    if streaming:  # no epoch length: an "epoch" is --eval_steps steps (Keras' steps_per_epoch), the run --max_steps
        steps_per_epoch = min(args.eval_steps or args.max_steps, args.max_steps)
        batches_per_epoch = steps_per_epoch * args.gradient_accumulation_steps
    else:
        batches_per_epoch = len(train_loader)
        steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    max_steps = args.max_steps if args.max_steps > 0 else args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_steps / steps_per_epoch)
    metric_scheduler = args.lr_scheduler_type in METRIC_SCHEDULERS
    plain = accelerator.scaler is None and accelerator.distributed_type in PLAIN_OPTIMIZER_BACKENDS
    step_optimizer = optimizer.optimizer if plain else optimizer
    scheduler = create_scheduler(optimizer.optimizer, args.lr_scheduler_type, args.warmup_steps, max_steps)
    accelerator.register_for_checkpointing(scheduler)

    # 5. Resume: weights, optimiser, schedule and RNG states from the checkpoint, and where the loop was.
    state = LoopState(kl_weight=kl_weight_at(0, args.kl_warmup_steps))
    if resume_from is not None:
        state = load_checkpoint(accelerator, resume_from)
        if streaming:
            restore_stream_state(resume_from, accelerator.process_index, train_data)
        if is_main:
            logger.info(f"Resumed from {resume_from}: epoch {state.epoch + 1}, step {state.global_step}.")
    last_checkpoint = resume_from
    if state.global_step >= max_steps and is_main:
        logger.info(
            f"{resume_from} is the end of the run ({state.global_step} of {max_steps} steps): nothing left to train; "
            "writing the results again."
        )
    if trackers:
        accelerator.init_trackers("hf-vae", config=tracker_config(asdict(args), config))
    binarize_generator = torch.Generator(device=accelerator.device) if dynamic else None
    accumulate = args.gradient_accumulation_steps > 1
    losses = RunningLosses(accelerator, state.epoch_sums)
    progress = tqdm(
        total=max_steps,
        initial=state.global_step,
        desc="Training",
        unit="step",
        disable=not is_main or args.disable_tqdm or not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    stream = train_data.batches(args.per_device_train_batch_size, accelerator.device) if streaming else None
    if is_main and streaming:
        buffer = f"shuffled in a buffer of {train_data.buffer_size}" if train_data.buffer_size else "in stream order"
        logger.info(
            f"Training on a stream of {data_args.dataset_name} ({buffer}, batches of "
            f"{args.per_device_train_batch_size} per process, {accelerator.num_processes} process(es), "
            f"{accelerator.device}) for {max_steps} optimiser steps, validating on {len(validation)} images every "
            f"{steps_per_epoch} steps."
        )
    elif is_main:
        logger.info(
            f"Training on {len(train_data)} images ({batches_per_epoch} batches of "
            f"{args.per_device_train_batch_size} per process, {accelerator.num_processes} process(es), "
            f"{accelerator.device}), validating on {len(validation)}; {num_epochs} epoch(s), {max_steps} optimiser "
            "steps."
        )

    def validate() -> tuple[dict[str, float], int]:
        """Mean validation figures over every validation image once; saves the model when it is the best so far."""
        _sync_buffers(unwrapped, accelerator)
        figures = per_image_figures(unwrapped, eval_loader, args.seed, gather=accelerator.gather_for_metrics)
        metrics = {name: float(values.mean()) for name, values in figures.items()}
        count = len(figures["loss"])
        if not math.isfinite(metrics["loss"]):
            raise TrainingDivergedError(
                f"The validation loss is {metrics['loss']} at global step {state.global_step} (epoch "
                f"{state.epoch + 1}); nothing was saved. Lower --learning_rate or set --max_grad_norm."
            )
        if state.best_val_loss is None or metrics["loss"] < state.best_val_loss:
            state.best_val_loss, state.best_epoch, state.best_step = metrics["loss"], state.epoch + 1, state.global_step
            check_finite_weights(unwrapped, state.global_step, state.epoch)
            if is_main:
                save_model_atomically(unwrapped, output_dir)
        accelerator.log({f"eval/{name}": value for name, value in metrics.items()}, step=state.global_step)
        return metrics, count

    def checkpoint(epoch_started: float) -> Path:
        losses.flush(state.epoch, last_checkpoint)
        check_finite_weights(unwrapped, state.global_step, state.epoch)
        state.epoch_sums = losses.epoch_totals()
        state.epoch_time = time.perf_counter() - epoch_started if state.step_in_epoch else 0.0
        stream_state = train_data.state_dict() if streaming else None
        return save_checkpoint(accelerator, state, output_dir, args.save_total_limit, stream_state)

    # 6. Epochs of training steps. Validation, checkpoints and pictures are timed apart, so that the reported speed
    # is that of the training steps alone.
    train_started = time.perf_counter()
    side_seconds = 0.0
    first_step = state.global_step
    images_trained = 0
    validation_images = 0
    first_step_seconds = None
    stop_reason = "max_steps" if args.max_steps > 0 else "num_train_epochs"
    checkpoint_every = args.checkpoint_every_steps
    with interrupts_at_step_boundaries() as interrupt_requested:
        for epoch in range(state.epoch, num_epochs if state.global_step < max_steps else 0):
            state.epoch = epoch
            epoch_started = time.perf_counter() - state.epoch_time
            best_before = state.best_val_loss
            model.train()
            if streaming:  # the stream goes on where it is (restored from the checkpoint when resumed)
                batches = itertools.islice(stream, batches_per_epoch - state.step_in_epoch)
            else:
                train_loader.set_epoch(epoch)
                batches = train_loader
                if state.step_in_epoch:  # resumed mid-epoch: skip the batches already trained on
                    batches = accelerator.skip_first_batches(train_loader, state.step_in_epoch)
            checkpoint_at_epoch_end = checkpoint_every is None and args.checkpointing_steps == "epoch"
            learning_rate = step_optimizer.param_groups[0]["lr"]
            for batch in batches:
                if interrupt_requested():  # Ctrl-C: stop between steps (hf_vae/interrupts.py says why)
                    raise KeyboardInterrupt
                # A batch: uint8 images to pixels in [0, 1], binarised afresh (dynamic) from a seed of its position.
                images = batch["pixel_values"]
                if dynamic:
                    binarize_generator.manual_seed(
                        binarization_seed(args.seed, accelerator.process_index, epoch, state.step_in_epoch)
                    )
                pixel_values = to_pixel_values(images, "dynamic" if dynamic else "none", binarize_generator)
                labels = batch["labels"] if conditional else None
                # Forward, backward, and (once the gradients of `gradient_accumulation_steps` batches are summed) the
                # clipped optimiser step and the per-step schedule.
                with accelerator.accumulate(model) if accumulate else contextlib.nullcontext():
                    outputs = step_model(pixel_values, labels=labels, kl_weight=state.kl_weight)
                    accelerator.backward(outputs.loss)
                    synced = accelerator.sync_gradients
                    if synced and args.max_grad_norm is not None:
                        accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                    if synced:
                        learning_rate = step_optimizer.param_groups[0]["lr"]  # the rate this step used, for the log
                        step_optimizer.step()
                        step_optimizer.zero_grad(set_to_none=True)
                        if not metric_scheduler and not getattr(step_optimizer, "step_was_skipped", False):
                            scheduler.step()  # not after a step the fp16 gradient scaler skipped
                losses.add(state.global_step + 1, images.shape[0], outputs)
                state.step_in_epoch += 1
                images_trained += images.shape[0]
                if not synced:
                    continue
                state.global_step += 1
                if first_step_seconds is None:  # with --torch_compile, mostly compiling (or loading it from the cache)
                    first_step_seconds = time.perf_counter() - train_started
                state.kl_weight = kl_weight_at(state.global_step, args.kl_warmup_steps)
                progress.update(1)
                last_batch = state.step_in_epoch == batches_per_epoch
                # Every few steps: read the losses back (and check them), log them; evaluate and checkpoint when asked.
                if state.global_step % args.logging_steps == 0:
                    latest = losses.flush(epoch, last_checkpoint)
                    if latest is not None:
                        progress.set_postfix(step_loss=f"{latest['loss']:.2f}", refresh=False)  # epoch lines: means
                        latest.update(learning_rate=optimizer.param_groups[0]["lr"], kl_weight=state.kl_weight)
                        logged = {f"train/{name}": value for name, value in latest.items()}
                        accelerator.log(logged, step=state.global_step)
                if args.eval_steps and state.global_step % args.eval_steps == 0 and not last_batch:
                    started = time.perf_counter()
                    losses.flush(epoch, last_checkpoint)
                    validate()
                    model.train()
                    side_seconds += time.perf_counter() - started
                if checkpoint_every and state.global_step % checkpoint_every == 0:
                    if last_batch:
                        checkpoint_at_epoch_end = True  # saved after the epoch's validation, as a clean epoch boundary
                    else:
                        started = time.perf_counter()
                        last_checkpoint = checkpoint(epoch_started)
                        side_seconds += time.perf_counter() - started
                if state.global_step >= max_steps:
                    break

            # End of epoch: the epoch's training means over all processes, validation (saving the best model), the
            # per-epoch schedule, the metrics row, pictures when asked, the checkpoint, early stopping.
            started = time.perf_counter()
            losses.flush(epoch, last_checkpoint)
            train_metrics = losses.epoch_means()
            val_metrics, validation_images = validate()
            if metric_scheduler:
                scheduler.step(val_metrics["loss"])
            improved = state.best_val_loss != best_before
            state.epochs_without_improvement = 0 if improved else state.epochs_without_improvement + 1
            epoch_time = time.perf_counter() - epoch_started
            row = {"epoch": epoch + 1}
            row.update({f"train_{name}": value for name, value in train_metrics.items()})
            row.update({f"val_{name}": val_metrics[name] for name in train_metrics})
            row.update(learning_rate=learning_rate, epoch_time=round(epoch_time, 3))
            state.history.append(row)
            if is_main:
                write_metrics(output_dir / "metrics.csv", state.history)
                terms = " | ".join(f"{name}: {value:.4f}" for name, value in list(train_metrics.items())[1:])
                label = f"Step {state.global_step:6d}" if streaming else f"Epoch {epoch + 1:3d}"
                tqdm.write(
                    f"{label} | Total Loss: {train_metrics['loss']:.4f} | {terms} | "
                    f"Val Loss: {val_metrics['loss']:.4f} | LR: {learning_rate:.2e} | Time: {epoch_time:.2f}s"
                )
            accelerator.log(
                {"epoch": epoch + 1, "train/epoch_loss": train_metrics["loss"], "epoch_time": epoch_time},
                step=state.global_step,
            )
            plot_now = args.plot_every_n_epochs and (epoch + 1) % args.plot_every_n_epochs == 0
            if is_main and plot_now and not args.skip_figures:
                caption = f"{output_dir.name}, epoch {epoch + 1} (step {state.global_step})"
                _save_pictures(unwrapped, splits, output_dir / "figures" / f"epoch-{epoch + 1}", output_dir, caption)
            losses.reset()
            state.epoch, state.step_in_epoch, state.epoch_time, state.epoch_sums = epoch + 1, 0, 0.0, []
            early_stop = (
                args.early_stopping_patience is not None
                and state.epochs_without_improvement >= args.early_stopping_patience
            )
            if checkpoint_at_epoch_end or (early_stop and args.checkpointing_steps is not None):
                last_checkpoint = checkpoint(epoch_started)
            side_seconds += time.perf_counter() - started
            if early_stop:
                stop_reason = "early_stopping"
                if is_main:
                    logger.info(
                        f"Early stopping: no better validation loss for {state.epochs_without_improvement} epoch(s)."
                    )
                break
            if state.global_step >= max_steps:
                break
    progress.close()
    train_runtime = time.perf_counter() - train_started
    training_seconds = max(train_runtime - side_seconds, 1e-9)

    # 7. Finish: every process must end with the same weights (a float64 checksum compared across processes); the
    # main process evaluates the best model on the test split, writes results, pictures and card, and pushes.
    _sync_buffers(unwrapped, accelerator)
    checksums = accelerator.gather(parameters_checksum(unwrapped).view(1, -1))
    weights_identical = bool((checksums == checksums[0]).all())
    images_total = int(accelerator.reduce(torch.tensor(images_trained, device=accelerator.device), "sum"))
    results: dict[str, Any] = {}
    if is_main:
        results = {
            "stop_reason": stop_reason,
            "num_processes": accelerator.num_processes,
            "device": str(accelerator.device),
            "mixed_precision": accelerator.mixed_precision,
            "resumed_from_checkpoint": str(resume_from) if resume_from else None,
            "train_images": None if streaming else len(train_data),
            "train_samples_seen": images_total,
            "train_runtime": round(train_runtime, 3),
            "training_steps_seconds": round(training_seconds, 3),
            "train_samples_per_second": round(images_total / training_seconds, 1),
            "train_steps_per_second": round((state.global_step - first_step) / training_seconds, 2),
            "torch_compile": args.torch_compile,
            "first_step_seconds": None if first_step_seconds is None else round(first_step_seconds, 3),
            "validation_images": validation_images,
            "validation_images_expected": len(validation),
            "weights_identical_across_processes": weights_identical,
            "parameters_checksum": checksums[0].tolist(),
        }
        if streaming:
            results.update(streaming=True, stream_shuffle_buffer_size=train_data.buffer_size)
            results["stream_passes_started"] = train_data.epoch + 1
        results = _finish(args, output_dir, splits, accelerator.device, state, results, run_started)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if not weights_identical:
        raise TrainingDivergedError(
            f"The processes ended with different weights (checksums {checksums.tolist()}): distributed training was "
            "not synchronised."
        )
    return results


def _finish(
    args: TrainingArguments,
    output_dir: Path,
    splits,
    device: torch.device,
    state: LoopState,
    results: dict[str, Any],
    run_started: float,
) -> dict[str, Any]:
    """Main process only: evaluate the best model on the test split, write results, pictures and the card, push."""
    best = load_pretrained(output_dir).to(device)
    if splits.test is not None:
        test = evaluation_images(splits.test, best.config.binarize, EVALUATION_SEED)
        figures = per_image_figures(best, tensor_batches(test, args.per_device_eval_batch_size), EVALUATION_SEED)
        means = {name: float(values.mean()) for name, values in figures.items()}
        eval_results = {f"test_{name}": value for name, value in means.items()}
        eval_results.update(
            {
                "test_images": len(figures["loss"]),
                "binarize": best.config.binarize,
                "binarize_seed": None if best.config.binarize == "none" else EVALUATION_SEED,
                "posterior": f"z sampled (generator seed {EVALUATION_SEED}), eval mode",
                "best_epoch": state.best_epoch,
            }
        )
        write_json(output_dir / "eval_results.json", eval_results)
        terms = " | ".join(f"{name} {value:.4f}" for name, value in list(means.items())[1:])
        tqdm.write(
            f"Test ({len(figures['loss'])} images, best model of epoch {state.best_epoch}): loss {means['loss']:.4f} | "
            f"{terms} nats per image"
        )
    if not args.skip_figures:
        caption = f"{output_dir.name}, best model: epoch {state.best_epoch} (step {state.best_step})"
        _save_pictures(best, splits, output_dir, output_dir, caption)
    last = state.history[-1] if state.history else {}
    results.update(
        {
            "epochs_completed": state.epoch,
            "global_step": state.global_step,
            "best_val_loss": state.best_val_loss,
            "best_epoch": state.best_epoch,
            "best_step": state.best_step,
            "final_train_loss": last.get("train_loss"),
            "final_val_loss": last.get("val_loss"),
            "total_wall_time": round(time.perf_counter() - run_started, 3),
        }
    )
    write_json(output_dir / "train_results.json", results)
    from .model_card import write_model_card

    write_model_card(output_dir)
    if args.push_to_hub:
        from .hub import push_to_hub

        push_to_hub(output_dir, args.hub_model_id, private=bool(args.hub_private_repo), revision=args.hub_revision)
        logger.info(f"Pushed {output_dir} to the Hub as {args.hub_model_id}.")
    pictures = "" if args.skip_figures else ", pictures *.png"
    tqdm.write(
        f"Saved the best model (epoch {state.best_epoch}) to {output_dir}: model.safetensors, config.json, README.md, "
        f"metrics.csv, train_results.json{', eval_results.json' if splits.test is not None else ''}{pictures}. "
        f"Load it with {type(best).__name__}.from_pretrained({str(output_dir)!r})."
    )
    return results


def _remove_previous_run(output_dir: Path) -> None:
    """A run owns its outputs: overwriting a folder removes the previous run's checkpoints, pictures and results, so
    none of them can be mistaken for this run's (the model files are replaced when the first epoch is saved)."""
    shutil.rmtree(output_dir / CHECKPOINTS_DIR, ignore_errors=True)
    shutil.rmtree(output_dir / "figures", ignore_errors=True)
    stale = [*output_dir.glob("*.png"), *(output_dir / name for name in RUN_FILES)]
    for path in stale:
        path.unlink(missing_ok=True)


# Files a training run writes beside the model; an overwritten folder loses the previous run's.
RUN_FILES = ("metrics.csv", "train_results.json", "eval_results.json", "evaluation.json", "README.md")


def _save_pictures(model: torch.nn.Module, splits, pictures_dir: Path, output_dir: Path, caption: str) -> None:
    """The pictures of the test split (else validation), with the run's training curves, drawn with the evaluation
    seed: binarised test images in the pictures are the ones the test figures were computed on."""
    from .visualization import save_figures

    data = splits.test if splits.test is not None else splits.validation
    save_figures(model, data, pictures_dir, output_dir / "metrics.csv", EVALUATION_SEED, caption=caption)


def _sync_buffers(model: torch.nn.Module, accelerator: Accelerator) -> None:
    """Give every process the main process's BatchNorm statistics (DDP broadcasts them only at each forward), so
    that all evaluate, and end with, the model the main process saves."""
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            broadcast(buffer, from_process=0)


def _quiet_libraries(is_main: bool) -> None:
    """accelerate logs every checkpoint file at INFO and transformers draws a bar per save and load: keep the
    console to the epoch lines (and other processes to errors)."""
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    level = logging.WARNING if is_main else logging.ERROR
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


__all__ = ["EVALUATION_SEED", "metrics_columns", "train"]
