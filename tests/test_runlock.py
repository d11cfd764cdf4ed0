"""One run per out_dir: a second one stops in one line naming the holder; a killed holder leaves no lock."""

import os
import signal
import socket
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

from nanoloop_jax.train import runlock


def test_a_second_run_on_the_same_out_dir_is_refused_naming_the_holder(tmp_path):
    held = runlock.lock_run(str(tmp_path))
    with pytest.raises(runlock.RunLockError) as err:
        runlock.lock_run(str(tmp_path))
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path} is in use by another train.py run (pid {os.getpid()} on host ")
    assert socket.gethostname() in msg and "use another out_dir" in msg and "\n" not in msg
    held.close()  # the run ended: the directory is free again
    runlock.lock_run(str(tmp_path)).close()
    assert runlock.lock_run("gs://bucket/run") is None  # no file locks in a bucket


def test_a_killed_run_does_not_leave_its_out_dir_locked(tmp_path):
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[2]); from nanoloop_jax.train import runlock; "
        "lock = runlock.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path), str(REPO_ROOT)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(runlock.RunLockError, match=f"pid {proc.pid} on host"):
            runlock.acquire(str(tmp_path))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    runlock.acquire(str(tmp_path)).close()
