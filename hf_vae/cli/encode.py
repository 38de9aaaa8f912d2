"""`hf-vae encode --model M --dataset_name D --output_dir O`: a VQ-VAE's code grids of every split of an image
dataset, written as a `datasets` dataset (`save_to_disk`) with an `indices` column and the label when there is one.
torch is imported only once the options are parsed."""

from __future__ import annotations

from dataclasses import dataclass, field

from .arguments import build_parser, parse
from .common import load_model_from_args, model_argument, resolve_device


@dataclass
class EncodeArguments:
    """Options of `hf-vae encode`."""

    model: str | None = field(default=None, metadata={"help": "A VQ-VAE folder or Hub repo id."})
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub model."})
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset id, local copy or save_to_disk."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the codes dataset is saved (save_to_disk)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    splits: list[str] | None = field(default=None, metadata={"help": "Splits to encode (default: all)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when there is one)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when there is one)."})
    max_samples: int | None = field(default=None, metadata={"help": "Encode only the first N images of each split."})
    batch_size: int = field(default=500, metadata={"help": "Images per batch."})
    seed: int = field(default=0, metadata={"help": "Seeds the binarisation of binarised models' inputs."})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)."})
    cache_dir: str | None = field(default=None, metadata={"help": "`datasets` cache folder."})

    def __post_init__(self) -> None:
        if self.dataset_name is None or self.output_dir is None:
            raise ValueError("Pass --dataset_name (the images) and --output_dir (where the codes go).")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be at least 1, got {self.batch_size}.")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        (EncodeArguments,),
        prog="hf-vae encode",
        description="Encode an image dataset to a VQ-VAE's code grids (a datasets dataset with an `indices` column).",
    )
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="the VQ-VAE (or pass --model)")
    (args,), namespace = parse(parser, argv)
    args.model = model_argument(args.model, namespace.model_path, parser.prog)
    device = resolve_device(args.device)

    model = load_model_from_args(args, device)
    from ..codes import encode_dataset

    encoded = encode_dataset(
        model,
        args.dataset_name,
        args.output_dir,
        args.dataset_config_name,
        args.image_column,
        args.label_column,
        args.splits,
        args.seed,
        args.batch_size,
        args.max_samples,
        args.cache_dir,
    )
    sizes = ", ".join(f"{name} {len(split)}" for name, split in encoded.items())
    print(
        f"codes ({model.config.grid_size}x{model.config.grid_size} of {model.config.codebook_size}) of {sizes} -> "
        f"{args.output_dir}"
    )
    return 0
