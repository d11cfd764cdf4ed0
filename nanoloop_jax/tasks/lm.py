"""Language modelling (config.task = 'lm', the default): next-token loss on a token dataset's train.bin/val.bin.

Data: random windows, a pure function of (seed, step) (data/batches.py); gradient accumulation as a leading
micro-step axis. Depth: model.n_loop, or drawn per step for randomized depth (train/depth.py). Evaluation:
train and val loss at n_loop, and val loss at every extra depth of train.eval_n_loops.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils

from nanoloop_jax import sharding
from nanoloop_jax.data.batches import EVAL_SEED_OFFSET, AccumSampler, BatchSampler, data_dir_of, load_meta
from nanoloop_jax.data.prepare import ensure_prepared
from nanoloop_jax.model.looped import LoopedGPT, abstract_params
from nanoloop_jax.tasks.base import EvalJob, Steps, Task
from nanoloop_jax.train import halting
from nanoloop_jax.train.depth import sample_depth
from nanoloop_jax.train.steps import make_eval_step, make_train_step, model_loss


def lm_train_step(model: LoopedGPT, tx, schedule, tcfg):
    """The language-modelling train step (a traced depth only for randomized depth; else n_loop), with the
    halting objective if train.halting asks for it (bench.py times this same step)."""
    mc = model.config
    loss_fn = update_mask = None
    if tcfg.halting != "none":
        loss_fn = halting.make_halting_loss(model, tcfg, lambda n: halting.loop_plan(mc, n), model_loss(model))
        update_mask = halting.gate_only_updates(tcfg, abstract_params(mc))
    dynamic = mc.loop_sampling != "fixed"
    return make_train_step(model, tx, schedule, dynamic, loss_fn=loss_fn, update_mask=update_mask)


class LanguageModelling(Task):
    """nanoGPT's task."""

    @staticmethod
    def prepare(config) -> dict | None:
        """Prepare the dataset if missing (process 0 first, then hosts without a shared filesystem)."""
        data_dir = data_dir_of(config.data)
        if jax.process_index() == 0:
            ensure_prepared(config.data.dataset, data_dir)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("data prepared")
            ensure_prepared(config.data.dataset, data_dir)
        return load_meta(data_dir)

    def __init__(self, config, model_config) -> None:
        super().__init__(config, model_config)
        kw = dict(
            batch_size=sharding.local_batch_size(config.data.batch_size),
            block_size=model_config.block_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        data_dir = data_dir_of(config.data)
        self._train = AccumSampler(
            BatchSampler(data_dir, "train", seed=config.seed, **kw), config.data.gradient_accumulation_steps
        )
        self._eval = {s: BatchSampler(data_dir, s, seed=config.seed + EVAL_SEED_OFFSET, **kw) for s in ("train", "val")}
        self.eval_tokens = config.data.batch_size * model_config.block_size
        self.tokens_per_step = self.eval_tokens * config.data.gradient_accumulation_steps
        self.depth_varies = model_config.loop_sampling != "fixed"
        halting.check_halting(config.train, model_config)

    def batch_source(self) -> AccumSampler:
        return self._train

    def depth(self, step: int) -> int:
        """n_loop, or drawn per step (model.loop_sampling)."""
        return sample_depth(self.model_config, self.config.seed, step)

    def _eval_depths(self) -> list[int]:
        n = self.model_config.n_loop
        return [n] + [k for k in (int(d) for d in self.config.train.eval_n_loops) if k != n]

    def steps(self, model: LoopedGPT, tx, schedule) -> Steps:
        """lm_train_step and an eval step per depth (the plain loss at that depth)."""
        train = lm_train_step(model, tx, schedule, self.config.train)
        return Steps(train, {n: make_eval_step(model, n) for n in self._eval_depths()})

    def eval_jobs(self) -> list[EvalJob]:
        """train and val at n_loop, then val_n_loop_<k> at each extra depth."""

        def job(name: str, n_loop: int, split: str) -> EvalJob:
            return EvalJob(name, n_loop, lambda i: (self._eval[split].get(i), n_loop))

        n = self.model_config.n_loop
        extra = [job(f"val_n_loop_{k}", k, "val") for k in self._eval_depths() if k != n]
        return [job("train", n, "train"), job("val", n, "val"), *extra]
