"""The training loop: jitted steps over a Start (train_state.py), periodic eval and checkpoints, safe stops."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from tqdm import tqdm

from nanoloop_jax import sharding
from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.data.batches import EVAL_SEED_OFFSET, AccumSampler, BatchSampler, Prefetcher, data_dir_of
from nanoloop_jax.model import flops
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.train import metrics
from nanoloop_jax.train.depth import sample_depth
from nanoloop_jax.train.metrics import MetricsLogger
from nanoloop_jax.train.optim import lr_schedule, make_optimizer
from nanoloop_jax.train.preemption import Preemption
from nanoloop_jax.train.state import Start, all_processes
from nanoloop_jax.train.steps import make_eval_step, make_train_step

# Fold-in index of the evaluation key: far above any step index, so eval dropout/noise never reuses a step's.
EVAL_KEY_INDEX = 2**30


EvalBatch = Callable[[int], tuple[jax.Array, int]]  # eval batch i -> (its loss on device, the n_loop it ran)


class TrainingError(Exception):
    """A run that must stop (divergence): one line for the user."""


class _Stop(Exception):
    """SIGTERM seen by some process, raised from a poll inside a phase (evaluation) to end the run."""


class Trainer:
    """Holds the mesh, jitted steps and state of one run; `run()` trains to max_iters."""

    def __init__(self, config, start: Start, mesh, rules, logger: MetricsLogger, preemption: Preemption) -> None:
        self.config, self.mesh, self.rules, self.logger, self.preemption = config, mesh, rules, logger, preemption
        self.model_config, self.state, self.state_shardings, self.best_val_loss = start
        self.model = LoopedGPT(self.model_config)
        self.schedule, self.tx = lr_schedule(config.opt), make_optimizer(config.opt)
        self.key = jax.random.PRNGKey(config.seed)
        self._saving, self.speed, self._t_done = False, None, 0.0  # first measured FLOP/s; when the last step ended
        self.saved_step = self.done_step = int(jax.device_get(self.state.step))  # last checkpointed / trained step
        self._build_steps()
        self._build_data()
        self.mngr = checkpoint.manager(
            config.out_dir, max_to_keep=config.train.keep_checkpoints, async_save=config.train.async_checkpointing
        )
        preemption.watch(self._nothing_to_save, self._nothing_saved_line, self.logger.print)

    def _steps(self) -> tuple[Callable, bool, dict[int, Callable]]:
        """The pure train step, whether it takes a traced depth, and the pure eval steps (params, batch, key)
        keyed by the n_loop each reports: language modelling's."""
        dynamic_depth = self.model_config.loop_sampling != "fixed"
        train_step = make_train_step(self.model, self.tx, self.schedule, dynamic_depth=dynamic_depth)
        return train_step, dynamic_depth, {n: make_eval_step(self.model, n) for n in self._eval_depths()}

    def _build_steps(self) -> None:
        """Jit _steps() with the state, batch and replicated shardings."""
        repl = sharding.replicated(self.mesh)
        self.batch_sharding = sharding.accum_batch_sharding(self.mesh, self.rules)
        self.eval_sharding = sharding.batch_sharding(self.mesh, self.rules)
        train_step, self.dynamic_depth, eval_steps = self._steps()
        self.train_step = sharding.jit_step(
            train_step,
            self.mesh,
            self.rules,
            in_shardings=(self.state_shardings, self.batch_sharding, repl) + ((repl,) if self.dynamic_depth else ()),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=0,
        )
        self.eval_steps = {
            n_loop: sharding.jit_step(
                eval_step,
                self.mesh,
                self.rules,
                in_shardings=(self.state_shardings.params, self.eval_sharding, repl),
                out_shardings=repl,
            )
            for n_loop, eval_step in eval_steps.items()
        }

    def _eval_depths(self) -> list[int]:
        extra = [int(n) for n in self.config.train.eval_n_loops]
        return [self.model_config.n_loop] + [n for n in extra if n != self.model_config.n_loop]

    def _build_data(self) -> None:
        cfg = self.config
        local_bs = sharding.local_batch_size(cfg.data.batch_size)
        kw = dict(
            batch_size=local_bs,
            block_size=self.model_config.block_size,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        train = BatchSampler(data_dir_of(cfg.data), "train", seed=cfg.seed, **kw)
        self.train_batches = AccumSampler(train, cfg.data.gradient_accumulation_steps)
        self.eval_samplers = {
            s: BatchSampler(data_dir_of(cfg.data), s, seed=cfg.seed + EVAL_SEED_OFFSET, **kw) for s in ("train", "val")
        }
        self.eval_tokens = cfg.data.batch_size * self.model_config.block_size  # per eval batch
        self.tokens_per_step = self.eval_tokens * cfg.data.gradient_accumulation_steps

    def _compile(self) -> float:
        """Compile the train and eval steps up front (seconds): later steps and evals then only run.

        So a compile never lands after steps were trained (where a SIGTERM would have to wait for it),
        and the first step's time is the step's alone.
        """
        t0 = time.perf_counter()
        if not self.config.train.eval_only and self.done_step < self.config.train.max_iters:
            batch = self._batch(self.train_batches.get(self.done_step), self.batch_sharding)
            extra = (np.int32(self._depth(self.done_step)),) if self.dynamic_depth else ()
            self.train_step.lower(self.state, batch, self.key, *extra).compile()
        eval_batch, eval_arg = self._eval_example()
        for eval_step in self.eval_steps.values():
            eval_step.lower(self.state.params, eval_batch, eval_arg).compile()
        return time.perf_counter() - t0

    def _eval_example(self) -> tuple[dict[str, jax.Array], jax.Array]:
        """An eval batch and the eval steps' last argument (the key), to compile them with."""
        return self._batch(self.eval_samplers["val"].get(0), self.eval_sharding), self.key

    # ---- pieces of the loop ------------------------------------------------------------------
    def _depth(self, step: int) -> int:
        """The loop depth of training step `step` (n_loop, or drawn per step: model.loop_sampling)."""
        return sample_depth(self.model_config, self.config.seed, step)

    def _finish(self) -> dict:
        """Work after the last step (none for language modelling); its results join the run's summary."""
        return {}

    def _batch(self, arrays, sh) -> dict[str, jax.Array]:
        """{'x', 'y'[, 'mask']} global arrays from this process's rows."""
        return {k: sharding.global_array(a, sh) for k, a in zip(("x", "y", "mask"), arrays, strict=False)}

    def _eval_jobs(self) -> list[tuple[str, EvalBatch]]:
        """(name, batch i -> (device loss, n_loop)): train and val at n_loop, and val at each extra depth."""
        eval_key = jax.random.fold_in(self.key, EVAL_KEY_INDEX)

        def job(n_loop: int, split: str) -> EvalBatch:
            def loss_of(i: int) -> tuple[jax.Array, int]:
                batch = self._batch(self.eval_samplers[split].get(i), self.eval_sharding)
                return self.eval_steps[n_loop](self.state.params, batch, jax.random.fold_in(eval_key, i)), n_loop

            return loss_of

        n = self.model_config.n_loop
        jobs = [("train", job(n, "train")), ("val", job(n, "val"))]
        return jobs + [(f"val_n_loop_{k}", job(k, "val")) for k in self.eval_steps if k != n]

    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters batches of each eval job; a progress bar if it is slow."""
        n_iters, jobs, out = self.config.train.eval_iters, self._eval_jobs(), {}
        with tqdm(
            total=len(jobs) * n_iters,
            desc="eval",
            unit="batch",
            delay=metrics.PROGRESS_DELAY_S,
            leave=False,
            file=sys.stderr,
            disable=jax.process_index() != 0,
        ) as bar:
            for name, loss_of in jobs:
                losses = []
                for i in range(n_iters):
                    t0 = time.perf_counter()
                    loss, n_loop = loss_of(i)
                    # fetched one by one: a SIGTERM is seen within one batch, and the bar moves
                    losses.append(float(loss))
                    if self.speed is None:  # the first batch of the run: a forward pass, timed
                        fwd = flops.flops_per_token(self.model_config, n_loop, backward=False) * self.eval_tokens
                        self._measured(fwd / (time.perf_counter() - t0))
                    bar.update()
                    if self._stop_signalled():
                        raise _Stop
                out[name] = float(np.mean(losses))
        return out

    def save(self, step: int) -> float:
        """Save the state as checkpoint `step` (asynchronously where enabled); seconds the call blocked."""
        t0 = time.perf_counter()
        meta = {
            "step": int(step),
            "best_val_loss": float(self.best_val_loss),
            "model_config": checkpoint.config_to_dict(self.model_config),
            "config": json.loads(self.config.to_json_best_effort()),
        }
        self._saving = True
        try:
            checkpoint.save(self.mngr, step, params=self.state.params, opt_state=self.state.opt_state, meta=meta)
        finally:
            self._saving = False
        self.saved_step = step
        return time.perf_counter() - t0

    def _stop_signalled(self) -> bool:
        """SIGTERM seen by any process (all processes must agree to save the same step)."""
        return all_processes(self.preemption.requested, how=np.any)

    def _nothing_to_save(self) -> bool:
        """For the SIGTERM watchdog (another thread): may the process end right now without losing work?"""
        if self._saving or self.done_step != self.saved_step:
            return False
        return not self.mngr.is_saving_in_progress()

    def _nothing_saved_line(self) -> str:
        since = f"since the checkpoint at step {self.saved_step}" if self.saved_step else "yet"
        return f"SIGTERM: no step trained {since}, nothing to save; exiting cleanly"

    def _warn(self, line: str) -> None:
        if jax.process_index() == 0:
            print(line, file=sys.stderr, flush=True)

    def _check_finite(self, step: int, loss: float) -> None:
        if not math.isfinite(loss):
            last = checkpoint.latest_step(self.config.out_dir)
            where = (
                f"the last good checkpoint is step {last} in {self.config.out_dir}"
                if last is not None
                else "no checkpoint was written yet"
            )
            raise TrainingError(
                f"loss is {loss} at iter {step}; stopping ({where}). Try a lower opt.learning_rate or opt.grad_clip."
            )

    # ---- the loop ----------------------------------------------------------------------------
    def run(self) -> dict:
        """Train to train.max_iters (evaluating and checkpointing on the way); a summary of the run."""
        cfg, tcfg = self.config, self.config.train
        if jax.process_index() == 0:
            checkpoint.write_run_config(cfg.out_dir, cfg)
        self.logger.print(f"model: {self.model_config}")
        self.logger.print(
            f"mesh: {dict(self.mesh.shape)} over {jax.device_count()} devices, "
            f"{jax.process_count()} processes; tokens per step: {self.tokens_per_step:,}"
        )
        start = self.done_step
        summary = {"start_step": start}
        self.logger.print(f"compiled the train and eval steps in {self._compile():.1f} s")
        prefetch = Prefetcher(self.train_batches, start_step=start, stop_step=tcfg.max_iters)
        pending = None
        try:
            if self._stop_signalled():
                raise _Stop
            for step in range(start, tcfg.max_iters + 1):
                if step % tcfg.eval_interval == 0 or step == tcfg.max_iters:
                    pending = self._flush(pending)
                    self._evaluate_and_save(step, start, summary)
                    if tcfg.eval_only:
                        break
                if step == tcfg.max_iters:
                    break
                _, *arrays = next(prefetch)
                batch = self._batch(arrays, self.batch_sharding)
                depth = self._depth(step)
                extra = (np.int32(depth),) if self.dynamic_depth else ()
                t_dispatch = time.perf_counter()
                self.state, step_metrics = self.train_step(self.state, batch, self.key, *extra)
                t_return, self.done_step = time.perf_counter(), step + 1
                # fetch the previous step's metrics only now, so the device already runs this step
                pending = self._flush(pending)
                pending = (step, step_metrics, depth, t_dispatch, t_return)
                if self._stop_signalled():
                    raise _Stop
            pending = self._flush(pending)
            summary.update(self._finish())
        except _Stop:
            self.preemption.take()
            pending = self._flush(pending)
            summary["preempted_at"] = self.done_step
            if self.done_step != self.saved_step:
                self.save(self.done_step)
                self.mngr.wait_until_finished()
                self.logger.print(f"SIGTERM: saved checkpoint at step {self.done_step}; exiting cleanly")
            else:
                self.logger.print(self._nothing_saved_line())
        finally:
            prefetch.close()
            self.mngr.wait_until_finished()
            self.mngr.close()
            self.logger.close()
        summary["best_val_loss"] = self.best_val_loss
        return summary

    def _evaluate_and_save(self, step: int, start: int, summary: dict) -> None:
        """The eval at `step`, its loss line, its time on a line of its own, and the checkpoint it may trigger."""
        t0 = time.perf_counter()
        losses = self.evaluate()
        eval_s = time.perf_counter() - t0
        self.logger.print(
            f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
            + "".join(f", {k} {v:.4f}" for k, v in losses.items() if k.startswith("val_n"))
        )
        self.logger.print(f"eval: {eval_s:.2f} s")
        self.logger.write({"step": step, "event": "eval", **losses, "eval_s": eval_s})
        summary.update(losses)
        improved = losses["val"] < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, losses["val"])
        if (improved or self.config.train.always_save_checkpoint) and step > start:
            save_s = self.save(step)
            self.logger.print(f"saving checkpoint at step {step} to {self.config.out_dir} ({save_s:.2f} s)")
            self.logger.write({"step": step, "event": "checkpoint", "save_s": save_s})

    def _measured(self, flop_per_s: float) -> None:
        """The first measured speed of the run: warn up front if the config is far too large for these devices."""
        self.speed = flop_per_s
        line = metrics.too_large_warning(
            self.config,
            self.model_config,
            flop_per_s,
            remaining_steps=self.config.train.max_iters - self.done_step,
            eval_depths=list(self.eval_steps),
            platform=jax.devices()[0].platform,
            n_devices=jax.device_count(),
        )
        if line:
            self._warn(line)

    def _flush(self, pending):
        """Fetch, check and log the metrics of a dispatched step; its time is the step's alone."""
        if pending is None:
            return None
        step, step_metrics, depth, t_dispatch, t_return = pending
        ready = step_metrics["loss"].is_ready()
        m = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
        t_fetched = time.perf_counter()
        dt, self._t_done = metrics.step_seconds(t_dispatch, t_return, t_fetched, ready, self._t_done)
        self._check_finite(step, m["loss"])
        if self.speed is None and dt > 0:
            self._measured(flops.flops_per_token(self.model_config, depth) * self.tokens_per_step / dt)
        if step % self.config.train.log_interval == 0:
            tok_s = self.tokens_per_step / dt if dt > 0 else float("nan")
            mfu = flops.mfu(self.model_config, tok_s, jax.device_count(), n_loop=depth)
            mfu_txt = f", mfu {100 * mfu:.2f}%" if mfu is not None else ""
            depth_txt = f", n_loop {depth}" if self.dynamic_depth else ""
            self.logger.print(
                f"iter {step}: loss {m['loss']:.4f}, time {dt * 1000:.2f}ms, tok/s {tok_s:,.0f}{mfu_txt}{depth_txt}"
            )
            record = {"step": step, "event": "train", **m, "time_ms": dt * 1000, "tokens_per_s": tok_s}
            self.logger.write({**record, "mfu": mfu, "n_loop": depth})
        return None


def trainer_class(config) -> type[Trainer]:
    """The Trainer for a config: LengthGenTrainer for a `lengthgen` section (a task with its own data and
    evaluation, lengthgen_train.py), else the language-modelling Trainer."""
    if "lengthgen" in config:
        from nanoloop_jax.tasks.lengthgen.task import LengthGenTrainer

        return LengthGenTrainer
    return Trainer
