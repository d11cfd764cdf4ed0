"""One training run per out_dir: a second train.py on the same directory stops in one line naming the holder.

The lock belongs to the run: process 0 takes an exclusive `flock` on OUT_DIR/.lock and writes its pid and host
into it; the other processes of a multi-host run only learn whether it got it. The kernel drops the lock when
the process ends in any way (exit, crash, kill -9), so a dead run never leaves the directory locked; the file
itself stays and is reused. An out_dir in a bucket (gs://...) has no file locks and is not locked.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from typing import IO

import jax

from nanoloop_jax.errors import UserError
from nanoloop_jax.train.state import all_processes

LOCK_FILE = ".lock"


class RunLockError(UserError):
    """Another run holds the out_dir."""


def acquire(out_dir: str) -> IO | None:
    """Lock out_dir for this process: the open lock file (the lock lasts while it is open), or None for a
    bucket path; RunLockError naming the holder if another process has it."""
    if "://" in out_dir:
        return None
    path = os.path.join(out_dir, LOCK_FILE)
    f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = f.read().strip() or "a process that has not written its name yet"
        f.close()
        raise RunLockError(
            f"{out_dir} is in use by another train.py run ({holder}); wait for it to end, or use another out_dir"
        ) from None
    since = datetime.datetime.now().isoformat(timespec="seconds")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {since}\n")
    f.flush()
    return f


def lock_run(out_dir: str) -> IO | None:
    """Process 0 locks out_dir for the run (keep the returned file open while it runs); every process raises
    RunLockError if it could not."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = acquire(out_dir)
        except RunLockError as err:
            error = err
    if not all_processes(error is None):  # process 0's answer, told to every process
        raise error or RunLockError(f"{out_dir} is in use by another train.py run (process 0 could not lock it)")
    return lock
