"""`python -m hf_vae.cli ...`, the same as the `hf-vae` command."""

import sys

from . import main

sys.exit(main())
