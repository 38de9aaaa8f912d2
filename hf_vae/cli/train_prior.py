"""`hf-vae train-prior --model M --dataset_name D [options]`: train the causal language model over a VQ-VAE's codes and
save it in `prior/` of the model folder (or of --output_dir, with a copy of the VQ-VAE). torch is imported only once
the options are parsed."""

from __future__ import annotations

from dataclasses import dataclass, field

from .arguments import build_parser, parse
from .common import model_argument


@dataclass
class PriorArguments:
    """Options of `hf-vae train-prior`."""

    model: str | None = field(default=None, metadata={"help": "A VQ-VAE folder or Hub repo id."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "The images the VQ-VAE was trained on (Hub id, local copy, save_to_disk)."}
    )
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Write the VQ-VAE with its prior/ here (default: into the model's own folder)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when there is one)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when there is one)."})
    use_labels: bool = field(
        default=True, metadata={"help": "A class token from the labels, when the data has them (true/false)."}
    )
    validation_split: float = field(default=0.05, metadata={"help": "Fraction of train held out for validation."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on the first N training images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Validate and test on the first N images."})
    num_train_epochs: int = field(default=10, metadata={"help": "Passes over the training codes."})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Code grids per training batch."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps of the schedule."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "A transformers schedule name."})
    num_layers: int = field(default=4, metadata={"help": "Transformer blocks of the GPT-2 prior."})
    hidden_size: int = field(default=128, metadata={"help": "Width of the GPT-2 prior."})
    num_heads: int = field(default=4, metadata={"help": "Attention heads of the GPT-2 prior."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout of the GPT-2 prior."})
    seed: int = field(default=42, metadata={"help": "Seeds the weights, the shuffling and the binarisation."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when a GPU is available."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})
    cache_dir: str | None = field(default=None, metadata={"help": "`datasets` cache folder."})

    def __post_init__(self) -> None:
        if self.dataset_name is None:
            raise ValueError("Which images? Pass --dataset_name (the data the VQ-VAE was trained on).")
        if min(self.num_train_epochs, self.per_device_train_batch_size, self.num_layers, self.num_heads) < 1:
            raise ValueError(
                "--num_train_epochs, --per_device_train_batch_size, --num_layers, --num_heads must be >= 1."
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(f"--hidden_size {self.hidden_size} must be a multiple of --num_heads {self.num_heads}.")
        if not 0.0 < self.validation_split < 1.0:
            raise ValueError(f"--validation_split must be a fraction in (0, 1), got {self.validation_split}.")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        (PriorArguments,),
        prog="hf-vae train-prior",
        description="Train a GPT-2 prior over a VQ-VAE's code grids and save it in the model's prior/ folder.",
    )
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="the VQ-VAE (or pass --model)")
    (args,), namespace = parse(parser, argv)
    args.model = model_argument(args.model, namespace.model_path, parser.prog)

    from dataclasses import asdict

    from .. import register_families
    from ..prior_training import PriorRun, train_prior
    from .common import configure_logging

    configure_logging()
    register_families()
    results = train_prior(PriorRun(**asdict(args)))
    test = f", test code NLL {results['test_code_nll']:.3f}" if "test_code_nll" in results else ""
    best = f"best epoch {results['best_epoch']}, validation code NLL {results['best_val_code_nll']:.3f}"
    print(f"prior trained: {best}{test} nats/image")
    return 0
