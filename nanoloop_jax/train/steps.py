"""Pure train and eval steps: (state, batch, rng) -> (state, metrics). Jitted (with shardings) by the caller."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from nanoloop_jax.model.iterations import token_losses
from nanoloop_jax.model.looped import LoopedGPT


@struct.dataclass
class TrainState:
    """Everything that changes during training; a pytree, sharded as a whole."""

    step: jax.Array
    params: Any
    opt_state: Any


def init_train_state(model: LoopedGPT, tx: optax.GradientTransformation, key: jax.Array, boxed: bool = False):
    """Fresh params and optimizer state; boxed=True keeps logical-axis metadata (for eval_shape)."""
    variables = model.init({"params": key, "noise": key}, jnp.zeros((1, 1), jnp.int32))
    params = variables["params"] if boxed else nn.unbox(variables["params"])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array | None = None) -> jax.Array:
    """Mean token cross-entropy in float32 over positions with mask (and target >= 0, nanoGPT's ignore_index)."""
    losses, valid = token_losses(logits_BxTxV, targets_BxT, mask_BxT)
    return jnp.sum(losses) / jnp.maximum(jnp.sum(valid), 1)


def train_rngs(key: jax.Array) -> dict[str, jax.Array]:
    dropout, noise = jax.random.split(key)
    return {"dropout": dropout, "noise": noise}


LossFn = Callable[..., tuple[jax.Array, dict]]  # (params, x, y, mask, key, n_loop, step) -> (loss, metrics)


def model_loss(model: LoopedGPT) -> LossFn:
    """The plain objective: cross-entropy of the model's training forward (dropout on) at n_loop."""

    def loss_fn(params, x, y, mask, key, n_loop, step):
        del step
        logits = model.apply({"params": params}, x, train=True, n_loop=n_loop, rngs=train_rngs(key))
        return cross_entropy(logits, y, mask), {}

    return loss_fn


def make_train_step(
    model: LoopedGPT,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule | None = None,
    dynamic_depth: bool = False,
    loss_fn: LossFn | None = None,
    update_mask: Callable[[jax.Array], Any] | None = None,
):
    """train_step(state, batch, key, n_loop=None) for batch = {'x', 'y'[, 'mask']} of shape (accum, B, T).

    dynamic_depth=True: n_loop is a traced int32 (randomized depth), one compile for all depths; False: the
    model's n_loop runs and the argument is ignored (every task's step has the same signature, tasks/base.py).
    loss_fn(params, x, y, mask, key, n_loop, step) -> (loss, metrics) replaces model_loss(model) (lengthgen's
    variable-depth loop, the halting objectives); its metrics join the step's, averaged over micro-steps.
    update_mask(step) -> a params-shaped tree of 0/1: parameters whose updates are zeroed stay frozen (the
    optimizer state keeps its structure, so a run can freeze part of the model from any step and resume).

    Gradient accumulation runs inside the step as a lax.scan over the leading micro-step axis
    (mean of micro-batch gradients == the gradient of the mean loss, as nanoGPT's loss / accum).
    """
    grad_fn = jax.value_and_grad(loss_fn or model_loss(model), has_aux=True)
    add = functools.partial(jax.tree_util.tree_map, jnp.add)

    def train_step(state: TrainState, batch: dict, key: jax.Array, n_loop=None) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(key, state.step)
        n_loop = n_loop if dynamic_depth else None
        masks = batch["mask"] if "mask" in batch else jnp.ones_like(batch["x"])

        def grads_of(i, x, y, m):
            return grad_fn(state.params, x, y, m, jax.random.fold_in(step_key, i), n_loop, state.step)

        def micro(carry, inputs):
            (loss, aux), grads = grads_of(*inputs)
            return add(carry, (loss, aux, grads)), None

        (_, aux0), grads0 = jax.eval_shape(grads_of, 0, batch["x"][0], batch["y"][0], masks[0])
        zeros = jax.tree_util.tree_map(
            lambda a: jnp.zeros(a.shape, a.dtype), (jnp.zeros((), jnp.float32), aux0, grads0)
        )
        n_micro = batch["x"].shape[0]
        (loss_sum, aux_sum, grad_sum), _ = jax.lax.scan(
            micro, zeros, (jnp.arange(n_micro), batch["x"], batch["y"], masks)
        )
        grads = jax.tree_util.tree_map(lambda g: g / n_micro, grad_sum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        if update_mask is not None:
            updates = jax.tree_util.tree_map(lambda u, keep: u * keep, updates, update_mask(state.step))
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss_sum / n_micro, "grad_norm": optax.tree.norm(grads)}
        metrics.update({k: v / n_micro for k, v in aux_sum.items()})
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model: LoopedGPT, n_loop: int | None = None):
    """eval_step(params, batch, key, depth=None) -> mean loss of one (B, T) batch at n_loop, dropout off.

    depth is ignored (n_loop is static: one compile per depth); it is there for the tasks' common signature."""

    def eval_step(params, batch: dict, key: jax.Array, depth=None) -> jax.Array:
        del depth
        logits = model.apply({"params": params}, batch["x"], n_loop=n_loop, rngs={"noise": key})
        return cross_entropy(logits, batch["y"], batch.get("mask"))

    return eval_step
