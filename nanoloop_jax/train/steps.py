"""Pure train and eval steps: (state, batch, rng) -> (state, metrics). Jitted (with shardings) by the caller."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

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
    valid = targets_BxT >= 0
    if mask_BxT is not None:
        valid = valid & (mask_BxT > 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV.astype(jnp.float32), jnp.where(valid, targets_BxT, 0)
    )
    return jnp.sum(losses * valid) / jnp.maximum(jnp.sum(valid), 1)


def _rngs(key: jax.Array) -> dict[str, jax.Array]:
    dropout, noise = jax.random.split(key)
    return {"dropout": dropout, "noise": noise}


def make_train_step(
    model: LoopedGPT,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule | None = None,
    dynamic_depth: bool = False,
    logits_fn=None,
):
    """train_step(state, batch, key[, n_loop]) for batch = {'x', 'y'[, 'mask']} of shape (accum, B, T).

    dynamic_depth=True adds a traced int32 n_loop argument (randomized depth): one compile for all depths.
    logits_fn(params, x, key, n_loop) replaces the model's training forward (lengthgen.py's full-backprop
    variable-depth loop); the default is model.apply in train mode.

    Gradient accumulation runs inside the step as a lax.scan over the leading micro-step axis
    (mean of micro-batch gradients == the gradient of the mean loss, as nanoGPT's loss / accum).
    """

    def train_logits(params, x, key, n_loop):
        return model.apply({"params": params}, x, train=True, n_loop=n_loop, rngs=_rngs(key))

    forward = logits_fn or train_logits

    def loss_fn(params, x, y, mask, key, n_loop):
        return cross_entropy(forward(params, x, key, n_loop), y, mask)

    grad_fn = jax.value_and_grad(loss_fn)

    def train_step(state: TrainState, batch: dict, key: jax.Array, n_loop=None) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(key, state.step)
        n_micro = batch["x"].shape[0]
        mask = batch.get("mask")

        def micro(carry, inputs):
            loss_sum, grad_sum = carry
            i, x, y, m = inputs
            loss, grads = grad_fn(state.params, x, y, m, jax.random.fold_in(step_key, i), n_loop)
            return (loss_sum + loss, jax.tree_util.tree_map(jnp.add, grad_sum, grads)), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        masks = mask if mask is not None else jnp.ones_like(batch["x"])
        (loss_sum, grad_sum), _ = jax.lax.scan(
            micro, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(n_micro), batch["x"], batch["y"], masks)
        )
        grads = jax.tree_util.tree_map(lambda g: g / n_micro, grad_sum)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss_sum / n_micro, "grad_norm": optax.tree.norm(grads)}
        if schedule is not None:
            metrics["lr"] = schedule(state.step)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    if dynamic_depth:
        return train_step
    return lambda state, batch, key: train_step(state, batch, key)


def make_eval_step(model: LoopedGPT, n_loop: int | None = None):
    """eval_step(params, batch, key) -> mean loss of one (B, T) batch, dropout off."""

    def eval_step(params, batch: dict, key: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, batch["x"], n_loop=n_loop, rngs={"noise": key})
        return cross_entropy(logits, batch["y"], batch.get("mask"))

    return eval_step
