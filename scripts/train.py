"""Train a VAE: the entry point of `hf-vae train`, as a script for `accelerate launch`.

accelerate launch scripts/train.py --dataset_name ylecun/mnist --preset mnist --output_dir out
ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/train.py ...   # 2 CPU processes
"""

import sys

from hf_vae.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main(["train", *sys.argv[1:]]))
