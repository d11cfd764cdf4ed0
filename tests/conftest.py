"""Test set-up: 8 fake CPU devices (for sharding tests) before JAX is imported."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
