"""SIGTERM at any moment: the training loop polls a flag, and a watchdog covers the moments it cannot poll.

Python runs a signal handler only when the main thread is between bytecodes, so during an XLA compile, a
long device step, a download or a blocking wait the handler does not even run. signal.set_wakeup_fd makes
the C-level handler write the signal number to a pipe anyway: the watchdog thread reading it sets the flag
at once and, if the main thread has not taken over the stop within `grace_s` while nothing needs saving
(`can_exit_now()`: no step trained since the last checkpoint, no save in flight), prints the exit line and
ends the process with status 0. When something does need saving, the loop saves it at its next poll, which
comes between train steps and between evaluation batches.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from nanoloop_jax import log

logger = log.get(__name__)

NOTHING_TRAINED = "SIGTERM: no step trained yet, nothing to save; exiting cleanly"
GRACE_S = 2.0  # how long the main thread gets to take over a stop before the watchdog may end the process


class Preemption:
    """Installed for the life of a run (`install()` ... `close()`, from the main thread)."""

    def __init__(self, grace_s: float = GRACE_S) -> None:
        # until a Trainer `watch`es: nothing is trained yet, so the watchdog may always end the process
        self.can_exit_now: Callable[[], bool] = lambda: True
        self.exit_line: Callable[[], str] = lambda: NOTHING_TRAINED
        self.grace_s = grace_s
        self.requested = False  # a SIGTERM arrived
        self.taken = False  # the main thread is handling it (the watchdog then stays out of the way)
        self._thread: threading.Thread | None = None

    def watch(self, can_exit_now: Callable[[], bool], exit_line: Callable[[], str]) -> None:
        """From now on ask the training loop whether exiting loses work, and what to say."""
        self.can_exit_now, self.exit_line = can_exit_now, exit_line

    def install(self) -> Preemption:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals can only be caught on the main thread; run unprotected (e.g. in a notebook thread)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # the C handler must never block
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._closing = False
        self._thread = threading.Thread(target=self._watch, name="sigterm-watchdog", daemon=True)
        self._thread.start()
        return self

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def take(self) -> None:
        """The main thread has seen the request and will save (if needed) and exit itself."""
        self.taken = True

    def _watch(self) -> None:
        while True:
            data = os.read(self._read_fd, 64)
            if self._closing or not data:
                return
            if signal.SIGTERM not in data:
                continue  # another signal with a Python handler (e.g. SIGINT): not ours
            self.requested = True
            deadline = time.monotonic() + self.grace_s
            while time.monotonic() < deadline and not (self.taken or self._closing):
                time.sleep(0.05)
            while not (self.taken or self._closing):
                if self.can_exit_now() and not self.taken:
                    logger.info(self.exit_line())
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(0)
                time.sleep(0.1)  # something to save: the loop's next poll will do it

    def close(self) -> None:
        if self._thread is None:
            return
        self._closing = True
        signal.signal(signal.SIGTERM, self._previous_handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.write(self._write_fd, b"\0")  # wake the watchdog so it can see _closing
        self._thread.join(timeout=5)
        os.close(self._read_fd)
        os.close(self._write_fd)
        self._thread = None
