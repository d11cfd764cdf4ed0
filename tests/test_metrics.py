"""Step timing that measures the step alone, and the up-front warning for a config far too large for a CPU."""

import json

import pytest

from configs import shakespeare_char_looped
from nanoloop_jax.config import model_config
from nanoloop_jax.model import flops
from nanoloop_jax.train import metrics


def _config(variant: str):
    config = shakespeare_char_looped.get_config(variant)
    return config, model_config(config.model, vocab_size=65)


def test_step_time_excludes_what_ran_between_steps():
    # CPU: the step runs inside the call (ready when fetched). Step 3 ended at t=10; an eval ran 10..12;
    # step 4 was dispatched at 12 and returned at 12.5: it took 0.5 s, not 2.5 s
    assert metrics.step_seconds(12.0, 12.5, 12.6, True, t_prev_done=10.0) == (0.5, 12.5)
    # the step before that eval was fetched with nothing dispatched after it: still its own 0.5 s, not ~0
    assert metrics.step_seconds(9.5, 10.0, 10.0001, True, t_prev_done=9.5) == (0.5, 10.0)
    # accelerator: dispatch returns at once and the fetch waits for the device; the step began when the
    # previous one ended (it was queued behind it)
    assert metrics.step_seconds(20.0, 20.001, 21.0, False, t_prev_done=20.6) == pytest.approx((0.4, 21.0))


def test_forward_flops_are_the_forward_terms():
    _, mc = _config("")
    fwd, total = flops.flops_per_token(mc, backward=False), flops.flops_per_token(mc)
    assert 0 < fwd < total
    # full backprop (bptt_k = n_loop): backward is twice the forward, as the 2/4 matmul factors say
    full = model_config(_config("")[0].model, vocab_size=65, bptt_k=None)
    assert flops.flops_per_token(full) == pytest.approx(3 * flops.flops_per_token(full, backward=False))


def _lm_run(config, mc) -> dict:
    """run_flops's arguments for a language-model config at n_loop (what tasks/lm.py reports)."""
    tokens = config.data.batch_size * mc.block_size
    return dict(
        model_config=mc,
        remaining_steps=config.train.max_iters,
        tokens_per_step=tokens * config.data.gradient_accumulation_steps,
        train_depths=[mc.n_loop],
        eval_tokens=tokens,
        eval_iters=config.train.eval_iters,
        eval_interval=config.train.eval_interval,
        eval_depths=[mc.n_loop] * 2,
    )


def test_full_size_config_on_a_cpu_gets_one_warning_pointing_to_the_cpu_variant():
    config, mc = _config("")
    kw = dict(n_devices=1, **_lm_run(config, mc))
    line = metrics.too_large_warning(50e9, platform="cpu", **kw)  # ~50 GFLOP/s: a 2-core CPU
    assert line.startswith("warning: this config is far too large for 1 CPU device(s): its 5,000 steps")
    assert "at the measured 50.0 GFLOP/s" in line and "configs/shakespeare_char_looped.py:cpu" in line
    assert "\n" not in line
    assert metrics.too_large_warning(50e9, platform="gpu", **kw) is None  # accelerators: no advice
    cpu_config, cpu_mc = _config("cpu")
    assert metrics.too_large_warning(20e9, platform="cpu", n_devices=1, **_lm_run(cpu_config, cpu_mc)) is None


def test_run_flops_counts_the_evaluations():
    config, mc = _config("")
    run = {**_lm_run(config, mc), "remaining_steps": 10}
    train_only = metrics.run_flops(**{**run, "eval_depths": []})
    with_evals = metrics.run_flops(**{**run, "eval_depths": [mc.n_loop, mc.n_loop, 1]})
    per_eval = config.train.eval_iters * config.data.batch_size * mc.block_size
    want = per_eval * (2 * flops.flops_per_token(mc, backward=False) + flops.flops_per_token(mc, 1, backward=False))
    assert with_evals - train_only == pytest.approx(want)  # 10 steps, eval_interval 250: the eval at the start


def test_run_flops_counts_the_tasks_rows_and_depths_not_block_size_and_n_loop():
    """A lengthgen run trains rows of its problems' width at T(n) <= n_loop (multiadd: 54 of 128 positions,
    10..16 iterations); counting block_size at n_loop overestimated its time 2-3x and misfired the warning."""
    config, mc = _config("")
    run = {**_lm_run(config, mc), "eval_depths": []}
    narrow = metrics.run_flops(**{**run, "tokens_per_step": run["tokens_per_step"] // 4, "train_depths": [2, 4]})
    per_token = (flops.flops_per_token(mc, 2) + flops.flops_per_token(mc, 4)) / 2
    assert narrow == pytest.approx(config.train.max_iters * run["tokens_per_step"] // 4 * per_token)
    assert narrow < metrics.run_flops(**run) / 4


def test_tensorboard_files_hold_the_metrics_jsonl_numbers(tmp_path):
    """train.tensorboard: every numeric field of every record as a scalar <event>/<field> at its step, readable
    back from the event files."""
    from helpers import tensorboard_scalars

    logger = metrics.MetricsLogger(str(tmp_path), tensorboard=True)
    logger.write({"step": 0, "event": "eval", "train": 4.5, "val": 4.25, "val_n_loop_1": 4.75, "eval_s": 0.5})
    for step in range(3):
        rec = {"step": step, "event": "train", "loss": 4.0 - step, "lr": 1e-3 * (step + 1), "time_ms": 12.5}
        logger.write({**rec, "tokens_per_s": 1000.0 + step, "mfu": None, "n_loop": 4})
    logger.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    scalars = tensorboard_scalars(tmp_path / "tensorboard")
    want = {}
    for rec in records:
        for key, value in rec.items():
            if key not in ("step", "time", "event") and value is not None:
                want.setdefault(f"{rec['event']}/{key}", {})[rec["step"]] = value
    assert set(scalars) == set(want) and "train/mfu" not in scalars  # no peak on CPU: no mfu curve
    for tag, by_step in want.items():
        assert scalars[tag] == pytest.approx(by_step, rel=1e-6), tag
    assert scalars["eval/val_n_loop_1"] == {0: 4.75} and scalars["train/n_loop"] == {0: 4, 1: 4, 2: 4}
