"""train.final_eval='best_val': the final evaluation reads the params of the lowest val loss, kept in OUT/best_val."""

import json

import jax
import numpy as np
from helpers import run, train_cmd

from nanoloop_jax.ckpt import checkpoint


def _flags(tmp_path, **extra) -> list[str]:
    flags = {
        "out_dir": tmp_path / "out",
        "data.data_dir": tmp_path / "data",
        "model.n_embd": 16,
        "model.n_head": 2,
        "model.block_size": 8,
        "data.batch_size": 8,
        "lengthgen.num_train": 8,
        "lengthgen.train_lengths": "(1,2)",
        "lengthgen.test_lengths": "(2,3)",
        "lengthgen.num_test": 6,
        "lengthgen.eval_extra_depth": 1,
        "train.max_iters": 3,
        "train.eval_interval": 1,
        "train.eval_iters": 2,
        "train.keep_checkpoints": 5,
        "train.async_checkpointing": False,
        "train.final_eval": "best_val",
        **extra,
    }
    return [f"--config.{k}={v}" for k, v in flags.items()]


def test_final_evaluation_reads_the_lowest_val_loss_not_the_last_step(tmp_path):
    """Gradient ascent (a negative learning rate) makes the last evals worse, so the lowest val loss is an earlier
    step S: OUT/best_val holds exactly step S's params (equal to the main checkpoint of S) and the final evaluation
    reports step S, while the last step is 3; a resumed run (to step 5, still ascending) keeps that best."""
    ascent = {"opt.learning_rate": -0.05, "opt.decay_lr": False}
    res = run(train_cmd("configs/parity_lengthgen.py", *_flags(tmp_path, **ascent)))
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "out"
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["val"] for r in evals if r.get("event") == "eval"}
    best_step = min(val, key=val.get)
    assert sorted(val) == [0, 1, 2, 3] and 0 < best_step < 3, val  # the set-up: a trained step, not the last
    log = res.stdout + res.stderr
    assert f"final evaluation: the best-val params of step {best_step}" in log and "not the last step 3" in log
    assert f"(step {best_step}): parity exact-match accuracy" in log  # the table is that step's
    best = checkpoint.load_params(str(out / "best_val"))
    assert best.step == best_step and abs(best.best_val_loss - val[best_step]) < 1e-6
    assert checkpoint.all_steps(str(out)) == [3, 2, 1]  # the main checkpoints: every trained step
    same = checkpoint.load_params(str(out), step=best_step).params
    last = checkpoint.load_params(str(out), step=3).params
    assert all(np.array_equal(a, b) for a, b in zip(_leaves(best.params), _leaves(same), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(_leaves(best.params), _leaves(last), strict=True))
    # a resumed run (new process) still finishes on the best of both segments
    res = run(train_cmd("configs/parity_lengthgen.py", *_flags(tmp_path, **ascent, **{"train.max_iters": 5})))
    assert res.returncode == 0, res.stderr[-3000:]
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    later = [r["val"] for r in evals if r.get("event") == "eval" and r["step"] > 3]
    assert later and min(later) > val[best_step], later
    assert f"final evaluation: the best-val params of step {best_step}" in res.stdout + res.stderr
    assert checkpoint.load_params(str(out / "best_val")).step == best_step


def test_an_unknown_final_eval_is_one_line(tmp_path):
    res = run(train_cmd("configs/parity_lengthgen.py", *_flags(tmp_path, **{"train.final_eval": "best"})))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "error: train.final_eval must be one of ('last', 'best_val'), got 'best'"
    )


def _leaves(params) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
