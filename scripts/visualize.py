"""Write the pictures of a trained VAE (samples, reconstructions, latent space, manifold, interpolations,
training curves) as PNG files. The same as `hf-vae visualize`:

    python scripts/visualize.py --model out/mnist-2d --dataset_name ylecun/mnist --output_dir out/mnist-2d/figures
"""

import sys

from hf_vae.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main(["visualize", *sys.argv[1:]]))
