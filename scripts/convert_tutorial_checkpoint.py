"""Convert a checkpoint of the reference tutorial ("Building Variational Autoencoders from Scratch") to hf-vae.

Same as `hf-vae convert`, kept as a script the way transformers ships its `convert_*_checkpoint.py` files:

    python scripts/convert_tutorial_checkpoint.py karthik-2905/VariationalAutoencoders --output_dir vae-mnist-2d
    python scripts/convert_tutorial_checkpoint.py path/to/best_vae_model.pth --output_dir vae-mnist-2d
"""

import sys

from hf_vae.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main(["convert", *sys.argv[1:]]))
