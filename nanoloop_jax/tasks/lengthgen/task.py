"""Training on a length-generalization task (configs with a `lengthgen` section): the Trainer's loop with
one length n per batch, T(n) loop iterations with full backprop, and the per-length accuracy at the end.

What differs from language modelling, and nothing else, is overridden here:
  data      LengthBatches: step s draws one length n and batch_size problems of it (lengthgen_data.py)
  depth     T(n) of the step's length, traced: one compiled step for every length (lengthgen.py)
  eval      every eval_interval: the loss at T(n) on fresh draws of the training lengths (train) and on
            the held-out test problems of the trained lengths (val); a checkpoint follows
  finish    accuracy at every (test length, n_loop) and with the confidence stop: accuracy.csv, heat map
A run already at max_iters only re-runs the final evaluation. Single process: these models are ~100k
parameters and the runs are sized for a 2-core CPU (they do use every local device of the mesh).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from nanoloop_jax import sharding
from nanoloop_jax.data.batches import EVAL_SEED_OFFSET, data_dir_of
from nanoloop_jax.tasks.lengthgen import data as lengthgen_data
from nanoloop_jax.tasks.lengthgen.evaluate import default_max_depth, evaluate, report
from nanoloop_jax.tasks.lengthgen.forward import check_model, make_eval_step, make_train_step
from nanoloop_jax.train.state import Start
from nanoloop_jax.train.trainer import EvalBatch, Trainer


class LengthBatchSource:
    """LengthBatches as the loop's batch source: get(step) -> (x, y) with a leading micro-step axis of 1."""

    def __init__(self, batches: lengthgen_data.LengthBatches) -> None:
        self.batches = batches

    def get(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        _, x, y = self.batches.get(step)
        return x[None], y[None]


class LengthGenTrainer(Trainer):
    """Trainer for config.lengthgen's task; see the module docstring for what it changes."""

    def __init__(self, config, start: Start, *args, **kwargs) -> None:
        lg, n_loop = config.lengthgen, start.model_config.n_loop
        check_model(start.model_config)
        if jax.process_count() > 1:
            raise ValueError("lengthgen runs are single-process: run train.py without jax.distributed")
        self.data_dir = data_dir_of(config.data)
        lo, hi = lg.train_lengths
        self.val_lengths = [n for n in lg.test_lengths if lo <= n <= hi]
        if not self.val_lengths:
            raise ValueError(
                f"lengthgen.test_lengths {tuple(lg.test_lengths)} has no trained length in {lo}..{hi}: "
                "add one (its held-out problems give the val loss)"
            )
        # T(n) of every trained length (the val lengths are among them)
        self.depths = {n: lengthgen_data.depth_for_length(lg, n_loop, n) for n in range(lo, hi + 1)}
        self.max_depth = max(self.depths.values())  # the scan length of the one compiled step
        super().__init__(config, start, *args, **kwargs)
        self.logger.print(f"lengthgen: {lg.task}, T(n) = {self.depths} (one compiled step, scan of {self.max_depth})")

    def _steps(self):
        """T(n) iterations with full backprop (traced depth); one eval step, run at each batch's T(n)."""
        train_step = make_train_step(self.model, self.tx, self.schedule, self.max_depth)
        return train_step, True, {self.model_config.n_loop: make_eval_step(self.model, self.max_depth)}

    @property
    def eval_step(self):
        return self.eval_steps[self.model_config.n_loop]

    def _build_data(self) -> None:
        cfg, lg = self.config, self.config.lengthgen
        bs = sharding.local_batch_size(cfg.data.batch_size)
        self.batches = lengthgen_data.LengthBatches(
            self.data_dir, lg.task, lg.train_lengths, bs, cfg.seed, lg.curriculum_steps
        )
        self.train_batches = LengthBatchSource(self.batches)
        # unseen draws of the training distribution (every length, no curriculum)
        self.eval_batches = lengthgen_data.LengthBatches(
            self.data_dir, lg.task, lg.train_lengths, bs, cfg.seed + EVAL_SEED_OFFSET
        )
        self.val_sets = {n: lengthgen_data.load_test(self.data_dir, n) for n in self.val_lengths}
        self.eval_tokens = cfg.data.batch_size * self.batches.width
        self.tokens_per_step = self.eval_tokens

    def _depth(self, step: int) -> int:
        return self.depths[self.batches.length(step)]

    def _val_batch(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Held-out batch i: length val_lengths[i mod k], rows drawn (seeded by i) from its test set."""
        n = self.val_lengths[i % len(self.val_lengths)]
        xs, ys = self.val_sets[n]
        rows = np.random.default_rng([self.config.seed, EVAL_SEED_OFFSET, i]).integers(
            0, len(xs), self.batches.batch_size
        )
        return n, *lengthgen_data.pad_rows(xs[rows], ys[rows], self.batches.width)

    def _eval_jobs(self) -> list[tuple[str, EvalBatch]]:
        def job(draw) -> EvalBatch:
            def loss_of(i: int) -> tuple[jax.Array, int]:
                n, x, y = draw(i)
                batch = self._batch((x, y), self.eval_sharding)
                return self.eval_step(self.state.params, batch, np.int32(self.depths[n])), self.depths[n]

            return loss_of

        return [("train", job(self.eval_batches.get)), ("val", job(self._val_batch))]

    def _eval_example(self):
        n, x, y = self.eval_batches.get(0)
        return self._batch((x, y), self.eval_sharding), np.int32(self.depths[n])

    def _finish(self) -> dict:
        lg, t0 = self.config.lengthgen, time.time()
        result = evaluate(
            self.model,
            self.state.params,
            self.data_dir,
            lg,
            sorted(lg.test_lengths),
            default_max_depth(lg, self.model_config.n_loop),
            lg.eval_batch_size,
            self.logger.print,
        )
        report(self.config.out_dir, result, lg, self.done_step, self.logger.print)
        self.logger.print(f"evaluated in {time.time() - t0:.0f}s")
        return {"accuracy": {n: {"T": t, "adaptive": adaptive} for n, (_, adaptive, t) in result.items()}}
