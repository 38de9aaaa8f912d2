"""Train the feature network of hf-vae's sample metrics on MNIST's training split and save it, with its test accuracy,
as `pretrained/mnist-classifier/`.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_classifier.py --dataset_name /work/shared/mnist

Adam with a one-cycle learning rate over a fixed number of epochs, batch 128, seeded: the same weights on every run
with the same torch on the same CPU. The split is decoded once to a uint8 tensor and sliced into batches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from hf_vae.data import load_splits, to_pixel_values
from hf_vae.feature_network import FeatureNetwork, FeatureNetworkConfig

CARD = """---
library_name: hf-vae
license: apache-2.0
pipeline_tag: image-classification
tags:
- hf-vae
- mnist
- feature-network
datasets:
- ylecun/mnist
metrics:
- accuracy
---

# mnist-classifier

The feature network of `hf-vae evaluate --sample_metrics`: a small convolutional classifier (two 3x3 convolution
stages, a {feature_dim}-unit hidden layer, {num_parameters:,} parameters) trained on MNIST's training split by
`scripts/train_classifier.py`. Its hidden layer is the feature space of the Fréchet distance and of precision and
recall; its predictions give conditional models' class fidelity.

**Test accuracy: {accuracy:.2%}** ({errors} errors on the 10,000 test digits, grey levels in [0, 1]).

```python
from hf_vae.feature_network import FeatureNetwork

network = FeatureNetwork.from_pretrained("pretrained/mnist-classifier").eval()
features = network.features(pixel_values)  # (B, {feature_dim})
logits = network(pixel_values)              # (B, 10)
```

Trained with `{command}` in {seconds:.0f} s of wall time and {cpu_seconds:.0f} s of CPU time ({epochs} epochs, one
thread).
"""


@torch.no_grad()
def accuracy(model: FeatureNetwork, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        (model(to_pixel_values(batch)).argmax(1) == target).sum().item()
        for batch, target in zip(images.split(1000), labels.split(1000), strict=True)
    )
    return correct / len(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_name", default="ylecun/mnist", help="Hub dataset id or local copy of MNIST")
    parser.add_argument("--output_dir", default="pretrained/mnist-classifier")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--max_train_samples", type=int, default=None, help="first N training images (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    splits = load_splits(args.dataset_name, validation_split=1 / 60, seed=args.seed, image_size=28, num_channels=1)
    train = splits.train
    if args.max_train_samples:
        train = train.select(torch.arange(min(args.max_train_samples, len(train))))
    model = FeatureNetwork(FeatureNetworkConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    steps_per_epoch = -(-len(train) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, args.learning_rate, total_steps=args.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(args.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        for index in order.split(args.batch_size):
            loss = model.loss(to_pixel_values(train.images[index]), train.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        validation = accuracy(model, splits.validation.images, splits.validation.labels)
        print(
            f"epoch {epoch + 1}: validation accuracy {validation:.4f}, {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    test_accuracy = accuracy(model, splits.test.images, splits.test.labels)
    print(f"test accuracy {test_accuracy:.4f}")

    output = Path(args.output_dir)
    model.save_pretrained(output)
    command = shlex.join(["python", "scripts/train_classifier.py", *(argv if argv is not None else sys.argv[1:])])
    results = {
        "test_accuracy": test_accuracy,
        "test_images": len(splits.test),
        "validation_accuracy": validation,
        "epochs": args.epochs,
        "train_images": len(train),
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        "command": command,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    (output / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "README.md").write_text(
        CARD.format(
            feature_dim=model.config.feature_dim,
            num_parameters=model.num_parameters(),
            accuracy=test_accuracy,
            errors=round((1 - test_accuracy) * len(splits.test)),
            command=command,
            seconds=seconds,
            cpu_seconds=cpu_seconds,
            epochs=args.epochs,
        )  # fmt: skip
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
