"""The training loop: build sharded state, train with periodic eval/checkpoints, resume exactly, stop safely."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from nanoloop_jax import checkpoint, flops, sharding
from nanoloop_jax.config import model_config
from nanoloop_jax.data import EVAL_SEED_OFFSET, BatchSampler, Prefetcher, load_meta
from nanoloop_jax.depth import sample_depth
from nanoloop_jax.metrics import MetricsLogger
from nanoloop_jax.model import LoopedGPT
from nanoloop_jax.optim import lr_schedule, make_optimizer
from nanoloop_jax.prepare import ensure_prepared
from nanoloop_jax.steps import TrainState, init_train_state, make_eval_step, make_train_step

# nanoLOOP forces these from the checkpoint on resume: the parameter shapes depend on them.
ARCH_FIELDS = (
    "n_prelude",
    "n_block",
    "n_coda",
    "n_loop",
    "n_head",
    "n_embd",
    "block_size",
    "bias",
    "vocab_size",
    "input_injection",
)


class TrainingError(Exception):
    """A run that must stop (divergence, bad resume request): one line for the user."""


class AccumSampler:
    """(accum, B_local, T) batches: micro-step m of step s is the sampler's step s·accum + m."""

    def __init__(self, sampler: BatchSampler, accum: int) -> None:
        self.sampler, self.accum = sampler, accum

    def get(self, step: int) -> tuple[np.ndarray, ...]:
        parts = zip(*(self.sampler.get(step * self.accum + m) for m in range(self.accum)), strict=True)
        return tuple(np.stack(p) for p in parts)


def data_dir_of(config) -> str:
    return config.data.data_dir or os.path.join("data", config.data.dataset)


def _prepare_data(config) -> dict | None:
    """Prepare Shakespeare data if missing (process 0 first, then the others) and read meta.json."""
    data_dir = data_dir_of(config)
    if jax.process_index() == 0:
        ensure_prepared(config.data.dataset, data_dir)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("data prepared")
        ensure_prepared(config.data.dataset, data_dir)  # hosts without a shared filesystem
    return load_meta(data_dir)


def _resolve_start(config, logger: MetricsLogger) -> tuple[str, int | None]:
    """('scratch' | 'resume' | 'nanoloop', checkpoint step) from init_from and what out_dir holds."""
    latest = checkpoint.latest_step(config.out_dir)
    if latest is not None:
        if config.init_from != "resume":
            logger.print(
                f"found a checkpoint at step {latest} in {config.out_dir}: resuming from it "
                "(use a new out_dir to start over)"
            )
        return "resume", latest
    if config.init_from == "resume":
        raise TrainingError(f"init_from=resume but {config.out_dir} holds no checkpoint")
    if config.init_from == "scratch":
        return "scratch", None
    if config.init_from.endswith(".pt"):
        return "nanoloop", None
    raise TrainingError(
        f"config.init_from must be 'scratch', 'resume' or a nanoLOOP ckpt.pt path, got {config.init_from!r}"
    )


def _build_model_config(config, meta: dict | None, ckpt_model: dict | None):
    """config.model, with the vocabulary of a char-level dataset and the architecture of a checkpoint."""
    overrides = {}
    if meta and "stoi" in meta:
        overrides["vocab_size"] = int(meta["vocab_size"])  # char-level: the dataset defines the vocabulary
    if ckpt_model is not None:
        overrides.update({k: ckpt_model[k] for k in ARCH_FIELDS})
    mc = model_config(config.model, **overrides)
    data_vocab = int(meta["vocab_size"]) if meta and "vocab_size" in meta else None
    if data_vocab is not None and data_vocab > mc.vocab_size:
        raise TrainingError(
            f"the dataset has {data_vocab} token ids but the model's vocab_size is {mc.vocab_size}; "
            "use a checkpoint trained on this dataset or a larger model.vocab_size"
        )
    return mc


