"""The depth sweep writes a CSV whose losses equal direct evaluation at those depths, and a plot."""

import csv
import sys

import numpy as np
from helpers import run, tiny_checkpoint, tiny_data_dir

from nanoloop_jax.data.batches import EVAL_SEED_OFFSET, BatchSampler
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.train.steps import cross_entropy


def test_sweep_csv_equals_direct_evaluation(tmp_path):
    data_dir = tiny_data_dir(tmp_path)
    config, params, out = tiny_checkpoint(tmp_path)
    res = run(
        [
            sys.executable,
            "-m",
            "nanoloop_jax.tools.depth_sweep",
            f"--out_dir={out}",
            f"--data_dir={data_dir}",
            "--n_loops=1,3,6",
            "--eval_iters=2",
            "--batch_size=4",
        ]
    )
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(out / "depth_sweep.csv")))
    assert [int(r["n_loop"]) for r in rows] == [1, 3, 6]
    sampler = BatchSampler(data_dir, "val", 4, 32, seed=1337 + EVAL_SEED_OFFSET)
    for row in rows:
        n = int(row["n_loop"])
        losses = []
        for i in range(2):
            x, y = sampler.get(i)
            losses.append(cross_entropy(LoopedGPT(config).apply({"params": params}, x, n_loop=n), y))
        np.testing.assert_allclose(float(row["val_loss"]), float(np.mean(losses)), rtol=1e-5)
        assert float(row["tokens_per_s"]) > 0
    assert len({r["val_loss"] for r in rows}) == 3  # depth really changes the model
    assert (out / "depth_sweep.png").stat().st_size > 1000
    assert "n_loop  val loss" in res.stdout


def test_sweep_bad_flags_one_line(tmp_path):
    res = run([sys.executable, "-m", "nanoloop_jax.tools.depth_sweep", f"--out_dir={tmp_path}", "--n_loops=0,2"])
    assert res.returncode == 1 and "--n_loops must be positive integers" in res.stderr
    res = run([sys.executable, "-m", "nanoloop_jax.tools.depth_sweep", f"--out_dir={tmp_path}"])
    assert res.returncode == 1 and "no checkpoint in" in res.stderr and "Traceback" not in res.stderr


def test_ckpt_flag_help_says_no_torch_is_needed():
    from absl import flags

    from nanoloop_jax.tools import depth_sweep

    fv = flags.FlagValues()
    depth_sweep.define_flags(fv)
    assert "torch] extra" not in fv["ckpt"].help and "without PyTorch" in fv["ckpt"].help
