"""Push a trained model folder to the Hugging Face Hub: `push_to_hub` and the `hf-vae push` command.

One commit carries the folder's files (weights, config, code files for `trust_remote_code`, metrics, evaluation,
pictures) and a freshly generated `README.md` model card. The card is built in memory and the local folder is never
written to, whether the push succeeds or fails. Everything goes through `huggingface_hub.HfApi`, so `HF_ENDPOINT`,
`HF_TOKEN`, `hf auth login`, proxies and the library's own retries behave as everywhere else. The token is only
handed to `huggingface_hub`: it is never printed, logged, written to a file or put into the card, and a push is
refused if any file to upload contains it.

Pulling needs nothing from this module: `VAEModel.from_pretrained("user/repo")`, or without hf-vae
`AutoModel.from_pretrained("user/repo", trust_remote_code=True)`, go through the Hub cache like any transformers model.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id

from .families import (
    auto_map,
    config_class,
    image_processor_auto_map,
    image_processor_class,
    model_type_of,
    remote_code_files,
)
from .model_card import CARD_NAME, PICTURES, build_model_card

try:  # the HTTP client of huggingface_hub 2.x; 1.x used httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover
    from httpx import TransportError

logger = logging.getLogger(__name__)

# Training states are large, only useful for resuming, and may hold optimizer state: they stay local.
EXCLUDED_DIRECTORIES = {"checkpoints", "__pycache__"}
TEMPORARY_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".lock", ".swp", ".pyc", "~")
# What a folder holds beside the weights that `model.push_to_hub` carries over from the folder a model was loaded from.
RESULT_FILES = (
    "metrics.csv",
    "training_args.json",
    "train_results.json",
    "eval_results.json",
    "evaluation.json",
    "build.json",
    "conversion.json",
    *(file for file, _ in PICTURES),
)
PROCESSOR_CONFIG = "preprocessor_config.json"
LOGIN_HINT = "Log in with `hf auth login`, or set the HF_TOKEN environment variable"
NOTHING_CHANGED = "No commit was made and the local folder is unchanged."


class HubPushError(RuntimeError):
    """A push that could not be done, with a message that says why and what to do."""


def _is_uploaded(relative: Path) -> bool:
    if any(part.startswith(".") for part in relative.parts):
        return False
    if any(part in EXCLUDED_DIRECTORIES or part.startswith("checkpoint-") for part in relative.parts[:-1]):
        return False
    return relative.as_posix() != CARD_NAME and not relative.name.endswith(TEMPORARY_SUFFIXES)


def collect_files(model_dir: str | os.PathLike) -> list[Path]:
    """The files of `model_dir` that a push uploads, relative to it: everything but `checkpoints/` (and
    `checkpoint-*/`), hidden and temporary files, caches, and `README.md` (replaced by the generated card)."""
    root = Path(model_dir)
    return sorted(
        path.relative_to(root) for path in root.rglob("*") if path.is_file() and _is_uploaded(path.relative_to(root))
    )


def _contains(path: Path, needle: bytes, chunk_size: int = 1 << 22) -> bool:
    tail = b""
    with path.open("rb") as file:
        while chunk := file.read(chunk_size):
            if needle in tail + chunk:
                return True
            tail = chunk[-(len(needle) - 1) :] if len(needle) > 1 else b""
    return False


def _operations(model_dir: Path, files: list[Path], card: bytes) -> list[CommitOperationAdd]:
    """The commit: the folder's files, the card, and the code `trust_remote_code` needs with its `auto_map`, both
    from the installed package (the one copy of the code anyone edits; a folder's own copies may be stale)."""
    model_type = model_type_of(model_dir) or "hf_vae"
    code_files = remote_code_files(model_type)
    operations = []
    for relative in files:
        if relative.as_posix() in code_files:
            continue
        content: str | bytes = str(model_dir / relative)
        if relative.as_posix() in ("config.json", PROCESSOR_CONFIG):
            config = json.loads((model_dir / relative).read_text(encoding="utf-8"))
            config["auto_map"] = auto_map(model_type) if relative.name == "config.json" else image_processor_auto_map()
            content = (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        operations.append(CommitOperationAdd(path_in_repo=relative.as_posix(), path_or_fileobj=content))
    if Path(PROCESSOR_CONFIG) not in files:  # a folder saved before image processors were
        processor = _processor_config(model_dir)
        operations.append(CommitOperationAdd(path_in_repo=PROCESSOR_CONFIG, path_or_fileobj=processor))
    package_dir = Path(__file__).resolve().parent
    for name in code_files:
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(package_dir / name)))
    operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card))
    return operations