class Trainer:
    """Holds the mesh, jitted steps and state of one run; `run()` trains to max_iters."""

    def __new__(cls, config):
        # Length-generalization configs (a `lengthgen` section) have their own loop: nanoloop_jax/lengthgen_train.py.
        if cls is Trainer and "lengthgen" in config:
            from nanoloop_jax.lengthgen_train import LengthGenTrainer

            return LengthGenTrainer(config)
        return super().__new__(cls)

    def __init__(self, config) -> None:
        sharding.maybe_initialize_distributed(config.distributed)
        self.config = config
        os.makedirs(config.out_dir, exist_ok=True)
        self.logger = MetricsLogger(config.out_dir, config, config.wandb)
        meta = _prepare_data(config)
        self.start, step = _resolve_start(config, self.logger)
        ckpt_model, self.imported = None, None
        if self.start == "resume":
            ckpt_model = checkpoint.read_meta(config.out_dir, step)["model_config"]
        elif self.start == "nanoloop":
            from nanoloop_jax import convert

            self.imported = convert.load_nanoloop_ckpt(config.init_from)
            ckpt_model = self.imported["model_args"]
        self.model_config = _build_model_config(config, meta, ckpt_model)
        self.model = LoopedGPT(self.model_config)
        self.mesh = sharding.make_mesh(config.mesh)
        self.rules = sharding.logical_rules(config.mesh)
        self.schedule = lr_schedule(config.opt)
        self.tx = make_optimizer(config.opt)
        self.key = jax.random.PRNGKey(config.seed)
        self._build_state(step)
        self._build_steps()
        self._build_data()
        self.mngr = checkpoint.manager(
            config.out_dir, max_to_keep=config.train.keep_checkpoints, async_save=config.train.async_checkpointing
        )
        self.stop_requested = False

    # ---- set-up -------------------------------------------------------------------------------
    def _build_state(self, step: int | None) -> None:
        """State created sharded from birth: eval_shape -> logical specs -> jit(init, out_shardings)."""
        init_fn = functools.partial(init_train_state, self.model, self.tx)
        self.state_shardings = sharding.state_shardings(init_fn, self.key, self.mesh, self.rules)
        abstract = jax.eval_shape(lambda k: init_train_state(self.model, self.tx, k), self.key)
        self.best_val_loss = 1e9
        init = jax.jit(lambda k: init_train_state(self.model, self.tx, k), out_shardings=self.state_shardings)
        if self.start == "scratch":
            self.state = init(self.key)
            return
        if self.start == "nanoloop":
            from nanoloop_jax import convert

            _, params = convert.from_nanoloop(self.imported["model"], self.imported["model_args"])
            params = jax.device_put(params, self.state_shardings.params)
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
            it = int(self.imported.get("iter_num", 0))
            self.state = TrainState(
                step=jax.device_put(np.int32(it), self.state_shardings.step), params=params, opt_state=opt_state
            )
            self.best_val_loss = float(self.imported.get("best_val_loss", 1e9))
            self.logger.print(
                f"initialised from nanoLOOP checkpoint {self.config.init_from} at iter {it} "
                "(weights only: AdamW moments start fresh)"
            )
            return
        mngr = checkpoint.manager(self.config.out_dir)
        with_opt = checkpoint.has_opt_state(self.config.out_dir, step)
        try:
            params, opt_state, meta = checkpoint.restore(
                mngr,
                step,
                abstract_params=abstract.params,
                param_shardings=self.state_shardings.params,
                abstract_opt_state=abstract.opt_state if with_opt else None,
                opt_shardings=self.state_shardings.opt_state,
            )
        except ValueError as err:
            raise TrainingError(
                f"the checkpoint at step {step} in {self.config.out_dir} does not fit this run's model/optimizer "
                f"({str(err).splitlines()[0]}); resume with the same architecture and opt.grad_clip, "
                "or use a new out_dir"
            ) from None
        finally:
            mngr.close()
        if opt_state is None:
            self.logger.print("checkpoint has no optimizer state (converted weights): AdamW moments start fresh")
            opt_state = jax.jit(self.tx.init, out_shardings=self.state_shardings.opt_state)(params)
        self.state = TrainState(
            step=jax.device_put(np.int32(meta["step"]), self.state_shardings.step), params=params, opt_state=opt_state
        )
        self.best_val_loss = float(meta.get("best_val_loss", 1e9))
        self.logger.print(f"resumed from step {meta['step']} (best val loss {self.best_val_loss:.4f})")

    def _build_steps(self) -> None:
        repl = sharding.replicated(self.mesh)
        self.batch_sharding = sharding.accum_batch_sharding(self.mesh, self.rules)
        self.eval_sharding = sharding.batch_sharding(self.mesh, self.rules)
        self.dynamic_depth = self.model_config.loop_sampling != "fixed"
        self.train_step = sharding.jit_step(
            make_train_step(self.model, self.tx, self.schedule, dynamic_depth=self.dynamic_depth),
            self.mesh,
            self.rules,
            in_shardings=(self.state_shardings, self.batch_sharding, repl) + ((repl,) if self.dynamic_depth else ()),
            out_shardings=(self.state_shardings, repl),
            donate_argnums=0,
        )
        self.eval_steps = {}
        for n_loop in self._eval_depths():
            self.eval_steps[n_loop] = sharding.jit_step(
                make_eval_step(self.model, n_loop),
                self.mesh,
                self.rules,
                in_shardings=(self.state_shardings.params, self.eval_sharding, repl),
                out_shardings=repl,
            )

    def _eval_depths(self) -> list[int]:
        extra = [int(s) for s in str(self.config.train.eval_n_loops).split(",") if s.strip()]
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
        train = BatchSampler(data_dir_of(cfg), "train", seed=cfg.seed, **kw)
        self.train_batches = AccumSampler(train, cfg.data.gradient_accumulation_steps)
        self.eval_samplers = {
            s: BatchSampler(data_dir_of(cfg), s, seed=cfg.seed + EVAL_SEED_OFFSET, **kw) for s in ("train", "val")
        }
        self.tokens_per_step = cfg.data.batch_size * cfg.data.gradient_accumulation_steps * self.model_config.block_size

    # ---- pieces of the loop ------------------------------------------------------------------
    def _batch(self, arrays, sh) -> dict[str, jax.Array]:
        """{'x', 'y'[, 'mask']} global arrays from this process's rows."""
        return {k: sharding.global_array(a, sh) for k, a in zip(("x", "y", "mask"), arrays, strict=False)}

    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_iters batches of train and val (and val at extra depths)."""
        out = {}
        eval_key = jax.random.fold_in(self.key, 2**30)
        for n_loop, eval_step in self.eval_steps.items():
            splits = ("train", "val") if n_loop == self.model_config.n_loop else ("val",)
            for split in splits:
                losses = []
                for i in range(self.config.train.eval_iters):
                    batch = self._batch(self.eval_samplers[split].get(i), self.eval_sharding)
                    losses.append(eval_step(self.state.params, batch, jax.random.fold_in(eval_key, i)))
                name = split if n_loop == self.model_config.n_loop else f"val_n_loop_{n_loop}"
                out[name] = float(np.mean(jax.device_get(losses)))
        return out

    def save(self, step: int) -> None:
        meta = {
            "step": int(step),
            "best_val_loss": float(self.best_val_loss),
            "model_config": checkpoint.config_to_dict(self.model_config),
            "config": json.loads(self.config.to_json_best_effort()),
        }
        checkpoint.save(self.mngr, step, params=self.state.params, opt_state=self.state.opt_state, meta=meta)
        self.logger.print(f"saving checkpoint at step {step} to {self.config.out_dir}")

    def _stop_signalled(self) -> bool:
        """SIGTERM seen by any process (all processes must agree to save the same step)."""
        if jax.process_count() == 1:
            return self.stop_requested
        return bool(np.any(multihost_utils.process_allgather(np.int32(self.stop_requested))))

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
        cfg, tcfg = self.config, self.config.train
        if jax.process_index() == 0:
            with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
                f.write(cfg.to_json_best_effort(indent=2))
        self.logger.print(f"model: {self.model_config}")
        self.logger.print(
            f"mesh: {dict(self.mesh.shape)} over {jax.device_count()} devices, "
            f"{jax.process_count()} processes; tokens per step: {self.tokens_per_step:,}"
        )
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        start = int(jax.device_get(self.state.step))
        prefetch = Prefetcher(self.train_batches, start_step=start, stop_step=tcfg.max_iters)
        pending, summary, self._t_last = None, {"start_step": start}, time.time()
        try:
            for step in range(start, tcfg.max_iters + 1):
                if step % tcfg.eval_interval == 0 or step == tcfg.max_iters:
                    pending = self._flush(pending)
                    losses = self.evaluate()
                    self.logger.print(
                        f"step {step}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}"
                        + "".join(f", {k} {v:.4f}" for k, v in losses.items() if k.startswith("val_n"))
                    )
                    self.logger.write({"step": step, "event": "eval", **losses})
                    summary.update(losses)
                    improved = losses["val"] < self.best_val_loss
                    self.best_val_loss = min(self.best_val_loss, losses["val"])
                    if (improved or tcfg.always_save_checkpoint) and step > start:
                        self.save(step)
                    if tcfg.eval_only:
                        break
                if step == tcfg.max_iters:
                    break
                _, *arrays = next(prefetch)
                batch = self._batch(arrays, self.batch_sharding)
                depth = sample_depth(self.model_config, cfg.seed, step)
                extra = (np.int32(depth),) if self.dynamic_depth else ()
                self.state, metrics = self.train_step(self.state, batch, self.key, *extra)
                # fetch the previous step's metrics only now, so the device already runs this step
                pending = self._flush(pending)
                pending = (step, metrics, depth)
                if self._stop_signalled():
                    pending = self._flush(pending)
                    self.save(step + 1)
                    self.mngr.wait_until_finished()
                    self.logger.print(f"SIGTERM: saved checkpoint at step {step + 1}; exiting cleanly")
                    summary["preempted_at"] = step + 1
                    break
            pending = self._flush(pending)
        finally:
            prefetch.close()
            self.mngr.wait_until_finished()
            self.mngr.close()
            self.logger.close()
            signal.signal(signal.SIGTERM, previous)
        summary["best_val_loss"] = self.best_val_loss
        return summary

    def _flush(self, pending):
        """Fetch, check and log the metrics of a dispatched step."""
        if pending is None:
            return None
        step, metrics, depth = pending
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self._check_finite(step, m["loss"])
        now = time.time()
        dt, self._t_last = now - self._t_last, now
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

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self.stop_requested = True
