"""Test set-up: 8 fake CPU devices (for sharding tests) before JAX is imported."""

import os
import pathlib
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache per test run, shared by the xdist workers and the train.py/sample.py processes the
# tests start (they inherit the environment): the many runs of the same tiny model compile it once. Fresh per
# run (the run's id names it), so nothing carries over between runs; removed when the run ends.
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
XLA_CACHE = pathlib.Path(tempfile.gettempdir()) / f"nanoloop-jax-tests-xla-cache-{RUN_ID}"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(XLA_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
# tiktoken's GPT-2 files (vocab.bpe and encoder.json under the names tiktoken caches them by, 1.5 MB): the
# GPT-2 BPE tests run offline, in CI too, and tiktoken never reaches for the network
os.environ["TIKTOKEN_CACHE_DIR"] = str(pathlib.Path(__file__).resolve().parent / "fixtures" / "tiktoken_cache")

import pytest  # noqa: E402

from nanoloop_jax import cpu_defaults  # noqa: E402

cpu_defaults.apply()  # as the entry points do on CPU: the suite runs the same CPU settings they measure

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture
def shakespeare_text() -> str:
    """The first 60k characters of tiny-shakespeare: from ../shared if present, else the test copy."""
    shared = SHARED / "data" / "tinyshakespeare.txt"
    local = REPO_ROOT / "tests" / "fixtures" / "tinyshakespeare_head.txt"
    path = shared if shared.exists() else local
    return path.read_text()[:60_000]


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controlling process (or a run without xdist)
        shutil.rmtree(XLA_CACHE, ignore_errors=True)
