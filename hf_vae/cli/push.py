"""`hf-vae push MODEL --repo_id OWNER/NAME`: upload a trained model folder with its generated model card to the Hub,
in one commit. huggingface_hub and torch are imported only once the options are parsed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .arguments import UsageError, build_parser, parse
from .common import configure_logging, model_argument


@dataclass
class PushArguments:
    """Options of `hf-vae push`."""

    repo_id: str = field(metadata={"help": "The Hub repo, `user/name` or `org/name`; created if missing."})
    model: str | None = field(
        default=None, metadata={"help": "The model folder, as written by `hf-vae train --output_dir`."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repo as private (if it does not exist)."})
    revision: str | None = field(
        default=None, metadata={"help": "Branch to commit to, created from main if missing; unset means main."}
    )
    commit_message: str | None = field(default=None, metadata={"help": "The commit message."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing directly."})
    with_demo: bool = field(
        default=False,
        metadata={"help": "Also create a Gradio Space serving the model's demo (app.py, `sdk: gradio` README)."},
    )
    space_id: str | None = field(
        default=None, metadata={"help": "The demo Space, with --with_demo (default: <repo_id>-demo)."}
    )
    token: str | None = field(
        default=None,
        metadata={
            "help": "A token with write access. Prefer `hf auth login` or HF_TOKEN: a token on the command line is "
            "visible to other users of the machine and lands in your shell history."
        },
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(
        (PushArguments,),
        prog="hf-vae push",
        description="Upload a trained model folder, with a generated model card, to a Hub model repo.",
        aliases={"model": ["--model_dir"]},
    )
    parser.add_argument("model_path", nargs="?", metavar="MODEL", help="the model folder (or pass --model)")
    (args,), namespace = parse(parser, argv)
    model = model_argument(args.model, namespace.model_path, parser.prog)
    if args.space_id is not None and not args.with_demo:
        raise UsageError("--space_id names the demo Space: pass --with_demo too.")

    configure_logging()
    from .. import register_families
    from ..hub import push_space, push_to_hub
    from ..model_card import CARD_NAME

    register_families()
    commit = push_to_hub(
        model,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        token=args.token,
    )
    repo_id = commit.repo_url.repo_id
    print(f"Pushed {model} to {commit.repo_url} (commit {commit.oid[:8]}): {commit.commit_url}")
    if (Path(model) / CARD_NAME).is_file():
        print(f"The repo's {CARD_NAME} is the generated model card; the folder's own {CARD_NAME} was not uploaded.")
    if commit.pr_url:
        print(f"Pull request: {commit.pr_url}")
    pin = f', revision="{args.revision}"' if args.revision and not args.create_pr else ""
    print(f'Load it with: VAEModel.from_pretrained("{repo_id}"{pin})')
    if args.with_demo:
        space = push_space(repo_id, args.space_id, private=args.private, token=args.token)
        print(f"Demo Space: {space.repo_url} (commit {space.oid[:8]})")
    return 0
