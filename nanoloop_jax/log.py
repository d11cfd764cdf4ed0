"""One logging path: every module logs to `logging.getLogger(__name__)` under the `nanoloop_jax` logger, which
prints plain lines (INFO to stdout, WARNING and above to stderr) on process 0 only, so a pod's log reads like
one host's. Metrics go to train/metrics.py's MetricsLogger, not here.

The handler is installed when this module is imported (the package's entry points and tools import it through
the modules that log); `quiet_libraries()` silences orbax's and absl's INFO chatter (~50 lines per checkpoint).
"""

from __future__ import annotations

import logging
import sys

import jax

LOGGER_NAME = "nanoloop_jax"


class _PlainHandler(logging.Handler):
    """The message alone, to the sys.stdout / sys.stderr of the moment (so pytest's capture sees it)."""

    def emit(self, record: logging.LogRecord) -> None:
        if jax.distributed.is_initialized() and jax.process_index() != 0:
            return
        stream = sys.stdout if record.levelno < logging.WARNING else sys.stderr
        print(self.format(record), file=stream, flush=True)


def _install() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _PlainHandler) for h in logger.handlers):
        logger.addHandler(_PlainHandler())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # absl's root handler would print each line a second time, prefixed
    return logger


_install()


def get(name: str) -> logging.Logger:
    """The logger of module `name` (its __name__), under the package's handler."""
    return logging.getLogger(name)


def quiet_libraries() -> None:
    """Only warnings from absl and orbax (orbax logs every file it reads or writes at INFO)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)
    for name in ("orbax", "orbax.checkpoint", "jax._src.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
