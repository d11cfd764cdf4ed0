"""Process-wide settings that make JAX's CPU backend fast; train.py, sample.py and bench.py apply them on CPU.

XLA:CPU allocates the temporaries of every executed step afresh (45 MB for the shakespeare_char CPU
config, 1.9 GB for the 384-wide looped one) and frees them when the step ends. With glibc's defaults
those blocks come from mmap (or are trimmed off the heap top) and go back to the kernel on free, so
every step page-faults and zero-fills all of its working memory again: 20-30% of the step's CPU time
(measured with perf, see BENCHMARKS.md). Two changes keep that memory in the process:

- glibc malloc: never serve allocations with mmap and never trim the heap (M_MMAP_MAX=0,
  M_TRIM_THRESHOLD=-1). The process keeps its peak heap; a training process does anyway.
- jax_cpu_enable_async_dispatch=False: a CPU step then runs on the calling (main) thread, whose
  malloc arena can grow without limit; async dispatch runs it on a worker thread, whose arena cannot
  hold blocks over 64 MB and falls back to mmap for them whatever M_MMAP_MAX says. On a CPU the
  Python thread has nothing to overlap with the step anyway (both share the same cores).

Measured on 2 cores: -25% CPU time per train step for the small config, -15% for the 384-wide one.
Set NANOLOOP_CPU_DEFAULTS=0 to leave both alone (e.g. with jemalloc/tcmalloc preloaded).

Importing nanoloop_jax changes nothing: a GPU or TPU process (or a library user) keeps glibc's and JAX's
defaults. The entry points call apply_if_cpu() before JAX creates its backends, because the dispatch
setting is read when the CPU client is created.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys

import jax

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
M_MMAP_MAX = -4
ENV_SWITCH = "NANOLOOP_CPU_DEFAULTS"


def tune_glibc_malloc() -> bool:
    """Keep freed memory in the heap (no mmap, no trim); False where libc is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


def apply() -> dict[str, bool]:
    """Apply the settings unless NANOLOOP_CPU_DEFAULTS=0; returns what was applied."""
    global APPLIED
    if os.environ.get(ENV_SWITCH, "1") == "0":
        APPLIED = {"malloc": False, "sync_cpu_dispatch": False}
    else:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
        APPLIED = {"malloc": tune_glibc_malloc(), "sync_cpu_dispatch": True}
    return APPLIED


def accelerator_plugin_installed() -> bool:
    """Whether JAX will find a GPU/TPU plugin (libtpu, jax_plugins entry points or modules); imports none."""
    if importlib.util.find_spec("libtpu") is not None or os.environ.get("TPU_LIBRARY_PATH"):
        return True
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    spec = importlib.util.find_spec("jax_plugins")
    return spec is not None and any(pkgutil.iter_modules(spec.submodule_search_locations or []))


def will_run_on_cpu() -> bool:
    """Whether JAX's default backend is, or will be, the CPU; creates no backend if none exists yet."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return jax.default_backend() == "cpu"
    platforms = jax.config.jax_platforms
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    return not accelerator_plugin_installed()


def apply_if_cpu() -> dict[str, bool] | None:
    """apply() when this process runs on the CPU (call before the first JAX computation); None otherwise."""
    return apply() if will_run_on_cpu() else None


APPLIED: dict[str, bool] | None = None  # what apply() set, once called
