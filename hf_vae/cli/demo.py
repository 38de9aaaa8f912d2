"""`hf-vae demo --model PATH_OR_REPO`: serve the model's Gradio app (Generate, Explore, Reconstruct and score,
Interpolate) on 127.0.0.1. Gradio and torch are imported only once the options are parsed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from .arguments import UsageError, build_parser, parse
from .common import configure_logging, model_argument, resolve_device

INSTALL_HINT = "The demo needs Gradio: pip install 'hf-vae[demo]'."


@dataclass
class DemoArguments:
    """Options of `hf-vae demo`."""

    model: str | None = field(
        default=None, metadata={"help": "A folder written by `hf-vae train` / `save_pretrained`, or a Hub repo id."}
    )
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub model."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to serve on (0.0.0.0 serves the network)."})
    port: int | None = field(default=None, metadata={"help": "Port (default: Gradio's, the first free from 7860)."})
    share: bool = field(default=False, metadata={"help": "Also open a public gradio.live link (Gradio's --share)."})
    dataset_name: str | None = field(
        default="auto",
        metadata={
            "help": "Dataset whose test images' posterior means the Explore tab shows ('auto': ylecun/mnist for "
            "28x28 grey models; 'none': prior samples)."
        },
    )
    max_explore_samples: int = field(default=2000, metadata={"help": "Test images encoded for the Explore tab."})
    threshold: float | None = field(
        default=None, metadata={"help": "Anomaly threshold (default: the one evaluate saved in evaluation.json)."}
    )
    anomaly_method: Literal["elbo", "iwae"] = field(default="elbo", metadata={"help": "The score --threshold is for."})
    device: str | None = field(default="cpu", metadata={"help": "cpu or cuda."})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        (DemoArguments,), prog="hf-vae demo", description="Serve a model's interactive Gradio demo in the browser."
    )
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="the model (or pass --model)")
    (args,), namespace = parse(parser, argv)
    model = model_argument(args.model, namespace.model_path, parser.prog)
    if args.port is not None and not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a port number; use 1-65535 (or leave it out).")
    if args.max_explore_samples < 1:
        raise UsageError("--max_explore_samples must be at least 1.")
    from ..families import check_model_location

    check_model_location(model, args.revision)  # a wrong path fails at once, before Gradio and torch load
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports unless asked for
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    device = resolve_device(args.device)

    configure_logging()
    from .. import register_families
    from ..demo import launch

    register_families()
    launch(
        model,
        revision=args.revision,
        dataset_name=None if (args.dataset_name or "none").lower() == "none" else args.dataset_name,
        max_explore_samples=args.max_explore_samples,
        threshold=args.threshold,
        anomaly_method=args.anomaly_method,
        host=args.host,
        port=args.port,
        share=args.share,
        device=device,
    )
    return 0
