"""The loop read out after every iteration: per-position loss and exit-gate logit of each iteration, for the
halting objectives (train/halting.py). Only a halting run pays for these readouts (one coda + head each).

The iterations run in two segments, each a lax.scan whose body is a lax.cond(i < count, iterate, skip), so
one compiled step serves every traced depth:
  detached   `n_detached` iterations (at most `max_detached`) whose states get no gradient (truncated BPTT:
             iterate under stop_gradient, so nothing is stored for a backward pass through the loop); their
             readouts and gates still get gradient, on the detached states (coda, ln_f, wte and the gate learn
             from every iteration; the recurrent block and prelude only through the second segment)
  tracked    `n_tracked` iterations (at most `max_tracked`) with gradient through the states
Iteration i (0-based, over both segments) draws dropout from fold_in(loop key, i) as LoopedGPT.__call__ does,
so the readout after the last iteration equals the model's training forward (tested).

Outputs are packed so that the iterations run come first: (L, B, T) with L = max_detached + max_tracked and
iteration i < n_detached + n_tracked valid.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from nanoloop_jax.model.layers import fold_rng
from nanoloop_jax.model.looped import LoopedGPT


class IterationOutputs(NamedTuple):
    """Per iteration (leading axis), per position."""

    losses_LxBxT: jax.Array  # cross-entropy of the readout after the iteration (0 where the target is ignored)
    halt_logits_LxBxT: jax.Array  # the exit gate's logit on the state after the iteration
    valid_BxT: jax.Array  # positions with a target (y >= 0 and mask > 0)


def token_losses(logits_BxTxV: jax.Array, y_BxT: jax.Array, mask_BxT: jax.Array | None = None):
    """(per-position cross-entropy in float32, valid positions): nanoGPT's ignore_index = -1 and the mask."""
    valid = y_BxT >= 0
    if mask_BxT is not None:
        valid = valid & (mask_BxT > 0)
    losses = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV.astype(jnp.float32), jnp.where(valid, y_BxT, 0)
    )
    return losses * valid, valid


def iteration_outputs(
    module: LoopedGPT,
    idx_BxT: jax.Array,
    y_BxT: jax.Array,
    mask_BxT: jax.Array | None,
    *,
    n_detached,
    max_detached: int,
    n_tracked,
    max_tracked: int,
    train: bool = False,
    detach_gate: bool = False,
) -> IterationOutputs:
    """Run the loop (see the module docstring) and read every iteration out. A LoopedGPT method: call it as
    model.apply(variables, idx, y, mask, ..., method=iteration_outputs, rngs=...), so its dropout and noise keys
    are the ones __call__ draws. detach_gate: the gate sees stop_gradient(s) (the halting loss of stage II then
    trains the gate alone)."""
    cfg = module.config
    rng = module.make_rng("dropout") if train and cfg.dropout > 0 else None
    pos_T = jnp.arange(idx_BxT.shape[1])
    e_BxTxD, s_BxTxD, _ = module.start(idx_BxT, pos_T, rng)
    loop_rng = fold_rng(rng, 2)
    # inside lax.scan / cond the model runs unbound on the same (traced) params, as _nograd_iterations does
    params = nn.unbox(module.variables["params"])
    unbound = LoopedGPT(cfg, parent=None)

    def iterate(s, i):
        return unbound.apply({"params": params}, s, e_BxTxD, pos_T, fold_rng(loop_rng, i), method=LoopedGPT.iterate)[0]

    if cfg.remat_policy not in (None, "none"):  # recompute each iteration's activations in the backward pass
        iterate = jax.checkpoint(iterate, policy=getattr(jax.checkpoint_policies, cfg.remat_policy))

    def readout(s):
        def run(m: LoopedGPT, s):
            h_BxT = m.halt_logit(jax.lax.stop_gradient(s) if detach_gate else s)
            return token_losses(m.readout(s, pos_T, rng)[0], y_BxT, mask_BxT)[0], h_BxT

        return unbound.apply({"params": params}, s, method=run)

    zeros = jnp.zeros(idx_BxT.shape, jnp.float32)

    def segment(s, first, count, length: int, detached: bool):
        def step(s, j):
            def run(s):
                s = iterate(s, first + j)
                s = jax.lax.stop_gradient(s) if detached else s
                return (s, *readout(s))

            s, loss, h = jax.lax.cond(j < count, run, lambda s: (s, zeros, zeros), s)
            return s, (loss, h)

        return jax.lax.scan(step, s, jnp.arange(length))

    if max_detached:
        s_BxTxD, (loss_a, h_a) = segment(jax.lax.stop_gradient(s_BxTxD), 0, n_detached, max_detached, True)
    else:
        loss_a = h_a = jnp.zeros((0, *idx_BxT.shape), jnp.float32)
    _, (loss_b, h_b) = segment(s_BxTxD, n_detached, n_tracked, max_tracked, False)
    # pack: the n_detached run iterations, then the tracked ones (skipped detached slots move to the end)
    n = max_detached + max_tracked
    j = jnp.arange(n)
    order = jnp.where(j < n_detached, j, jnp.minimum(j - n_detached + max_detached, n - 1))
    losses = jnp.concatenate([loss_a, loss_b])[order]
    halts = jnp.concatenate([h_a, h_b])[order]
    return IterationOutputs(losses, halts, token_losses(jnp.zeros((*idx_BxT.shape, 1)), y_BxT, mask_BxT)[1])
