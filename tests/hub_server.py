"""A small Hugging Face Hub-compatible HTTP server for tests, built on the standard library.

The unmodified `huggingface_hub` client (and through it `transformers`) works against it when `HF_ENDPOINT` points
at `HubServer.url` (or `endpoint=` is passed to `HfApi`), with `HF_HUB_DISABLE_XET=1` so that LFS files go through
the classic LFS batch API instead of Xet storage. It keeps everything in memory and implements the part of the Hub
HTTP API the client uses to create repos, upload (regular and LFS files), commit, create branches and pull requests,
list refs / commits / trees, get repo info and resolve (download) files, with the headers and error codes the
client checks (`X-Repo-Commit`, quoted `ETag`, `X-Linked-Etag`/`X-Linked-Size`, `X-Error-Code`).

Authentication: requests may carry `Authorization: Bearer <token>`. A wrong token is a 401 on any request (as on the
Hub); writes need the accepted token and a namespace the user owns (else 403); private repos are invisible without
it. `fail_with=500` makes every request fail with that status, to test error handling.

Repo ids must have a namespace (`user/name`). Only what the tests need is implemented: no tags, no Xet, no
multipart LFS, no gated repos.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_TOKEN = "hf_localTestServerToken0123456789"
DEFAULT_USER = "test-user"

# The `.gitattributes` the Hub writes in a new repo's initial commit (abridged): files matching these go through LFS.
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz "
        "*.onnx *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar "
        "*.tflite *.tgz *.wasm *.xz *.zip *.zst *tfevents*"
    ).split()
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
REPO_TYPE_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class StoredFile:
    """A file in a commit. LFS files are stored by content like any other; only their metadata differs."""

    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob id, as the Hub reports it (for LFS files, the id of the pointer file)."""
        return _git_oid(self.pointer if self.lfs else self.data)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, StoredFile]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main", "my-branch", "refs/pr/1" -> commit oid
    num_pull_requests: int = 0

    def resolve(self, revision: str) -> Commit | None:
        oid = self.refs.get(revision, revision if _COMMIT_HASH.match(revision) else None)
        return self.commits.get(oid) if oid else None


class HubError(Exception):
    """An error answer: status, message (`X-Error-Message` and JSON `error`) and optional `X-Error-Code`."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        payload: dict | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.payload = headers or {}, payload or {}


class HubServer:
    """An in-memory Hub on 127.0.0.1. Use as a context manager, or call `start()` / `stop()`.

    Args:
        token: the one token accepted for writes and private reads (`None` accepts any token).
        user: the account the token belongs to; writes are allowed in its namespace and in `orgs`.
        fail_with: when set (e.g. 500), every request is answered with this status.
        port: 0 picks a free port.
    """

    def __init__(
        self,
        *,
        token: str | None = DEFAULT_TOKEN,
        user: str = DEFAULT_USER,
        orgs: tuple[str, ...] = (),
        fail_with: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.token, self.user, self.orgs, self.fail_with = token, user, tuple(orgs), fail_with
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lock = threading.RLock()
        self._counter = 0
        self._httpd = ThreadingHTTPServer((host, port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ------------------------------------------------------------------ state helpers (call with the lock held)
    def new_commit(self, repo: Repo, parent: Commit | None, files: dict[str, StoredFile], title: str, message: str):
        self._counter += 1
        seed = f"{repo.repo_id}\0{parent.oid if parent else ''}\0{title}\0{time.time_ns()}\0{self._counter}"
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, files, title, message, _now())
        repo.commits[oid] = commit
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        repo = Repo(repo_type, repo_id, private, _now())
        attributes = StoredFile(DEFAULT_GITATTRIBUTES.encode(), lfs=False)
        repo.refs["main"] = self.new_commit(repo, None, {".gitattributes": attributes}, "initial commit", "").oid
        self.repos[(repo_type, repo_id)] = repo
        return repo


@contextmanager
def run_hub_server(**kwargs) -> Iterator[HubServer]:
    """Start a `HubServer` (same arguments) for the duration of a `with` block."""
    with HubServer(**kwargs) as server:
        yield server


def subprocess_env(endpoint: str, token: str | None, hf_home: str | os.PathLike) -> dict[str, str]:
    """The environment of a child process that talks to the server at `endpoint`.

    huggingface_hub reads these variables when it is imported, which is why Hub-facing code under test runs in a
    child process: the current environment minus any HF_* / Hub settings, plus the endpoint, the token (none if
    `None`), a private `HF_HOME` (cache, stored token, remote-code modules) and classic LFS uploads.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGING_FACE_")) and key not in ("TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")
    }
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
    )
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _lfs_patterns(commit: Commit) -> list[str]:
    attributes = commit.files.get(".gitattributes")
    if attributes is None:
        return []
    lines = (line.split() for line in attributes.data.decode(errors="replace").splitlines())
    return [parts[0] for parts in lines if len(parts) > 1 and "filter=lfs" in parts[1:]]


