"""The training loop of configs with a `lengthgen` section: one length n per batch, T(n) loop iterations, then
the per-length evaluation (accuracy.csv, heat map) in out_dir. train.py reaches it through Trainer's hook.

Single device on purpose: these models are ~100k parameters and the runs are sized for a 2-core CPU.
Resumes from the newest checkpoint in out_dir (batches and depths are pure functions of seed and step);
a run already at max_iters only re-runs the evaluation.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from nanoloop_jax import checkpoint, lengthgen_data
from nanoloop_jax.config import model_config
from nanoloop_jax.lengthgen import check_model, make_train_step
from nanoloop_jax.metrics import MetricsLogger
from nanoloop_jax.model import LoopedGPT
from nanoloop_jax.optim import lr_schedule, make_optimizer
from nanoloop_jax.steps import TrainState, init_train_state
from nanoloop_jax.tools.eval_lengthgen import default_max_depth, evaluate, report


def additive_injection(params: dict) -> dict:
    """Params whose inject kernel is [I; I]: u = e + s at init, the paper's injection (nanoLOOP's [I; 0] drops s)."""
    kernel = params["loop"]["inject"]["kernel"]
    d = kernel.shape[1]
    loop = {**params["loop"], "inject": {**params["loop"]["inject"], "kernel": jnp.concatenate([jnp.eye(d)] * 2)}}
    return {**params, "loop": loop}


class LengthGenTrainer:
    """Trains config.model on config.lengthgen's task and evaluates it per length; `run()` does both."""

    def __init__(self, config) -> None:
        self.config, lg = config, config.lengthgen
        os.makedirs(config.out_dir, exist_ok=True)
        self.logger = MetricsLogger(config.out_dir, config, config.wandb)
        self.data_dir = config.data.data_dir or os.path.join("data", lg.task)
        lengthgen_data.ensure_lengthgen_data(self.data_dir, lg)
        self.model_config = model_config(config.model, vocab_size=len(lengthgen_data.CHARS))
        check_model(self.model_config)
        self.model = LoopedGPT(self.model_config)
        lo, hi = lg.train_lengths
        self.depths = {n: lengthgen_data.depth_for_length(lg, self.model_config.n_loop, n) for n in range(lo, hi + 1)}
        self.max_depth = max(self.depths.values())  # the scan length of the one compiled training step
        self.schedule, self.tx = lr_schedule(config.opt), make_optimizer(config.opt)
        self.train_step = jax.jit(make_train_step(self.model, self.tx, self.schedule, self.max_depth), donate_argnums=0)
        self.batches = lengthgen_data.LengthBatches(
            self.data_dir, lg.task, lg.train_lengths, config.data.batch_size, config.seed, lg.curriculum_steps
        )
        self.mngr = checkpoint.manager(config.out_dir, max_to_keep=1, async_save=False)
        self.state = self._initial_state()

    def _initial_state(self) -> TrainState:
        key = jax.random.PRNGKey(self.config.seed)
        fresh = jax.jit(lambda k: init_train_state(self.model, self.tx, k))(key)
        step = checkpoint.latest_step(self.config.out_dir)
        if step is None:
            if self.config.lengthgen.additive_injection:
                fresh = fresh.replace(params=additive_injection(fresh.params))
            return fresh
        dev = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shard = lambda tree: jax.tree_util.tree_map(lambda _: dev, tree)  # noqa: E731
        params, opt_state, meta = checkpoint.restore(
            self.mngr,
            step,
            abstract_params=fresh.params,
            param_shardings=shard(fresh.params),
            abstract_opt_state=fresh.opt_state,
            opt_shardings=shard(fresh.opt_state),
        )
        self.logger.print(f"resumed from step {meta['step']} in {self.config.out_dir}")
        return TrainState(step=jax.numpy.asarray(meta["step"], jax.numpy.int32), params=params, opt_state=opt_state)

    def save(self, step: int) -> None:
        meta = {
            "step": step,
            "best_val_loss": float("inf"),
            "model_config": checkpoint.config_to_dict(self.model_config),
            "config": json.loads(self.config.to_json_best_effort()),
        }
        checkpoint.save(self.mngr, step, params=self.state.params, opt_state=self.state.opt_state, meta=meta)

    def run(self) -> dict:
        cfg, tcfg = self.config, self.config.train
        checkpoint.write_run_config(cfg.out_dir, cfg)
        self.logger.print(f"model: {self.model_config}")
        self.logger.print(
            f"lengthgen: {cfg.lengthgen.task}, T(n) = {self.depths} (one compiled step, scan of {self.max_depth})"
        )
        start, t0 = int(jax.device_get(self.state.step)), time.time()
        t_last = t0
        for step in range(start, tcfg.max_iters):
            n, x, y = self.batches.get(step)
            self.state, metrics = self.train_step(self.state, x, y, np.int32(self.depths[n]))
            if step % tcfg.log_interval == 0 or step == tcfg.max_iters - 1:
                m = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not math.isfinite(m["loss"]):
                    raise ValueError(f"loss is {m['loss']} at iter {step}; try a lower opt.learning_rate")
                now = time.time()
                self.logger.print(
                    f"iter {step}: loss {m['loss']:.4f}, length {n}, n_loop {self.depths[n]}, "
                    f"{(now - t_last) * 1000 / tcfg.log_interval:.1f}ms/step, {now - t0:.0f}s"
                )
                self.logger.write({"step": step, "event": "train", "length": n, "n_loop": self.depths[n], **m})
                t_last = now
            if (step + 1) % tcfg.eval_interval == 0 and step + 1 < tcfg.max_iters:
                self.save(step + 1)
        if tcfg.max_iters > start:
            self.save(tcfg.max_iters)
            self.logger.print(f"trained steps {start}..{tcfg.max_iters} in {time.time() - t0:.0f}s")
        self.mngr.close()
        return self.evaluate()

    def evaluate(self) -> dict:
        lg = self.config.lengthgen
        t0 = time.time()
        max_depth = default_max_depth(lg, self.model_config.n_loop)
        result = evaluate(
            self.model,
            self.state.params,
            self.data_dir,
            lg,
            sorted(lg.test_lengths),
            max_depth,
            lg.eval_batch_size,
            self.logger.print,
        )
        report(self.config.out_dir, result, lg, int(jax.device_get(self.state.step)), self.logger.print)
        self.logger.print(f"evaluated in {time.time() - t0:.0f}s")
        return {
            n: {"T": v[2], "acc_T": float(v[0][v[2] - 1]) if v[2] <= len(v[0]) else None, "adaptive": v[1]}
            for n, v in result.items()
        }
