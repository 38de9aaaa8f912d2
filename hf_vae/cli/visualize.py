"""`hf-vae visualize MODEL --dataset_name D --output_dir O`: the pictures of a model on a dataset split (samples,
reconstructions, latent space, manifold, interpolations, training curves). torch and matplotlib are imported only
once the options are parsed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .arguments import UsageError, build_parser, parse
from .common import load_model_from_args, load_split_from_args, model_argument, resolve_device


@dataclass
class VisualizationArguments:
    """Options of `hf-vae visualize`."""

    dataset_name: str = field(metadata={"help": "Hub dataset id, a local copy of one, or a `save_to_disk` folder."})
    output_dir: str = field(metadata={"help": "Folder to write the PNG files into."})
    model: str | None = field(
        default=None, metadata={"help": "A folder written by `hf-vae train` / `save_pretrained`, or a Hub repo id."}
    )
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub model."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    split: str = field(default="test", metadata={"help": "Split whose images are shown and encoded."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when there is one)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when there is one)."})
    max_samples: int | None = field(default=None, metadata={"help": "Use only the first N images of the split."})
    metrics_csv: str | None = field(
        default=None, metadata={"help": "Training metrics for training_curves.png (default: the model's metrics.csv)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds prior samples, binarisation and the images chosen."})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)."})
    cache_dir: str | None = field(default=None, metadata={"help": "`datasets` cache folder."})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        (VisualizationArguments,), prog="hf-vae visualize", description="Write the pictures of a model on a split."
    )
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="the model (or pass --model)")
    (args,), namespace = parse(parser, argv)
    args.model = model_argument(args.model, namespace.model_path, parser.prog)
    if args.metrics_csv is not None and not Path(args.metrics_csv).is_file():
        raise UsageError(f"--metrics_csv {args.metrics_csv!r} is not a file.")
    device = resolve_device(args.device)

    model = load_model_from_args(args, device)
    from ..visualization import _find_metrics, command_caption, save_figures

    data = load_split_from_args(args, model.config)
    metrics_csv = args.metrics_csv or _find_metrics(args.model, args.revision)
    caption = command_caption(args.model, args.revision)
    paths = save_figures(model, data, args.output_dir, metrics_csv, args.seed, caption=caption)
    for name, path in paths.items():
        print(f"{name:<16} {path}")
    return 0
