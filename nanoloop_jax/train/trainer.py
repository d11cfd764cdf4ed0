"""The training loop over a Task (tasks/base.py): jitted steps from a Start (state.py), periodic eval and
checkpoints, safe stops. It knows no task by name."""

from __future__ import annotations

import contextlib
import math
import time

import jax
import numpy as np

from nanoloop_jax import log, progress, sharding
from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.data.batches import Prefetcher
from nanoloop_jax.errors import UserError
from nanoloop_jax.model import flops
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.model.looped import describe as describe_model
from nanoloop_jax.tasks.base import Task
from nanoloop_jax.train import best_val, metrics
from nanoloop_jax.train.metrics import MetricsLogger
from nanoloop_jax.train.optim import lr_schedule, make_optimizer
from nanoloop_jax.train.preemption import Preemption
from nanoloop_jax.train.state import NO_VAL_LOSS, Start, all_processes

logger = log.get(__name__)

# Fold-in index of the evaluation key: far above any step index, so eval dropout/noise never reuses a step's.
EVAL_KEY_INDEX = 2**30


class TrainingError(UserError):
    """A run that must stop (divergence): one line for the user."""


class _Stop(Exception):
    """SIGTERM seen by some process, raised from a poll inside a phase (evaluation) to end the run."""


class Trainer:
    """Holds the mesh, the task, jitted steps and state of one run; `run()` trains to max_iters."""

    def __init__(self, config, start: Start, task: Task, mesh, rules, logger: MetricsLogger, preemption: Preemption):
        best_val.check(config.train)
        self.config, self.task, self.mesh, self.rules = config, task, mesh, rules
        self.logger, self.preemption = logger, preemption
        self.model_config, self.state, self.state_shardings, self.best_val_loss = start
        self.model = LoopedGPT(self.model_config)
        self.schedule, self.tx = lr_schedule(config.opt), make_optimizer(config.opt)
        self.key = jax.random.PRNGKey(config.seed)
        self._saving, self.speed, self._t_done = False, None, 0.0  # first measured FLOP/s; when the last step ended
        self.saved_step = self.done_step = int(jax.device_get(self.state.step))  # last checkpointed / trained step
        self._build_steps()
        self.mngr = checkpoint.manager(
            config.out_dir, max_to_keep=config.train.keep_checkpoints, async_save=config.train.async_checkpointing
        )
        self.best = best_val.BestVal(config) if config.train.final_eval == "best_val" else None
        preemption.watch(self._nothing_to_save, self._nothing_saved_line)

    def _build_steps(self) -> None:
        """Jit the task's pure steps with the state, batch and replicated shardings."""
        repl = sharding.replicated(self.mesh)
        self.batch_sharding = sharding.accum_batch_sharding(self.mesh, self.rules)
        self.eval_sharding = sharding.batch_sharding(self.mesh, self.rules)
        steps = self.task.steps(self.model, self.tx, self.schedule)
        self.train_step = sharding.jit_step(
            steps.train,
            self.mesh,
            self.rules,
            in_shardings=(self.state_shardings, self.batch_sharding, repl, repl),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=0,
        )
        self.eval_steps = {
            name: sharding.jit_step(
                eval_step,
                self.mesh,
                self.rules,
                in_shardings=(self.state_shardings.params, self.eval_sharding, repl, repl),
                out_shardings=repl,
            )
            for name, eval_step in steps.eval.items()
        }

    def _compile(self) -> float:
        """Compile the train and eval steps up front (seconds): later steps and evals then only run.

        So a compile never lands after steps were trained (where a SIGTERM would have to wait for it),
        and the first step's time is the step's alone.
        """
        t0 = time.perf_counter()
        if not self.config.train.eval_only and self.done_step < self.config.train.max_iters:
            batch = self._batch(self.task.batch_source().get(self.done_step), self.batch_sharding)
            depth = np.int32(self.task.depth(self.done_step))
            self.train_step.lower(self.state, batch, self.key, depth).compile()
        compiled = set()
        for job in self.task.eval_jobs():
            if job.step not in compiled:
                arrays, depth = job.batch(0)
                batch = self._batch(arrays, self.eval_sharding)
                self.eval_steps[job.step].lower(self.state.params, batch, self.key, np.int32(depth)).compile()
                compiled.add(job.step)
        return time.perf_counter() - t0

    # ---- pieces of the loop ------------------------------------------------------------------
    def _batch(self, arrays, sh) -> dict[str, jax.Array]:
        """{'x', 'y'[, 'mask']} global arrays from this process's rows."""
        return {k: sharding.global_array(a, sh) for k, a in zip(("x", "y", "mask"), arrays, strict=False)}

    def evaluate(self, may_skip: bool = False) -> dict[str, float] | None:
        """Mean loss over eval_iters batches of each of the task's eval jobs; a progress bar if it is slow.

        None (skipped) if `may_skip` and its first batch, the run's first measured speed, says the config is far
        too large for this machine: the warning is printed then, not after an evaluation of hours."""
        n_iters, jobs, out = self.config.train.eval_iters, self.task.eval_jobs(), {}
        eval_key = jax.random.fold_in(self.key, EVAL_KEY_INDEX)
        with progress.bar(
            total=len(jobs) * n_iters,
            desc="eval",
            unit="batch",
            delay=metrics.PROGRESS_DELAY_S,
            leave=False,
            disable=jax.process_index() != 0,
        ) as bar:
            for job in jobs:
                losses = []
                for i in range(n_iters):
                    t0 = time.perf_counter()
                    arrays, depth = job.batch(i)
                    batch = self._batch(arrays, self.eval_sharding)
                    loss = self.eval_steps[job.step](
                        self.state.params, batch, jax.random.fold_in(eval_key, i), np.int32(depth)
                    )
                    # fetched one by one: a SIGTERM is seen within one batch, and the bar moves
                    losses.append(float(loss))
                    if self.speed is None:  # the first batch of the run: a forward pass, timed
                        fwd = flops.flops_per_token(self.model_config, depth, backward=False) * self.task.eval_tokens
                        if self._measured(fwd / (time.perf_counter() - t0)) and may_skip:
                            return None
                    bar.update()
                    if self._stop_signalled():
                        raise _Stop
                out[job.name] = float(np.mean(losses))
        return out

    def _meta(self, step: int) -> dict:
        return {
            "step": int(step),
            "best_val_loss": float(self.best_val_loss),
            "model_config": checkpoint.config_to_dict(self.model_config),
            "config": checkpoint.config_json(self.config),
        }

    def save(self, step: int) -> float:
        """Save the state as checkpoint `step` (asynchronously where enabled); seconds the call blocked."""
        t0 = time.perf_counter()
        with self._writing():
            checkpoint.save(
                self.mngr, step, params=self.state.params, opt_state=self.state.opt_state, meta=self._meta(step)
            )
        self.saved_step = step
        return time.perf_counter() - t0

    @contextlib.contextmanager
    def _writing(self):
        """A checkpoint write in progress: the SIGTERM watchdog does not end the process during it."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

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
    def run(self, started: float | None = None) -> dict:
        """Train to train.max_iters (evaluating and checkpointing on the way); a summary of the run, also logged
        as its last line. `started`: the time.perf_counter() at which the run began (for its wall time)."""
        cfg, tcfg = self.config, self.config.train
        started = time.perf_counter() if started is None else started
        start = self.done_step
        summary = {"start_step": start, "end_step": start}
        if start >= tcfg.max_iters and not tcfg.eval_only:
            # before anything is compiled or evaluated: a finished run run again has nothing to do
            self.mngr.close()
            self.logger.close()
            summary["best_val_loss"] = self.best_val_loss
            logger.info(
                f"already at max_iters ({tcfg.max_iters}); nothing to train (checkpoint step {start} in "
                f"{checkpoint.ckpt_dir(cfg.out_dir)}; raise train.max_iters to train on)"
            )
            return summary
        if jax.process_index() == 0:
            checkpoint.write_run_config(cfg.out_dir, cfg)
        logger.info(describe_model(self.model_config, self.state.params))
        if line := self.task.describe():
            logger.info(line)
        logger.info(
            f"mesh: {dict(self.mesh.shape)} over {jax.device_count()} devices, "
            f"{jax.process_count()} processes; tokens per step: {self.task.tokens_per_step:,}"
        )
        logger.info(f"compiled the train and eval steps in {self._compile():.1f} s")
        prefetch = Prefetcher(self.task.batch_source(), start_step=start, stop_step=tcfg.max_iters)
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
                depth = self.task.depth(step)
                t_dispatch = time.perf_counter()
                self.state, step_metrics = self.train_step(self.state, batch, self.key, np.int32(depth))
                t_return, self.done_step = time.perf_counter(), step + 1
                # fetch the previous step's metrics only now, so the device already runs this step
                pending = self._flush(pending)
                pending = (step, step_metrics, depth, t_dispatch, t_return)
                if self._stop_signalled():
                    raise _Stop
            pending = self._flush(pending)
            summary.update(self.task.finish(self.model, *self._final_params()))
        except _Stop:
            self.preemption.take()
            pending = self._flush(pending)
            summary["preempted_at"] = self.done_step
            if self.done_step != self.saved_step:
                self.save(self.done_step)
                self.mngr.wait_until_finished()
                logger.info(f"SIGTERM: saved checkpoint at step {self.done_step}; exiting cleanly")
            else:
                logger.info(self._nothing_saved_line())
        finally:
            prefetch.close()
            self.mngr.wait_until_finished()
            self.mngr.close()
            self.logger.close()
        summary.update(best_val_loss=self.best_val_loss, end_step=self.done_step)
        logger.info(self._summary_line(summary, time.perf_counter() - started))
        return summary

    def _final_params(self) -> tuple:
        """(params, step) the task's final evaluation reads: the last step's, or the best val loss's."""
        if self.best is None:
            return self.state.params, self.done_step
        return self.best.params(self.done_step, self.state.params, sharding.replicated(self.mesh))

    def _summary_line(self, summary: dict, seconds: float) -> str:
        """The run's last line: steps, best val loss, wall time and where its newest checkpoint is."""
        start, end = summary["start_step"], summary["end_step"]
        how = "stopped by SIGTERM" if "preempted_at" in summary else "done"
        if self.config.train.eval_only:
            how = f"evaluated step {start}"
        steps = "" if self.config.train.eval_only else f": steps {start} -> {end} ({end - start} trained)"
        best = self.best_val_loss
        best_txt = f"best val loss {best:.4f}" if best < NO_VAL_LOSS else "no val loss yet"
        latest = checkpoint.latest_step(self.config.out_dir)
        where = (
            f"checkpoint step {latest} in {checkpoint.ckpt_dir(self.config.out_dir)}"
            if latest is not None
            else "no checkpoint written"
        )
        return f"{how}{steps} in {metrics.wall_time(seconds)}; {best_txt}; {where}"

    def _evaluate_and_save(self, step: int, start: int, summary: dict) -> None:
        """The eval at `step`, its loss line, its time on a line of its own, and the checkpoint it may trigger."""
        t0 = time.perf_counter()
        losses = self.evaluate(may_skip=step == start and not self.config.train.eval_only)
        eval_s = time.perf_counter() - t0
        if losses is None:
            logger.info(f"step {step}: evaluation skipped (see the warning above); training starts")
            return
        logger.info(
            f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
            + "".join(f", {k} {v:.4f}" for k, v in losses.items() if k.startswith("val_n"))
        )
        logger.info(f"eval: {eval_s:.2f} s")
        self.logger.write({"step": step, "event": "eval", **losses, "eval_s": eval_s})
        summary.update(losses)
        improved = losses["val"] < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, losses["val"])
        if improved and self.best is not None:
            with self._writing():
                self.best.save(step, self.state.params, self._meta(step))
        if (improved or self.config.train.always_save_checkpoint) and step > start:
            save_s = self.save(step)
            logger.info(f"saving checkpoint at step {step} to {self.config.out_dir} ({save_s:.2f} s)")
            self.logger.write({"step": step, "event": "checkpoint", "save_s": save_s})

    def _measured(self, flop_per_s: float) -> bool:
        """The first measured speed of the run: warn up front if the config is far too large for these devices
        (then True)."""
        self.speed = flop_per_s
        remaining = self.config.train.max_iters - self.done_step
        sampled = range(self.done_step, self.config.train.max_iters, max(1, remaining // 256))  # depth may vary
        line = metrics.too_large_warning(
            flop_per_s,
            platform=jax.devices()[0].platform,
            n_devices=jax.device_count(),
            model_config=self.model_config,
            remaining_steps=remaining,
            tokens_per_step=self.task.tokens_per_step,
            train_depths=[self.task.depth(s) for s in sampled],
            eval_tokens=self.task.eval_tokens,
            eval_iters=self.config.train.eval_iters,
            eval_interval=self.config.train.eval_interval,
            eval_depths=[job.batch(0)[1] for job in self.task.eval_jobs()],
        )
        if line:
            logger.warning(line)
        return line is not None

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
            self._measured(flops.flops_per_token(self.model_config, depth) * self.task.tokens_per_step / dt)
        if step % self.config.train.log_interval == 0:
            tok_s = self.task.tokens_per_step / dt if dt > 0 else float("nan")
            mfu = flops.mfu(self.model_config, tok_s, jax.device_count(), n_loop=depth)
            mfu_txt = f", mfu {100 * mfu:.2f}%" if mfu is not None else ""
            depth_txt = f", n_loop {depth}" if self.task.depth_varies else ""
            # a training objective's own metrics (the halting loss's final_loss, halt_iters, ...)
            extra_txt = "".join(f", {k} {v:.4f}" for k, v in m.items() if k not in ("loss", "grad_norm", "lr"))
            logger.info(
                f"iter {step}: loss {m['loss']:.4f}, time {dt * 1000:.2f}ms, tok/s {tok_s:,.0f}{mfu_txt}{depth_txt}"
                + extra_txt
            )
            record = {"step": step, "event": "train", **m, "time_ms": dt * 1000, "tokens_per_s": tok_s}
            self.logger.write({**record, "mfu": mfu, "n_loop": depth})
        return None
