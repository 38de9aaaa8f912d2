"""`python -m hf_vae.cli ...`, the same as the `hf-vae` command."""

import sys

from . import console_main

sys.exit(console_main())