def _goes_to_lfs(commit: Commit, path: str, size: int, sample: bytes) -> bool:
    """The Hub's rule: LFS for large or binary files and for paths `.gitattributes` sends to LFS."""
    if size >= LFS_SIZE_THRESHOLD or b"\0" in sample:
        return True
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(path, p) or ("/" not in p and fnmatch.fnmatch(name, p)) for p in _lfs_patterns(commit))


def _front_matter(text: str) -> dict | None:
    match = re.match(r"^\s*---[\r\n]+(.*?)[\r\n]+---", text, re.DOTALL)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    if data is not None and not isinstance(data, dict):
        raise ValueError("The metadata block of README.md must be a mapping.")
    return data or {}


def _check_model_index(model_index: object) -> None:
    """The fields the Hub requires in a `model-index` entry."""
    if not isinstance(model_index, list):
        raise ValueError("`model-index` must be a list.")
    for entry in model_index:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError("Each `model-index` entry needs a `name`.")
        for result in entry.get("results", []):
            task, dataset = result.get("task", {}), result.get("dataset", {})
            if not isinstance(task.get("type"), str):
                raise ValueError("Each `model-index` result needs `task.type`.")
            if not isinstance(dataset.get("type"), str) or not isinstance(dataset.get("name"), str):
                raise ValueError("Each `model-index` result needs `dataset.type` and `dataset.name`.")
            metrics = result.get("metrics")
            if not isinstance(metrics, list) or not metrics:
                raise ValueError("Each `model-index` result needs a non-empty `metrics` list.")
            for metric in metrics:
                if not isinstance(metric.get("type"), str) or "value" not in metric:
                    raise ValueError("Each metric needs a `type` and a `value`.")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub: every answer carries a Content-Length
    server_version = "LocalHub/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:
        if os.environ.get("HUB_SERVER_DEBUG"):
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing
    def _read_body(self) -> bytes:
        """Read the whole body before answering: an unread body would corrupt the next answer on the connection."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(status)
        headers = {"Content-Type": "application/json", **(headers or {})}
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head and body:
            self.wfile.write(body)

    def _json(self, payload: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _base_url(self) -> str:
        return f"http://{self.headers.get('Host') or self.hub.url.removeprefix('http://')}"

    def _repo_url(self, repo: Repo) -> str:
        return f"{self._base_url()}/{REPO_TYPE_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        url = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        try:
            authenticated = self._authenticate()
            if self.hub.fail_with is not None:
                raise HubError(
                    self.hub.fail_with, "Internal Error - We're working hard to fix this as soon as possible!"
                )
            self._route(method, [unquote(part) for part in url.path.split("/")[1:]], query, body, authenticated)
        except HubError as error:
            headers = {"X-Error-Message": error.message, **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            payload = json.dumps({"error": error.message, **error.payload}).encode()
            self._send(error.status, payload, headers, head=method == "HEAD")
        except (ValueError, KeyError, TypeError, AttributeError) as error:  # a malformed request body or field
            message = f"Bad request: {type(error).__name__}: {error}"
            self._send(
                400, json.dumps({"error": message}).encode(), {"X-Error-Message": message}, head=method == "HEAD"
            )

    def _authenticate(self) -> bool:
        authorization = self.headers.get("Authorization")
        if authorization is None:
            return False
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or (self.hub.token is not None and token != self.hub.token):
            raise HubError(401, "Invalid credentials in Authorization header")
        return True

    def _route(self, method: str, parts: list[str], query: dict[str, str], body: bytes, authenticated: bool) -> None:
        if parts[:2] == ["api", "repos"] and len(parts) == 3:
            if method == "POST" and parts[2] == "create":
                return self._create_repo(json.loads(body or b"{}"), authenticated)
            if method == "DELETE" and parts[2] == "delete":
                return self._delete_repo(json.loads(body or b"{}"), authenticated)
        if parts == ["api", "whoami-v2"] and method == "GET":
            return self._whoami(authenticated)
        if parts == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in API_REPO_TYPES:
            repo_type, repo_id, rest = API_REPO_TYPES[parts[1]], f"{parts[2]}/{parts[3]}", parts[4:]
            return self._repo_api(method, repo_type, repo_id, rest, query, body, authenticated)
        if parts[:1] == ["__lfs__"] and len(parts) == 2 and method == "PUT":
            return self._lfs_put(parts[1], body)
        repo_type = "model"
        if parts and parts[0] in API_REPO_TYPES and parts[0] != "models":
            repo_type, parts = API_REPO_TYPES[parts[0]], parts[1:]
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            repo_id = f"{parts[0]}/{parts[1].removesuffix('.git')}"
            return self._lfs_batch(repo_type, repo_id, json.loads(body or b"{}"), authenticated)
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo_id, path = f"{parts[0]}/{parts[1]}", "/".join(parts[4:])
            return self._resolve(method, repo_type, repo_id, parts[3], path, authenticated)
        raise HubError(404, f"Not implemented by the local test Hub: {method} {'/'.join(parts)}")

    def _repo_api(self, method, repo_type, repo_id, rest, query, body, authenticated) -> None:
        write = method != "GET"
        repo = self._repo(repo_type, repo_id, authenticated, write=write)
        action = rest[0] if rest else None
        if method == "GET" and action is None:
            return self._repo_info(repo, "main", query)
        if method == "GET" and action == "revision" and len(rest) >= 2:
            return self._repo_info(repo, "/".join(rest[1:]), query)
        if method == "GET" and action == "refs":
            return self._refs(repo, query)
        if method == "GET" and action == "commits" and len(rest) >= 2:
            return self._commits(repo, "/".join(rest[1:]))
        if method == "GET" and action == "tree" and len(rest) >= 2:
            return self._tree(repo, rest[1], "/".join(rest[2:]), query.get("recursive", "").lower() == "true")
        if method == "POST" and action == "paths-info" and len(rest) == 2:
            form = parse_qs(body.decode())
            return self._paths_info(repo, rest[1], form.get("paths", []))
        if method == "POST" and action == "preupload" and len(rest) == 2:
            return self._preupload(repo, rest[1], json.loads(body or b"{}"))
        if method == "POST" and action == "commit" and len(rest) == 2:
            return self._commit(repo, rest[1], body, create_pr=query.get("create_pr") == "1")
        if action == "branch" and len(rest) >= 2 and method in ("POST", "DELETE"):
            return self._branch(repo, method, "/".join(rest[1:]), json.loads(body or b"{}"))
        raise HubError(404, f"Not implemented by the local test Hub: {method} {repo_id}/{'/'.join(rest)}")

    # ------------------------------------------------------------------ access
    def _check_namespace(self, namespace: str, authenticated: bool) -> None:
        if not authenticated:
            raise HubError(401, "Invalid username or password.")
        if namespace not in (self.hub.user, *self.hub.orgs):
            raise HubError(403, f'You don\'t have the rights to write in the namespace "{namespace}"')

    def _repo(self, repo_type: str, repo_id: str, authenticated: bool, write: bool = False) -> Repo:
        with self.hub.lock:
            repo = self.hub.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and not authenticated):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write:
            self._check_namespace(repo_id.split("/")[0], authenticated)
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # ------------------------------------------------------------------ endpoints
    def _create_repo(self, payload: dict, authenticated: bool) -> None:
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.hub.user
        repo_id = f"{namespace}/{payload.get('name')}"
        self._check_namespace(namespace, authenticated)
        url = f"{self._base_url()}/{REPO_TYPE_PREFIXES.get(repo_type, '')}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                raise HubError(409, f"You already created this {repo_type} repo", payload={"url": url})
            self.hub.create_repo(repo_type, repo_id, private=payload.get("visibility") == "private")
        self._json({"url": url, "name": repo_id})

    def _delete_repo(self, payload: dict, authenticated: bool) -> None:
        repo_type = payload.get("type") or "model"
        namespace = payload.get("organization") or self.hub.user
        self._check_namespace(namespace, authenticated)
        with self.hub.lock:
            if self.hub.repos.pop((repo_type, f"{namespace}/{payload.get('name')}"), None) is None:
                raise HubError(404, "Repository not found", "RepoNotFound")
        self._json({})

    def _whoami(self, authenticated: bool) -> None:
        if not authenticated:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"name": org, "type": "org"} for org in self.hub.orgs]
        token_info = {"type": "access_token", "accessToken": {"displayName": "local-test", "role": "write"}}
        self._json({"type": "user", "name": self.hub.user, "fullname": self.hub.user, "orgs": orgs, "auth": token_info})

    def _validate_yaml(self, payload: dict) -> None:
        try:
            metadata = _front_matter(payload.get("content", "")) or {}
            if "model-index" in metadata:
                _check_model_index(metadata["model-index"])
        except (ValueError, yaml.YAMLError, AttributeError) as error:
            self._json({"errors": [{"message": str(error)}], "warnings": []}, status=400)
            return
        self._json({"errors": [], "warnings": []})

    def _file_entry(self, path: str, stored: StoredFile) -> dict:
        entry = {"type": "file", "oid": stored.oid, "size": len(stored.data), "path": path}
        if stored.lfs:
            entry["lfs"] = {"oid": stored.sha256, "size": len(stored.data), "pointerSize": len(stored.pointer)}
        return entry

    def _repo_info(self, repo: Repo, revision: str, query: dict[str, str]) -> None:
        with self.hub.lock:
            commit = self._commit_at(repo, revision)
        siblings = []
        for path, stored in sorted(commit.files.items()):
            sibling: dict = {"rfilename": path}
            if query.get("blobs", "").lower() == "true":
                sibling.update(size=len(stored.data), blobId=stored.oid)
                if stored.lfs:
                    sibling["lfs"] = {
                        "size": len(stored.data),
                        "sha256": stored.sha256,
                        "pointerSize": len(stored.pointer),
                    }
            siblings.append(sibling)
        card = None
        if "README.md" in commit.files:
            try:
                card = _front_matter(commit.files["README.md"].data.decode())
            except (ValueError, yaml.YAMLError, UnicodeDecodeError):
                card = None
        card = card or {}
        self._json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "library_name": card.get("library_name"),
                "pipeline_tag": card.get("pipeline_tag"),
                "tags": list(card.get("tags") or []),
                "cardData": card or None,
                "siblings": siblings,
                "spaces": [],
            }
        )

    def _refs(self, repo: Repo, query: dict[str, str]) -> None:
        with self.hub.lock:
            refs = dict(repo.refs)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in refs.items()
            if not name.startswith("refs/")
        ]
        payload: dict = {"branches": branches, "converts": [], "tags": []}
        if query.get("include_prs") == "1":
            payload["pullRequests"] = [
                {"name": name, "ref": name, "targetCommit": oid}
                for name, oid in refs.items()
                if name.startswith("refs/pr/")
            ]
        self._json(payload)

    def _commits(self, repo: Repo, revision: str) -> None:
        with self.hub.lock:
            commit: Commit | None = self._commit_at(repo, revision)
            history = []
            while commit is not None:
                history.append(
                    {
                        "id": commit.oid,
                        "title": commit.title,
                        "message": commit.message,
                        "authors": [{"user": self.hub.user}],
                        "date": commit.date,
                    }
                )
                commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(history)

    def _tree(self, repo: Repo, revision: str, path: str, recursive: bool) -> None:
        with self.hub.lock:
            files = self._commit_at(repo, revision).files
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: dict[str, dict] = {}
        for file_path, stored in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "oid": _git_oid(folder.encode()), "size": 0})
                    entries[folder]["path"] = folder
            if recursive or len(parts) == 1:
                entries[file_path] = self._file_entry(file_path, stored)
        if prefix and not entries:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        self._json(list(entries.values()))

    def _paths_info(self, repo: Repo, revision: str, paths: list[str]) -> None:
        with self.hub.lock:
            files = self._commit_at(repo, revision).files
        infos = []
        for path in paths:
            path = path.strip("/")
            if path in files:
                infos.append(self._file_entry(path, files[path]))
            elif any(name.startswith(f"{path}/") for name in files):
                infos.append({"type": "directory", "oid": _git_oid(path.encode()), "size": 0, "path": path})
        self._json(infos)

    def _preupload(self, repo: Repo, revision: str, payload: dict) -> None:
        with self.hub.lock:
            commit = self._commit_at(repo, revision)
        answers = []
        for item in payload.get("files", []):
            path, sample = item["path"], base64.b64decode(item.get("sample", ""))
            existing = commit.files.get(path)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if _goes_to_lfs(commit, path, int(item.get("size", 0)), sample) else "regular",
                    "shouldIgnore": False,
                    "oid": (existing.sha256 if existing.lfs else existing.oid) if existing else None,
                }
            )
        self._json({"files": answers, "commitOid": commit.oid})

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> None:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line.")
        header = lines[0]["value"]
        with self.hub.lock:
            base = self._commit_at(repo, revision)
            if header.get("parentCommit") and header["parentCommit"] != base.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(base.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "").strip("/")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"Unsupported encoding for {path}: {value.get('encoding')}")
                    files[path] = StoredFile(base64.b64decode(value["content"]), lfs=False)
                elif key == "lfsFile":
                    data = self.hub.lfs_objects.get(value.get("oid", ""))
                    if data is None:
                        raise HubError(
                            422,
                            f"Your push was rejected: the LFS pointer of {path} points to a file that does not exist",
                        )
                    files[path] = StoredFile(data, lfs=True)
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                elif key == "deletedFolder":
                    files = {name: f for name, f in files.items() if not name.startswith(f"{path}/")}
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}.")
            commit = self.hub.new_commit(repo, base, files, header.get("summary", ""), header.get("description", ""))
            pr_url = None
            if create_pr:
                repo.num_pull_requests += 1
                ref = f"refs/pr/{repo.num_pull_requests}"
                pr_url = f"{self._repo_url(repo)}/discussions/{repo.num_pull_requests}"
            elif revision in repo.refs:
                ref = revision
            else:
                raise HubError(400, f"Cannot commit to {revision}: it is not a branch.")
            repo.refs[ref] = commit.oid
        commit_url = f"{self._repo_url(repo)}/commit/{commit.oid}"
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": commit_url, "pullRequestUrl": pr_url})

    def _branch(self, repo: Repo, method: str, branch: str, payload: dict) -> None:
        with self.hub.lock:
            if method == "DELETE":
                if repo.refs.pop(branch, None) is None:
                    raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            else:
                if branch in repo.refs:
                    raise HubError(409, "Reference already exists")
                repo.refs[branch] = self._commit_at(repo, payload.get("startingPoint") or "main").oid
        self._json({})

    def _lfs_batch(self, repo_type: str, repo_id: str, payload: dict, authenticated: bool) -> None:
        self._repo(repo_type, repo_id, authenticated, write=True)
        if payload.get("operation") != "upload":
            raise HubError(400, "The local test Hub only implements LFS uploads.")
        objects = []
        for item in payload.get("objects", []):
            answer = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in self.hub.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self._base_url()}/__lfs__/{item['oid']}", "expires_in": 900}}
            objects.append(answer)
        body = json.dumps({"transfer": "basic", "objects": objects}).encode()
        self._send(200, body, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, "The uploaded content does not match its sha256.")
        with self.hub.lock:
            self.hub.lfs_objects[oid] = body
        self._send(200, b"", {"Content-Type": "text/plain"})

    def _resolve(self, method: str, repo_type: str, repo_id: str, revision: str, path: str, authenticated: bool):
        with self.hub.lock:
            repo = self._repo(repo_type, repo_id, authenticated)
            commit = self._commit_at(repo, revision)
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit.oid,
            "ETag": f'"{stored.etag}"',
            "Accept-Ranges": "bytes",
        }
        if stored.lfs:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(len(stored.data))})
        data, status = stored.data, 200
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        headers["Content-Length"] = str(len(data))
        self._send(status, data, headers, head=method == "HEAD")
