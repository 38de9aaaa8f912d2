"""`hf-vae fit-sampler MODEL --dataset_name D`: fit the post-hoc Gaussian mixture sampler (`sampler="gmm"`) to the
model's posterior means of a split (the training split by default) and save it beside the weights as
`gmm_sampler.safetensors`. The weights are not rewritten; the file travels with `save_pretrained`, `hf-vae push` and
`from_pretrained`. torch is imported only once the options are parsed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .arguments import UsageError, build_parser, parse
from .common import load_model_from_args, load_split_from_args, model_argument, resolve_device


@dataclass
class FitSamplerArguments:
    """Options of `hf-vae fit-sampler`."""

    dataset_name: str = field(metadata={"help": "Hub dataset id, a local copy of one, or a `save_to_disk` folder."})
    model: str | None = field(
        default=None, metadata={"help": "A folder written by `hf-vae train` / `save_pretrained`, or a Hub repo id."}
    )
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub model."})
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Save the model with its sampler here (needed for a Hub model). Default: write only "
            "gmm_sampler.safetensors into the model's own folder."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    split: str = field(default="train", metadata={"help": "Split whose posterior means the mixture is fitted to."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when there is one)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when there is one)."})
    max_samples: int | None = field(default=None, metadata={"help": "Fit on the first N images of the split."})
    num_components: int = field(default=10, metadata={"help": "Components of the Gaussian mixture."})
    seed: int = field(default=0, metadata={"help": "Seeds the binarisation and the mixture's initialisation."})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)."})
    cache_dir: str | None = field(default=None, metadata={"help": "`datasets` cache folder."})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        (FitSamplerArguments,),
        prog="hf-vae fit-sampler",
        description="Fit the Gaussian mixture latent sampler (sampler='gmm') and save it with the model.",
    )
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="the model (or pass --model)")
    (args,), namespace = parse(parser, argv)
    args.model = model_argument(args.model, namespace.model_path, parser.prog)
    if args.num_components < 1:
        raise UsageError(f"--num_components must be at least 1, got {args.num_components}.")
    if args.output_dir is None and not os.path.isdir(args.model):
        raise UsageError(
            f"{args.model!r} is not a local folder to write the sampler into: pass --output_dir DIR to save the model "
            "with its sampler there."
        )
    device = resolve_device(args.device)

    model = load_model_from_args(args, device)
    from ..latent_samplers import fit_gmm_sampler
    from ..modeling_utils import GMM_SAMPLER_FILE

    data = load_split_from_args(args, model.config)
    source = f"{args.dataset_name} {args.split} ({len(data)} images)"
    report = fit_gmm_sampler(model, data, args.num_components, args.seed, source=source)
    if args.output_dir is None:
        path = os.path.join(args.model, GMM_SAMPLER_FILE)
        model.gmm_sampler.save(path)
    else:
        model.save_pretrained(args.output_dir)
        path = os.path.join(args.output_dir, GMM_SAMPLER_FILE)
    state = "converged" if report["converged"] else "did not converge"
    print(
        f"Gaussian mixture of {report['num_components']} components fitted to {report['num_points']} posterior means "
        f"({model.sampler_latent_description}; EM {state} in {report['iterations']} iterations, mean log-likelihood "
        f"{report['mean_log_likelihood']:.3f}) -> {path}"
    )
    return 0
