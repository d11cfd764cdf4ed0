"""Where a run's TrainState comes from: fresh init, a nanoloop-jax checkpoint, or a nanoLOOP ckpt.pt.

Plain functions (nanodo's `_init_train_state` / `_restore_ckpt`), each returning a `Start`: the model
config, the state created sharded from birth on the mesh, its shardings (for the jitted steps) and the
best val loss so far. `start_state` picks one from config.init_from and what out_dir holds.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils

from nanoloop_jax import log, sharding
from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.config import model_config
from nanoloop_jax.errors import UserError
from nanoloop_jax.model.config import ARCH_FIELDS, EXTRA_ARCH_FIELDS, ModelConfig
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.train import resume
from nanoloop_jax.train.steps import TrainState, init_train_state

logger = log.get(__name__)

# Best val loss before any evaluation (nanoGPT's 1e9): the first eval always improves on it.
NO_VAL_LOSS = 1e9


class StartError(UserError):
    """The run cannot start from what init_from and out_dir say (one line for the user)."""


class Start(NamedTuple):
    """A run's starting point."""

    model_config: ModelConfig
    state: TrainState  # sharded as `shardings`
    shardings: TrainState  # of the state, from the params' logical axes and the mesh rules
    best_val_loss: float


def all_processes(flag: bool, how=np.all) -> bool:
    """`how` (np.all / np.any) of a flag over every process; the flag itself in a single-process run."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(how(multihost_utils.process_allgather(np.int32(flag))))


def model_config_for(config, data_meta: dict | None, ckpt_model: dict | None = None) -> ModelConfig:
    """config.model, with the vocabulary of a char-level dataset and the architecture of a checkpoint."""
    overrides = {}
    if data_meta and "stoi" in data_meta:
        overrides["vocab_size"] = int(data_meta["vocab_size"])  # char-level: the dataset defines the vocabulary
    if ckpt_model is not None:
        overrides.update({k: ckpt_model[k] for k in ARCH_FIELDS})
        overrides.update({k: ckpt_model[k] for k in EXTRA_ARCH_FIELDS if k in ckpt_model})
    mc = model_config(config.model, **overrides)
    data_vocab = int(data_meta["vocab_size"]) if data_meta and "vocab_size" in data_meta else None
    if data_vocab is not None and data_vocab > mc.vocab_size:
        raise StartError(
            f"the dataset has {data_vocab} token ids but the model's vocab_size is {mc.vocab_size}; "
            "use a checkpoint trained on this dataset or a larger model.vocab_size"
        )
    return mc


def state_shardings(mc: ModelConfig, tx: optax.GradientTransformation, mesh, rules) -> TrainState:
    """Shardings of the model's TrainState (shape-evaluated only)."""
    init_fn = functools.partial(init_train_state, LoopedGPT(mc), tx)
    return sharding.state_shardings(init_fn, jax.random.PRNGKey(0), mesh, rules)


def _step(step: int, shardings: TrainState) -> jax.Array:
    return jax.device_put(np.int32(step), shardings.step)


def init_state(mc: ModelConfig, tx: optax.GradientTransformation, seed: int, mesh, rules) -> Start:
    """Fresh params (from `seed`) and optimizer state, created directly on their shardings."""
    shardings = state_shardings(mc, tx, mesh, rules)
    model = LoopedGPT(mc)
    init = jax.jit(lambda k: init_train_state(model, tx, k), out_shardings=shardings)
    return Start(mc, init(jax.random.PRNGKey(seed)), shardings, NO_VAL_LOSS)


