"""`hf-vae` console script: one sub-command per stage of the flow, each implemented by its own module."""

from __future__ import annotations

import importlib
import sys

# command -> (module implementing `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hf_vae.training", "train a VAE with Accelerate on a `datasets` image dataset"),
    "evaluate": ("hf_vae.evaluation", "negative ELBO, IWAE log-likelihood, active units, anomaly scores"),
    "visualize": ("hf_vae.visualization", "samples, reconstructions, latent maps, interpolations, curves"),
    "push": ("hf_vae.hub", "upload a trained model folder, with its model card, to the Hub"),
    "convert": ("hf_vae.convert", "convert a tutorial `best_vae_model.pth` checkpoint to an hf-vae model"),
}


def _usage() -> str:
    lines = ["usage: hf-vae <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `hf-vae <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("-V", "--version"):
        from hf_vae import __version__

        print(__version__)
        return 0
    if command not in COMMANDS:
        print(f"hf-vae: unknown command {command!r}.\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
