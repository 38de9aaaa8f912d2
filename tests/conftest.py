"""Shared test fixtures.

Hub-facing tests never reach huggingface.co: they run against the local Hub-compatible server of
`tests/hub_server.py`, with the unmodified huggingface_hub client.

- `hub_server` (session): the server's endpoint URL, e.g. "http://127.0.0.1:41234". Repos live in memory for the
  whole session, so give each test its own repo name (`hub_repo_id`).
- `hub_token`: the token the server accepts for writes (any other token gets a 401).
- `hub_repo_id`: a fresh "test-user/<name>" repo id, in the namespace that token may write to.
- `hub_env`: the environment for a subprocess that uses the server (`HF_ENDPOINT`, `HF_TOKEN`, an empty `HF_HOME`
  under `tmp_path`, `HF_HUB_DISABLE_XET=1`), e.g.
  `subprocess.run([sys.executable, "-c", "from hf_vae import VAEModel; VAEModel.from_pretrained(...)"], env=hub_env)`.

huggingface_hub reads `HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_HUB_DISABLE_XET` once, at import: code that relies on
them (transformers' `from_pretrained`, `hf-vae` commands) must run in a subprocess with `hub_env`. In this process,
pass the endpoint explicitly (`HfApi(endpoint=hub_server)`, `hf_hub_download(..., endpoint=hub_server)`). For other
server behaviours (500 errors, another token) start your own: `with run_hub_server(fail_with=500) as server: ...`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

# Before anything imports huggingface_hub, which reads these once. The local server speaks classic LFS, not Xet.
# The whole session gets an empty HF_HOME: a token stored on the runner by `hf auth login`, or a Hub cache left by
# another run, must not change what a test sees.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
_SESSION_HF_HOME = tempfile.mkdtemp(prefix="hf-vae-tests-hf-home-")
os.environ["HF_HOME"] = _SESSION_HF_HOME
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HUGGING_FACE_HUB_TOKEN", None)

import pytest  # noqa: E402
import torch  # noqa: E402
from hub_server import DEFAULT_TOKEN, DEFAULT_USER, run_hub_server, subprocess_env  # noqa: E402

# The real MNIST, laid out like the Hub repo ylecun/mnist, beside the repository. Tests that need it take the
# `mnist_dir` fixture. CI sets HF_VAE_REQUIRE_REAL_DATA=1, which turns a missing copy into a failure: a real-data test
# that skips silently would let a broken package pass.
MNIST = Path(__file__).resolve().parents[2] / "shared" / "mnist"
REQUIRE_REAL_DATA_ENV = "HF_VAE_REQUIRE_REAL_DATA"


if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n N` the workers already fill the cores: a worker's torch (and each subprocess it starts) on more
    # than one thread would oversubscribe them, and threads that spin-wait for each other then crawl.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# The longest test files, started first: under `pytest -n 2 --dist loadfile` a long file left to the end runs alone on
# one core while the other idles.
FIRST = ("test_readme.py", "test_readme_others.py", "test_training.py", "test_hub.py", "test_demo_browser.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: position for position, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FIRST)))  # stable: the order within a file is kept


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_HF_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same global torch RNG state, so model weights built without an explicit seed (and
    any Monte Carlo tolerance checked on them) do not depend on which tests ran before."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST folder; skips without it, or fails when HF_VAE_REQUIRE_REAL_DATA=1 (as in CI)."""
    if not MNIST.is_dir():
        message = f"real MNIST not found at {MNIST}"
        if os.environ.get(REQUIRE_REAL_DATA_ENV) == "1":
            pytest.fail(f"{message}, and {REQUIRE_REAL_DATA_ENV}=1 requires the real-data tests to run.")
        pytest.skip(message)
    return MNIST


@pytest.fixture(scope="session")
def hub_server():
    """Endpoint URL of a local Hub-compatible server, for the whole test session."""
    with run_hub_server(token=DEFAULT_TOKEN, user=DEFAULT_USER) as server:
        yield server.url


@pytest.fixture(scope="session")
def hub_token() -> str:
    """The write token `hub_server` accepts."""
    return DEFAULT_TOKEN


@pytest.fixture
def hub_repo_id() -> str:
    """A repo id no other test uses, in the namespace `hub_token` may write to."""
    return f"{DEFAULT_USER}/repo-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def hub_env(hub_server, hub_token, tmp_path) -> dict[str, str]:
    """Environment for a subprocess that talks to `hub_server`, with an empty `HF_HOME` of its own."""
    return subprocess_env(hub_server, hub_token, tmp_path / "hf_home")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train faster on one thread than on two that synchronise on a busy 2-core machine. Use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
