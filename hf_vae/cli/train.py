"""`hf-vae train [FILE.json|yaml] [options]`: train a model with Accelerate on a `datasets` image dataset.

The same as `python scripts/train.py` and `accelerate launch scripts/train.py`; the options are in
`hf_vae/training_args.py`. torch is imported only once the options are parsed.
"""

from __future__ import annotations

INTERRUPTED_HINT = (
    "The checkpoints written so far are kept: run the same command with --resume_from_checkpoint latest to continue."
)


def main(argv: list[str] | None = None) -> int:
    from ..training_args import parse_args

    model_args, data_args, training_args = parse_args(argv)
    from .common import configure_logging

    configure_logging()
    from .. import register_families
    from ..hub import HubPushError
    from ..training import train

    register_families()
    try:
        train(model_args, data_args, training_args)
    except HubPushError as error:
        output_dir = training_args.output_dir
        raise HubPushError(
            f"the model was trained and saved in {output_dir}, but the push failed: {error} Push it again with "
            f"`hf-vae push {output_dir} --repo_id {training_args.hub_model_id}`."
        ) from None
    return 0
