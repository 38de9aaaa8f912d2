"""Upload a trained model folder, with its generated model card, to the Hugging Face Hub.

The same as `hf-vae push`:

    python scripts/push_to_hub.py out/mnist --repo_id your-name/mnist-vae
"""

import sys

from hf_vae.cli import console_main

if __name__ == "__main__":
    sys.exit(console_main(["push", *sys.argv[1:]]))
