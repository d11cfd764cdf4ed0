"""Run metrics: OUT_DIR/metrics.jsonl, optional TensorBoard files and wandb (process 0 only; the text lines go
through log.py), and the up-front warning when the measured speed says a config is far too large for the devices
found."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from nanoloop_jax.errors import UserError
from nanoloop_jax.model import flops
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.train.tensorboard import TensorBoardWriter

PROGRESS_DELAY_S = 3.0  # an evaluation still running after this many seconds shows a progress bar
TOO_LARGE_S = 2 * 3600  # a CPU run estimated to take longer than this gets the warning (the :cpu configs take minutes)
CPU_CONFIGS = "configs/shakespeare_char.py:cpu or configs/shakespeare_char_looped.py:cpu"


class MetricsLogger:
    """Writes one JSON object per record (and, optionally, the same numbers as TensorBoard scalars and to wandb);
    only on process 0, so a pod's metrics are written once."""

    def __init__(self, out_dir: str, config=None, use_wandb: bool = False, tensorboard: bool = False) -> None:
        self.is_main = jax.process_index() == 0
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.tensorboard = TensorBoardWriter(out_dir) if self.is_main and tensorboard else None
        self.wandb = None
        if self.is_main and use_wandb:
            try:
                import wandb
            except ImportError:
                raise UserError(
                    "config.wandb=True needs wandb: run with `uv run --extra wandb python train.py ...` (adds it, "
                    "keeping the other extras; `uv sync` installs exactly the extras it names)"
                ) from None
            self.wandb = wandb
            wandb.init(project=config.wandb_project, name=config.wandb_run_name, config=config.to_dict())

    def write(self, record: dict) -> None:
        if not self.is_main:
            return
        record = {"time": time.time(), **record}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if isinstance(v, int | float)}, step=record.get("step"))

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()


def step_seconds(
    t_dispatch: float, t_return: float, t_fetched: float, was_ready: bool, t_prev_done: float
) -> tuple[float, float]:
    """(wall time of one train step alone, when it ended), from the host's view of it.

    It ended when the call returned if its metrics were already ready when fetched (CPU runs the step
    inside the call), else when the fetch returned (the fetch waited for the device). It began when
    dispatched or when the previous step ended, whichever is later: so neither an evaluation or
    checkpoint between two steps, nor the wait for the step before, is counted.
    """
    t_done = t_return if was_ready else t_fetched
    return t_done - max(t_dispatch, t_prev_done), t_done


def run_flops(
    model_config: ModelConfig,
    remaining_steps: int,
    *,
    tokens_per_step: int,
    train_depths: list[int],
    eval_tokens: int,
    eval_iters: int,
    eval_interval: int,
    eval_depths: list[int],
) -> float:
    """FLOPs of the rest of a run (flops.py's loop-aware counts): its train steps plus its evaluations.

    The task's own shapes (Task.tokens_per_step, Task.eval_tokens: a lengthgen row is its problems' width, not
    block_size), `train_depths` the depths of (a sample of) the remaining steps, `eval_depths` one per eval job.
    """
    per_token = np.mean([flops.flops_per_token(model_config, d) for d in train_depths]) if train_depths else 0.0
    train = remaining_steps * tokens_per_step * per_token
    per_eval = sum(
        eval_iters * eval_tokens * flops.flops_per_token(model_config, n, backward=False) for n in eval_depths
    )
    n_evals = remaining_steps // eval_interval + 1
    return float(train + n_evals * per_eval)


def wall_time(seconds: float) -> str:
    """A duration, readable: 42.1 s, 13.8 min, 2.3 h, 4.5 days (a run's wall time, an estimate's)."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def too_large_warning(flop_per_s: float, *, platform: str, n_devices: int, **run) -> str | None:
    """One line when, at the measured speed, the rest of a CPU run (`run`: run_flops's arguments) would take more
    than TOO_LARGE_S; else None."""
    total = run_flops(**run)
    seconds = total / flop_per_s
    if platform != "cpu" or seconds <= TOO_LARGE_S:
        return None
    return (
        f"warning: this config is far too large for {n_devices} CPU device(s): its {run['remaining_steps']:,} steps "
        f"and evaluations ({total:.2g} FLOPs) need about {wall_time(seconds)} at the measured "
        f"{flop_per_s / 1e9:.1f} GFLOP/s; on a CPU use a ':cpu' variant ({CPU_CONFIGS}) or a GPU/TPU"
    )
