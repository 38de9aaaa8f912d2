"""Wall time of the IWAE log-likelihood estimate (Burda et al. 2015) on a test split, as `hf-vae evaluate` runs it.

    python scripts/benchmark_iwae.py --dataset_name /path/to/mnist --num_images 10000 --iwae_samples 1000

Times `hf_vae.evaluation.per_image_figures` (negative ELBO, IWAE, reference-style loss, posterior means)
for a model (`--model`, default: a freshly initialised model of `--preset`, whose cost is the same as a trained
one's) and prints seconds, images per second and the decoder rows evaluated per second. On a shared machine, run
it twice and keep the faster figure.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hf_vae import VAEConfig, VAEModel
from hf_vae.data import evaluation_images, tensor_batches
from hf_vae.estimators import DEFAULT_MAX_BATCH_ELEMENTS
from hf_vae.evaluation import load_model, load_split, per_image_figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_name", required=True)
    parser.add_argument("--model", default=None, help="a trained model folder or Hub id (default: a fresh preset)")
    parser.add_argument("--preset", default="mnist-2d")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_images", type=int, default=10000)
    parser.add_argument("--iwae_samples", type=int, default=1000)
    parser.add_argument("--elbo_samples", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--max_batch_elements", type=int, default=DEFAULT_MAX_BATCH_ELEMENTS)
    args = parser.parse_args()

    model = load_model(args.model) if args.model else VAEModel(VAEConfig.from_preset(args.preset)).eval()
    data = load_split(args.dataset_name, model.config, args.split, max_samples=args.num_images)
    images = evaluation_images(data, model.config.binarize)
    started = time.perf_counter()
    figures = per_image_figures(
        model,
        tensor_batches(images, args.batch_size),
        elbo_samples=args.elbo_samples,
        iwae_samples=args.iwae_samples,
        max_batch_elements=args.max_batch_elements,
    )
    seconds = time.perf_counter() - started
    rows = len(data) * (args.iwae_samples + args.elbo_samples + 3)
    report = {
        "model": args.model or f"fresh {args.preset}",
        "num_images": len(data),
        "iwae_samples": args.iwae_samples,
        "batch_size": args.batch_size,
        "max_batch_elements": args.max_batch_elements,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "images_per_second": round(len(data) / seconds, 1),
        "decoder_rows_per_second": round(rows / seconds),
        "iwae_nll": round(float(figures["iwae_nll"].mean()), 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