def _processor_config(model_dir: Path) -> bytes:
    """preprocessor_config.json for a folder that has none, read off its config.json."""
    config = config_class(model_type_of(model_dir) or "hf_vae").from_pretrained(model_dir)
    processor = image_processor_class().from_model_config(config).to_dict()
    processor["auto_map"] = image_processor_auto_map()
    return (json.dumps(processor, indent=2, sort_keys=True) + "\n").encode()


def _refuse_leaked_token(model_dir: Path, files: list[Path], card: bytes, token: str) -> None:
    needle = token.encode()
    leaks = [relative.as_posix() for relative in files if _contains(model_dir / relative, needle)]
    if needle in card:
        leaks.append(f"{CARD_NAME} (generated from the folder's files)")
    if leaks:
        raise HubPushError(
            f"Refusing to push: your Hugging Face token appears in {', '.join(leaks)}. Remove it from the folder "
            f"(tokens belong in HF_TOKEN or `hf auth login`, not in files), then push again. {NOTHING_CHANGED}"
        )


def _explain(error: Exception, endpoint: str, repo_id: str) -> HubPushError:
    """Turn a huggingface_hub / network error into a message that names the cause and the fix."""
    if isinstance(error, TransportError):
        return HubPushError(
            f"Could not reach the Hugging Face Hub at {endpoint} ({type(error).__name__}: {error}). Check your "
            f"network connection, proxy settings and the HF_ENDPOINT variable, then push again. {NOTHING_CHANGED}"
        )
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    detail = (getattr(error, "server_message", None) or str(error).strip().splitlines()[0]).rstrip(". ")
    if status == 401:
        return HubPushError(
            f"The Hub at {endpoint} rejected your token (401 Unauthorized): it is invalid, expired or revoked. "
            f"{LOGIN_HINT} to a token with write access (https://huggingface.co/settings/tokens). {NOTHING_CHANGED}"
        )
    if status == 403:
        return HubPushError(
            f"The Hub at {endpoint} does not let your token write to {repo_id} (403 Forbidden: {detail}). "
            f"{LOGIN_HINT} to a token with write access to that namespace, or push to a repo under your own name. "
            f"{NOTHING_CHANGED}"
        )
    if status is not None:
        return HubPushError(
            f"The Hub at {endpoint} answered HTTP {status} while pushing to {repo_id} ({detail}). {NOTHING_CHANGED} "
            "Try again later."
        )
    return HubPushError(f"Pushing to {repo_id} on {endpoint} failed: {detail}. {NOTHING_CHANGED}")


