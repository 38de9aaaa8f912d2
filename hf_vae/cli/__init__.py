"""`hf-vae`: one sub-command per stage of the flow, each in its own module of this package.

Every command shares one error style: `hf-vae <command>: error: <what is wrong>. <how to fix it>.` on stderr, exit
code 2 for a command line that cannot be used and 1 for a failure, no traceback unless `--debug` (or HF_VAE_DEBUG=1).
Ctrl-C ends with one line. Help is fast: this package imports torch only when a command runs.
"""

from __future__ import annotations

import difflib
import gc
import importlib
import os
import sys

from .arguments import UsageError

# command -> (module implementing `main(argv)`, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hf_vae.cli.train", "train a model with Accelerate on a `datasets` image dataset"),
    "evaluate": ("hf_vae.cli.evaluate", "negative ELBO, IWAE NLL, active units, sample quality, anomaly scores"),
    "fit-sampler": ("hf_vae.cli.fit_sampler", "fit the Gaussian mixture latent sampler (sample(sampler='gmm'))"),
    "visualize": ("hf_vae.cli.visualize", "samples, reconstructions, latent maps, interpolations, curves"),
    "train-prior": ("hf_vae.cli.train_prior", "train the GPT-2 prior over a VQ-VAE's codes (saved in its prior/)"),
    "encode": ("hf_vae.cli.encode", "a VQ-VAE's code grids of an image dataset, as a `datasets` dataset"),
    "push": ("hf_vae.cli.push", "upload a trained model folder, with its model card, to the Hub"),
    "convert": ("hf_vae.cli.convert", "convert a tutorial `best_vae_model.pth` checkpoint to an hf-vae model"),
    "demo": ("hf_vae.cli.demo", "serve a model's interactive Gradio demo (generate, explore, score, interpolate)"),
}
DEBUG_ENV = "HF_VAE_DEBUG"


def _usage() -> str:
    lines = ["usage: hf-vae <command> [options]", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `hf-vae <command> --help` for a command's options; add --debug to see tracebacks."]
    return "\n".join(lines)


def _is_main_process() -> bool:
    """Under a multi-process launch, only rank 0 prints errors (the others fail the same way)."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def _say(command: str, message: str) -> None:
    if _is_main_process():
        print(f"hf-vae {command}: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV) == "1"
    argv = [item for item in argv if item != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command in ("-V", "--version"):
        from hf_vae import __version__

        print(__version__)
        return 0
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f" Did you mean `hf-vae {close[0]}`?" if close else ""
        print(f"hf-vae: error: unknown command {command!r}.{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(rest) or 0)
    except UsageError as error:
        _say(command, f"error: {error}")
        return 2
    except KeyboardInterrupt:
        _say(command, "interrupted. " + getattr(module, "INTERRUPTED_HINT", "Nothing was left half-written."))
        return 130
    except Exception as error:  # noqa: BLE001 - the one place that turns any failure into one readable line
        if debug:
            raise
        message = str(error).strip() or type(error).__name__
        if not isinstance(error, _documented_errors()):
            message = f"{type(error).__name__}: {message} (run again with --debug for the traceback)"
        _say(command, f"error: {message}")
        return 1


def _documented_errors() -> tuple[type[BaseException], ...]:
    """The errors hf-vae raises with a message that names the problem and the fix: printed as they are."""
    errors: list[type[BaseException]] = [ValueError, OSError]
    for module, name in (
        ("hf_vae.training_metrics", "TrainingDivergedError"),
        ("hf_vae.hub", "HubPushError"),
        ("hf_vae.convert", "ConversionError"),
        ("hf_vae.demo", "DemoInputError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None:
            errors.append(getattr(loaded, name))
    return tuple(errors)


def console_main(argv: list[str] | None = None) -> int:
    """The `hf-vae` executable: `main`, then a quick exit.

    A process that imported torch and transformers spends about a second of its exit in the garbage collector's
    passes over every module's objects (1.2 s -> 0.3 s here). Freezing them first skips those passes; the atexit
    handlers and the objects' own finalisers still run. Only for a process that ends now, never for `main` called
    in-process (a test suite would stop collecting its garbage)."""
    code = main(argv)
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(console_main())
