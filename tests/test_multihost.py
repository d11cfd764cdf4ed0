"""Two processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo) through train.py == one process x 8 devices."""

import os
import signal
import socket
import subprocess

import numpy as np
import pytest
from helpers import REPO_ROOT, run, tiny_data_dir, tiny_overrides, train_cmd, train_losses, wait_for

from nanoloop_jax.ckpt import checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(n_devices: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    return env


def _launch_pair(data_dir, out_dir, **extra):
    port = _free_port()
    procs = []
    for pid in range(2):
        flags = tiny_overrides(
            data_dir,
            out_dir,
            **{
                "distributed.coordinator_address": f"127.0.0.1:{port}",
                "distributed.num_processes": 2,
                "distributed.process_id": pid,
                **extra,
            },
        )
        procs.append(
            subprocess.Popen(
                train_cmd("configs/shakespeare_char_looped.py", *flags),
                cwd=REPO_ROOT,
                env=_env(4),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume_after_kill(tmp_path):
    """One lineage covers both: steps 0-3 of the pair (then killed) and 4-7 of the resumed pair == one process."""
    data_dir = tiny_data_dir(tmp_path)
    single = tmp_path / "single"
    res = run(train_cmd("configs/shakespeare_char_looped.py", *tiny_overrides(data_dir, single)), env=_env(8))
    assert res.returncode == 0, res.stderr
    want = train_losses(single)
    assert sorted(want) == list(range(8))

    # kill both processes once the step-4 checkpoint is complete (max_iters 2000 keeps them busy; the schedule
    # is the single run's: warmup 2, decay over 8), then resume the pair to max_iters 8
    pair = tmp_path / "pair"
    procs = _launch_pair(data_dir, pair, **{"train.max_iters": 2000, "opt.lr_decay_iters": 8})
    wait_for(lambda: checkpoint.latest_step(str(pair)) == 4, proc=procs[0])
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    procs = _launch_pair(data_dir, pair)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert "2 processes" in outs[0][0] and "iter 4:" in outs[0][0]
    assert "iter 4:" not in outs[1][0]  # only process 0 prints
    got = train_losses(pair)  # steps 0-3 from the killed pair, 4-7 from the resumed one (last record wins)
    assert sorted(got) == list(range(8))
    np.testing.assert_allclose([got[s] for s in range(8)], [want[s] for s in range(8)], rtol=1e-5)
