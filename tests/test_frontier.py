"""The frontier CLI: fixed-depth rows equal the model's own val loss; exit rows trade loss for iterations."""

import csv
import sys

import numpy as np
from helpers import run, tiny_checkpoint, tiny_data_dir

from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.train.steps import cross_entropy


def test_frontier_csv(tmp_path):
    data_dir = tiny_data_dir(tmp_path)
    config, params, out = tiny_checkpoint(tmp_path)
    res = run(
        [
            sys.executable,
            "-m",
            "nanoloop_jax.tools.frontier",
            f"--out_dir={out}",
            f"--data_dir={data_dir}",
            "--n_loops=4",
            "--exits=none,latent_diff:0.5,argmax:1",
            "--kv_share=0,2",
            "--val_windows=6",
            "--batch_size=4",
        ]
    )
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(out / "frontier.csv")))
    columns = ("n_loop", "exit", "threshold", "kv_share", "warm_start", "val_loss", "mean_iters", "kv_cache_mib")
    assert tuple(rows[0]) == columns and len(rows) == 6
    val = np.memmap(data_dir / "val.bin", dtype=np.uint16, mode="r")  # the first 6 windows of 32, shifted by one
    x = np.stack([val[i * 32 : (i + 1) * 32] for i in range(6)]).astype(np.int32)
    y = np.stack([val[i * 32 + 1 : (i + 1) * 32 + 1] for i in range(6)]).astype(np.int32)
    direct = float(cross_entropy(LoopedGPT(config).apply({"params": params}, x, n_loop=4), y))
    fixed = rows[0]  # n_loop 4, none, kv_share 0: exactly the model's forward
    np.testing.assert_allclose(float(fixed["val_loss"]), direct, rtol=1e-5)
    assert float(fixed["mean_iters"]) == 4.0
    exit_rows = [r for r in rows if r["exit"] != "none"]
    assert all(float(r["mean_iters"]) < 4.0 for r in exit_rows)
    mib = {int(r["kv_share"]): float(r["kv_cache_mib"]) for r in rows}
    assert mib[2] * 6 == mib[0] * 4  # 1 + 4 + 1 layers vs 1 + 2 + 1
    assert (out / "frontier.png").stat().st_size > 1000


def test_frontier_bad_flags_one_line(tmp_path):
    res = run([sys.executable, "-m", "nanoloop_jax.tools.frontier", f"--out_dir={tmp_path}", "--exits=confidence:0.1"])
    assert res.returncode == 1 and "unknown exit criterion 'confidence'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run(
        [sys.executable, "-m", "nanoloop_jax.tools.frontier", f"--out_dir={tmp_path}", "--n_loops=4", "--kv_share=5"]
    )
    assert res.returncode == 1 and "kv_share (5) must be in 0..n_loop (4)" in res.stderr