def push_to_hub(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Upload a model folder and its generated model card to a Hub model repo, in one commit.

    Args:
        model_dir: a folder written by `hf-vae train` or `save_pretrained` (`config.json` and `model.safetensors`
            at least). It is read, never written.
        repo_id: `"user/name"` or `"org/name"` (a bare name means your own namespace). Created if missing.
        private: make the repo private when it is created (an existing repo keeps its visibility).
        revision: the branch to commit to (created from `main` if missing); defaults to `main`.
        commit_message: defaults to "Upload <name> with hf-vae".
        create_pr: open a pull request (against `revision`, or `main`) instead of committing to the branch.
        token: a token with write access; defaults to huggingface_hub's (`HF_TOKEN`, then `hf auth login`).
        endpoint: the Hub URL; defaults to huggingface_hub's (`HF_ENDPOINT`, then https://huggingface.co).

    Returns:
        The `huggingface_hub.CommitInfo` (a `str` holding the commit URL, with `.oid`, `.repo_url` and `.pr_url`).

    Raises:
        ValueError: `model_dir` is not a model folder, or `repo_id` is malformed; nothing was sent.
        HubPushError: no token, a rejected token, an unreachable Hub or a failed request; no commit was made.
    """
    model_dir = Path(model_dir)
    validate_repo_id(repo_id)
    card = build_model_card(model_dir, repo_id)  # validates the folder before anything goes over the network
    files = collect_files(model_dir)
    token = token or get_token()
    if not token:
        raise HubPushError(
            f"No Hugging Face token found: pushing needs one with write access. {LOGIN_HINT} (create a token at "
            f"https://huggingface.co/settings/tokens). {NOTHING_CHANGED}"
        )
    _refuse_leaked_token(model_dir, files, str(card).encode(), token)

    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        if repo_url.repo_id != repo_id:  # a bare name was placed in the user's namespace: say so in the card
            repo_id = repo_url.repo_id
            card = build_model_card(model_dir, repo_id)
        if revision is not None and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            _operations(model_dir, files, str(card).encode()),
            commit_message=commit_message or f"Upload {repo_id.split('/')[-1]} with hf-vae",
            revision=revision,
            create_pr=create_pr,
        )
    except (HfHubHTTPError, TransportError) as error:
        raise _explain(error, api.endpoint, repo_id) from error
    logger.info("Pushed %s to %s", model_dir, commit.commit_url)
    return commit


def push_space(
    repo_id: str,
    space_id: str | None = None,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> CommitInfo:
    """Create (or update) the Gradio Space that serves model repo `repo_id`'s demo: app.py, requirements.txt and a
    README with `sdk: gradio` front matter (see `space.space_files`), in one commit. `space_id` defaults to
    `<repo_id>-demo`."""
    from .space import space_files, space_id_for

    space_id = space_id or space_id_for(repo_id)
    validate_repo_id(space_id)
    token = token or get_token()
    if not token:
        raise HubPushError(f"No Hugging Face token found: creating the demo Space needs one. {LOGIN_HINT}.")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=content)
            for name, content in space_files(repo_id).items()
        ]
        commit = api.create_commit(
            space_id, operations, repo_type="space", commit_message=f"Demo of {repo_id} with hf-vae"
        )
    except (HfHubHTTPError, TransportError) as error:
        raise _explain(error, api.endpoint, space_id) from error
    logger.info("Pushed the demo Space %s", commit.commit_url)
    return commit


def push_model(model: Any, repo_id: str, **kwargs: Any) -> CommitInfo:
    """`model.push_to_hub(repo_id, ...)` for hf-vae models: the model saved as `save_pretrained` saves it, plus the
    results and pictures of the folder it was loaded from (`model.name_or_path`, when that is a local folder holding
    them), pushed by `push_to_hub` with the generated card. Takes transformers' `push_to_hub` keywords
    (`commit_message`, `private`, `token`, `revision`, `create_pr`); the local folder is never written to."""
    unsupported = sorted(set(kwargs) - {"commit_message", "private", "token", "revision", "create_pr", "endpoint"})
    if unsupported:
        logger.warning("hf-vae's push ignores %s.", ", ".join(unsupported))
    source = Path(str(getattr(model, "name_or_path", "") or ""))
    with tempfile.TemporaryDirectory(prefix="hf-vae-push-") as folder:
        model.save_pretrained(folder, model_card=False)
        if source.is_dir() and source.resolve() != Path(folder).resolve():
            for name in RESULT_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, Path(folder) / name)
        return push_to_hub(
            folder,
            repo_id,
            private=bool(kwargs.get("private")),
            revision=kwargs.get("revision"),
            commit_message=kwargs.get("commit_message"),
            create_pr=bool(kwargs.get("create_pr")),
            token=kwargs.get("token") if isinstance(kwargs.get("token"), str) else None,
            endpoint=kwargs.get("endpoint"),
        )
