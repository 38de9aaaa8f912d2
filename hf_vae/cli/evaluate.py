"""`hf-vae evaluate MODEL --dataset_name D [options]`: negative ELBO, IWAE log-likelihood, bits per dimension, active
units, per-class figures, sample quality (`--sample_metrics`), and anomaly scores of a split or a folder of images.
torch is imported only once the options are parsed."""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .arguments import build_parser, parse
from .common import load_model_from_args, load_split_from_args, model_argument, resolve_device

DEFAULT_MAX_BATCH_ELEMENTS = 2**23  # hf_vae.estimators.DEFAULT_MAX_BATCH_ELEMENTS, without importing torch


@dataclass
class EvaluationArguments:
    """Options of `hf-vae evaluate`."""

    model: str | None = field(
        default=None, metadata={"help": "A folder written by `hf-vae train` / `save_pretrained`, or a Hub repo id."}
    )
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub model."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset id, a local copy of one, or a `save_to_disk` folder."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    split: str = field(default="test", metadata={"help": "Split to evaluate (and to score for anomalies)."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when there is one)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when there is one)."})
    iwae_samples: int = field(default=1000, metadata={"help": "K, posterior samples of the IWAE estimate."})
    elbo_samples: int = field(default=10, metadata={"help": "Posterior samples averaged in the negative ELBO."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N images."})
    per_device_eval_batch_size: int = field(
        default=100, metadata={"help": "Images per batch (each IWAE batch decodes K of each)."}
    )
    max_batch_elements: int = field(
        default=DEFAULT_MAX_BATCH_ELEMENTS, metadata={"help": "Decoded pixels held at once by the IWAE estimate."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds the test-set binarisation and every posterior draw."})
    output: str | None = field(default=None, metadata={"help": "Write the results to this JSON file."})
    device: str | None = field(default=None, metadata={"help": "cpu or cuda (default: cuda when available)."})
    cache_dir: str | None = field(default=None, metadata={"help": "`datasets` cache folder."})
    anomaly_scores_output: str | None = field(
        default=None,
        metadata={"help": "Write per-image anomaly scores (CSV) of --image_folder, or else of the evaluated split."},
    )
    image_folder: str | None = field(default=None, metadata={"help": "Score every image file under this folder."})
    anomaly_method: Literal["elbo", "iwae"] = field(
        default="elbo", metadata={"help": "Score: negative ELBO (fast) or IWAE estimate of -log p(x)."}
    )
    anomaly_samples: int | None = field(
        default=None, metadata={"help": "Posterior samples per score (default 16 for elbo, 1000 for iwae)."}
    )
    threshold: float | None = field(default=None, metadata={"help": "Flag scores above this value."})
    threshold_split: str | None = field(
        default="train",
        metadata={"help": "Without --threshold, fit one on this split of --dataset_name ('none' to skip)."},
    )
    threshold_quantile: float = field(default=0.99, metadata={"help": "Quantile of the normal scores to flag above."})
    max_threshold_samples: int | None = field(
        default=10000, metadata={"help": "Fit the threshold on the first N images of --threshold_split."}
    )
    sample_metrics: bool = field(
        default=False,
        metadata={
            "help": "Also measure samples against the split: Fréchet distance and precision/recall in the feature "
            "network's features, class fidelity for conditional models; for every sampler the model has."
        },
    )
    generated_samples: int = field(default=10000, metadata={"help": "Samples per sampler for --sample_metrics."})
    feature_network: str | None = field(
        default=None,
        metadata={
            "help": "Feature network of --sample_metrics (folder or Hub repo). Default: the clone's "
            "pretrained/mnist-classifier."
        },
    )
    sample_metrics_output: str | None = field(
        default=None, metadata={"help": "Also write the --sample_metrics report alone to this JSON file."}
    )
    precision_recall_k: int = field(
        default=3, metadata={"help": "k of the k-NN manifolds of precision and recall (0: skip them)."}
    )
    sample_temperature: float = field(
        default=1.0,
        metadata={"help": "Temperature of the samples of --sample_metrics (`sample(temperature=)`); 1: the model."},
    )
    flush_denormal: bool = field(
        default=True,
        metadata={"help": "On a CPU, flush subnormal floats to zero for the run (faster; see hf_vae/denormals.py)."},
    )

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.image_folder is None:
            raise ValueError("Nothing to evaluate: pass --dataset_name (and --split) or --image_folder DIR.")
        if self.image_folder is not None and self.anomaly_scores_output is None:
            raise ValueError("--image_folder scores images: pass --anomaly_scores_output FILE.csv for the scores.")
        if not self.sample_temperature > 0:
            raise ValueError(f"--sample_temperature must be positive, got {self.sample_temperature}.")
        if min(self.iwae_samples, self.elbo_samples, self.per_device_eval_batch_size) < 1:
            raise ValueError("--iwae_samples, --elbo_samples and --per_device_eval_batch_size must be at least 1.")
        if self.sample_metrics and self.dataset_name is None:
            raise ValueError("--sample_metrics compares samples with a dataset split: pass --dataset_name too.")
        if self.sample_metrics and (self.generated_samples < 2 or self.precision_recall_k < 0):
            raise ValueError("--generated_samples must be at least 2 and --precision_recall_k at least 0.")
        if self.output is not None and self.dataset_name is None:
            raise ValueError("--output writes the figures of a dataset split: pass --dataset_name too.")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        (EvaluationArguments,),
        prog="hf-vae evaluate",
        description="Evaluate a model on a dataset split (JSON + summary) and/or score images for anomalies.",
        aliases={"max_samples": ["--max_eval_samples"], "per_device_eval_batch_size": ["--batch_size"]},
    )
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="the model (or pass --model)")
    (args,), namespace = parse(parser, argv)
    args.model = model_argument(args.model, namespace.model_path, parser.prog)
    from ..denormals import denormals_flushed

    with denormals_flushed(args.flush_denormal):
        return _evaluate(args, argv)


def _evaluate(args: EvaluationArguments, argv: list[str] | None) -> int:
    device = resolve_device(args.device)

    model = load_model_from_args(args, device)
    from ..evaluation import evaluate_model, format_summary, run_anomaly_scoring

    data = None
    results: dict[str, Any] = {}
    if args.dataset_name is not None:
        data = load_split_from_args(args, model.config)
    if data is not None and args.image_folder is None:
        results = {
            "model": args.model,
            "revision": args.revision,
            "dataset": args.dataset_name,
            "dataset_config": args.dataset_config_name,
            "split": args.split,
        }
        results.update(
            evaluate_model(
                model,
                data,
                args.iwae_samples,
                args.elbo_samples,
                args.seed,
                args.per_device_eval_batch_size,
                args.max_batch_elements,
                progress=True,
            )
        )
        print(format_summary(results))
    if data is not None and args.sample_metrics:
        from ..data import to_pixel_values
        from ..feature_network import load_feature_network
        from ..sample_metrics import format_sample_metrics, sample_metrics

        network = load_feature_network(args.feature_network).to(device)
        report = sample_metrics(
            model,
            to_pixel_values(data.images),
            network,
            args.generated_samples,
            args.seed,
            neighbours=args.precision_recall_k or None,
            temperature=args.sample_temperature,
        )
        report["feature_network"] = args.feature_network or "pretrained/mnist-classifier"
        report["command"] = shlex.join(["hf-vae", "evaluate", *(sys.argv[2:] if argv is None else argv)])
        results["sample_metrics"] = report
        print(format_sample_metrics(report))
        if args.sample_metrics_output is not None:
            Path(args.sample_metrics_output).write_text(json.dumps(report, indent=2) + "\n")
    if args.anomaly_scores_output is not None:
        report = run_anomaly_scoring(args, model, data)
        results["anomaly"] = report
        flagged = f", {report['num_flagged']} above {report['threshold']:.3f}" if "threshold" in report else ""
        print(
            f"anomaly scores ({report['method']}, {report['num_samples']} samples) of {report['num_images']} "
            f"images{flagged} -> {report['scores_csv']}"
        )
    if args.output is not None:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {output}", file=sys.stdout)
    return 0
