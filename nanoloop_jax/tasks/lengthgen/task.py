"""Length generalization (config.task = 'lengthgen'): train on short inputs, test on longer ones (Fan et al. 2025).

  data      LengthBatches: step s draws one length n and batch_size problems of it (data.py)
  depth     T(n) of the step's length, traced: one compiled step for every length (forward.py)
  eval      every eval_interval: the loss at T(n) on fresh draws of the training lengths (train) and on
            the held-out test problems of the trained lengths (val); a checkpoint follows
  finish    accuracy at every (test length, n_loop) and with the model's own stop: accuracy.csv, heat map
A run already at max_iters only re-runs the final evaluation. Single process: these models are ~100k
parameters and the runs are sized for a 2-core CPU (they do use every local device of the mesh).
"""

from __future__ import annotations

import time

import jax
import numpy as np

from nanoloop_jax import log, sharding
from nanoloop_jax.data.batches import EVAL_SEED_OFFSET, data_dir_of
from nanoloop_jax.errors import UserError
from nanoloop_jax.tasks.base import EvalJob, Steps, Task
from nanoloop_jax.tasks.lengthgen import config as lengthgen_config
from nanoloop_jax.tasks.lengthgen import data as lengthgen_data
from nanoloop_jax.tasks.lengthgen.evaluate import default_max_depth, evaluate, report
from nanoloop_jax.tasks.lengthgen.forward import check_model, make_eval_step, make_train_step
from nanoloop_jax.train import halting

logger = log.get(__name__)


class LengthBatchSource:
    """LengthBatches as the loop's batch source: get(step) -> (x, y) with a leading micro-step axis of 1."""

    def __init__(self, batches: lengthgen_data.LengthBatches) -> None:
        self.batches = batches

    def get(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        _, x, y = self.batches.get(step)
        return x[None], y[None]


class LengthGeneralization(Task):
    """config.lengthgen's task; see the module docstring."""

    section = "lengthgen"
    depth_varies = True
    defaults = staticmethod(lengthgen_config.defaults)

    @staticmethod
    def prepare(config) -> dict:
        """The task's problems, made from config.lengthgen if missing."""
        return lengthgen_data.ensure_lengthgen_data(data_dir_of(config.data), config.lengthgen)

    def __init__(self, config, model_config) -> None:
        super().__init__(config, model_config)
        lg = config.lengthgen
        check_model(model_config)
        halting.check_halting(config.train, model_config)
        if jax.process_count() > 1:
            raise UserError("lengthgen runs are single-process: run train.py without jax.distributed")
        self.data_dir = data_dir_of(config.data)
        lo, hi = lg.train_lengths
        self.val_lengths = [n for n in lg.test_lengths if lo <= n <= hi]
        if not self.val_lengths:
            raise UserError(
                f"lengthgen.test_lengths {tuple(lg.test_lengths)} has no trained length in {lo}..{hi}: "
                "add one (its held-out problems give the val loss)"
            )
        # T(n) of every trained length (the val lengths are among them)
        self.depths = {n: lengthgen_data.depth_for_length(lg, model_config.n_loop, n) for n in range(lo, hi + 1)}
        self.max_depth = max(self.depths.values())  # the scan length of the one compiled step
        bs = sharding.local_batch_size(config.data.batch_size)
        self.batches = lengthgen_data.LengthBatches(
            self.data_dir, lg.task, lg.train_lengths, bs, config.seed, lg.curriculum_steps, lg.length_weighting
        )
        # unseen draws of the trained lengths (every length alike, no curriculum)
        self.eval_batches = lengthgen_data.LengthBatches(
            self.data_dir, lg.task, lg.train_lengths, bs, config.seed + EVAL_SEED_OFFSET
        )
        self.val_sets = {n: lengthgen_data.load_test(self.data_dir, n) for n in self.val_lengths}
        self.eval_tokens = self.tokens_per_step = config.data.batch_size * self.batches.width

    def describe(self) -> str:
        lg = self.config.lengthgen
        return f"lengthgen: {lg.task}, T(n) = {self.depths} (one compiled step, scan of {self.max_depth})"

    def batch_source(self) -> LengthBatchSource:
        return LengthBatchSource(self.batches)

    def depth(self, step: int) -> int:
        return self.depths[self.batches.length(step)]

    def steps(self, model, tx, schedule) -> Steps:
        """T(n) iterations with full backprop (traced depth); one eval step, run at each batch's T(n)."""
        return Steps(
            make_train_step(model, tx, schedule, self.max_depth, self.config.train, self.config.lengthgen),
            {"T(n)": make_eval_step(model, self.max_depth)},
        )

    def _val_batch(self, i: int) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        """Held-out batch i: length val_lengths[i mod k], rows drawn (seeded by i) from its test set."""
        n = self.val_lengths[i % len(self.val_lengths)]
        xs, ys = self.val_sets[n]
        rows = np.random.default_rng([self.config.seed, EVAL_SEED_OFFSET, i]).integers(
            0, len(xs), self.batches.batch_size
        )
        return lengthgen_data.pad_rows(xs[rows], ys[rows], self.batches.width), self.depths[n]

    def _train_batch(self, i: int) -> tuple[tuple[np.ndarray, np.ndarray], int]:
        n, x, y = self.eval_batches.get(i)
        return (x, y), self.depths[n]

    def eval_jobs(self) -> list[EvalJob]:
        return [EvalJob("train", "T(n)", self._train_batch), EvalJob("val", "T(n)", self._val_batch)]

    def finish(self, model, params, step: int) -> dict:
        """Accuracy at every (test length, n_loop) and with the model's own stop; accuracy.csv and the heat map."""
        lg, t0 = self.config.lengthgen, time.time()
        max_depth = default_max_depth(lg, self.model_config.n_loop)
        result = evaluate(model, params, self.data_dir, lg, sorted(lg.test_lengths), max_depth, lg.eval_batch_size)
        report(self.config.out_dir, result, lg, step)
        logger.info(f"evaluated in {time.time() - t0:.0f}s")
        return {"accuracy": {n: {"T": t, "adaptive": adaptive} for n, (_, adaptive, t) in result.items()}}
