"""`hf-vae convert SOURCE --output_dir DIR`: convert the reference tutorial's `best_vae_model.pth` (a local file, a
local folder or a Hub repo) into an hf-vae model folder. torch is imported only once the options are parsed."""

from __future__ import annotations

from dataclasses import dataclass, field

from .arguments import build_parser, parse
from .common import configure_logging

DEFAULT_FILENAME = "vae_logs_latent2_beta1.0/best_vae_model.pth"  # hf_vae.convert.DEFAULT_FILENAME


@dataclass
class ConvertArguments:
    """Options of `hf-vae convert SOURCE` (SOURCE: a local `.pth` file, a local folder or a Hub repo id)."""

    output_dir: str = field(metadata={"help": "Folder to write the converted model to (must not exist or be empty)."})
    filename: str = field(
        default=DEFAULT_FILENAME,
        metadata={"help": "Checkpoint path inside SOURCE when SOURCE is a Hub repo id or a local folder."},
    )
    revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit (default: main)."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN or your saved login)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Hub cache folder (default: HF_HUB_CACHE)."})
    beta: float | None = field(
        default=None,
        metadata={"help": "KL weight to record for a bare state dict, which does not carry one (default 1.0)."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the whole of a non-empty --output_dir with the converted model."}
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        (ConvertArguments,),
        prog="hf-vae convert",
        description="Convert a tutorial `best_vae_model.pth` checkpoint into an hf-vae model folder.",
        aliases={"overwrite_output_dir": ["--overwrite"]},
    )
    parser.add_argument(
        "source", metavar="SOURCE", help="A tutorial checkpoint: a local .pth file, a local folder or a Hub repo id."
    )
    (args,), namespace = parse(parser, argv)

    configure_logging()
    from .. import register_families
    from ..convert import _format, convert_checkpoint, resolve_source

    register_families()
    checkpoint_path, source = resolve_source(namespace.source, args.filename, args.revision, args.token, args.cache_dir)
    result = convert_checkpoint(
        checkpoint_path, args.output_dir, source=source, beta=args.beta, overwrite=args.overwrite_output_dir
    )
    checkpoint = result.checkpoint
    print(f"Read {checkpoint_path} ({checkpoint.layout}, sha256 {result.sha256})")
    print("Tutorial arguments: " + ", ".join(f"{key}={value}" for key, value in checkpoint.arguments.items()))
    if checkpoint.ignored_entries:
        print(f"Ignored top-level entries (not part of the model): {checkpoint.ignored_entries}")
    print(f"Max |difference| vs the tutorial's network, eval mode: {_format(result.differences)}")
    print(f"Wrote {result.output_dir}; load it with `VAEModel.from_pretrained({str(result.output_dir)!r})`.")
    return 0
