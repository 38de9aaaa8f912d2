"""Evaluate a trained VAE on a dataset split: negative ELBO, IWAE log-likelihood, bits/dim, active units,
per-class figures, anomaly scores. The same as `hf-vae evaluate`:

    python scripts/evaluate.py --model out/mnist-2d --dataset_name ylecun/mnist --iwae_samples 1000 --output eval.json
"""

import sys

from hf_vae.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main(["evaluate", *sys.argv[1:]]))