def state_from_nanoloop(config, data_meta: dict | None, tx: optax.GradientTransformation, mesh, rules) -> Start:
    """Weights of the nanoLOOP ckpt.pt at config.init_from, fresh AdamW moments, its iteration count."""
    from nanoloop_jax.ckpt import convert

    imported = convert.load_nanoloop_ckpt(config.init_from)
    mc = model_config_for(config, data_meta, imported["model_args"])
    shardings = state_shardings(mc, tx, mesh, rules)
    _, params = convert.from_nanoloop(imported["model"], imported["model_args"])
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    it = int(imported.get("iter_num", 0))
    logger.info(
        f"initialised from nanoLOOP checkpoint {config.init_from} at iter {it} "
        "(weights only: AdamW moments start fresh)"
    )
    state = TrainState(step=_step(it, shardings), params=params, opt_state=opt_state)
    return Start(mc, state, shardings, float(imported.get("best_val_loss", NO_VAL_LOSS)))


def restore_state(config, data_meta: dict | None, step: int, tx: optax.GradientTransformation, mesh, rules) -> Start:
    """Checkpoint `step` of config.out_dir: its model, params and (if saved) optimizer state, onto this mesh."""
    meta = checkpoint.read_meta(config.out_dir, step)
    resume.check_architecture(config, meta, config.out_dir)  # a UserError: restore_newest does not try older steps
    mc = model_config_for(config, data_meta, meta["model_config"])
    shardings = state_shardings(mc, tx, mesh, rules)
    abstract = jax.eval_shape(lambda k: init_train_state(LoopedGPT(mc), tx, k), jax.random.PRNGKey(0))
    mngr = checkpoint.manager(config.out_dir)
    try:
        params, opt_state, meta = checkpoint.restore(
            mngr,
            step,
            abstract_params=abstract.params,
            param_shardings=shardings.params,
            abstract_opt_state=abstract.opt_state,
            opt_shardings=shardings.opt_state,
        )
    finally:
        mngr.close()
    if opt_state is None:
        logger.info("checkpoint has no optimizer state (converted weights): AdamW moments start fresh")
        opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    state = TrainState(step=_step(meta["step"], shardings), params=params, opt_state=opt_state)
    return Start(mc, state, shardings, float(meta.get("best_val_loss", NO_VAL_LOSS)))


def restore_newest_state(config, data_meta, tx, mesh, rules) -> Start:
    """The newest checkpoint that restores; damaged newer ones are moved aside (orbax would not save over them)."""
    try:
        step, start = checkpoint.restore_newest(
            config.out_dir,
            lambda s: restore_state(config, data_meta, s, tx, mesh, rules),
            agree=all_processes,
            move_aside=jax.process_index() == 0,
        )
    except checkpoint.CheckpointError as err:
        raise StartError(
            f"{err}; if this run's architecture or opt.grad_clip differs from the checkpoint's, "
            "resume with the same ones or use a new out_dir"
        ) from None
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("unrestorable checkpoints moved")
    logger.info(f"resumed from step {step} (best val loss {start.best_val_loss:.4f})")
    if line := resume.changed_settings_line(config, checkpoint.read_meta(config.out_dir, step)):
        logger.info(line)
    return start


def start_state(config, data_meta, tx, mesh, rules) -> Start:
    """Resume if out_dir holds a checkpoint, else start as config.init_from says ('scratch' or a ckpt.pt)."""
    latest = checkpoint.latest_step(config.out_dir)
    if latest is not None:
        if config.init_from != "resume":
            logger.info(
                f"found a checkpoint at step {latest} in {config.out_dir}: resuming from it "
                "(use a new out_dir to start over)"
            )
        return restore_newest_state(config, data_meta, tx, mesh, rules)
    if config.init_from == "resume":
        raise StartError(f"init_from=resume but {config.out_dir} holds no checkpoint")
    if config.init_from == "scratch":
        return init_state(model_config_for(config, data_meta), tx, config.seed, mesh, rules)
    if config.init_from.endswith(".pt"):
        return state_from_nanoloop(config, data_meta, tx, mesh, rules)
    raise StartError(
        f"config.init_from must be 'scratch', 'resume' or a nanoLOOP ckpt.pt path, got {config.init_from!r}"
    )
