"""Looped forward with a per-batch depth T(n), full backprop through it, and per-iteration answers for evaluation.

Fan et al. 2025 train with the loss only at the last of T(n) iterations and the gradient through all of
them. LoopedGPT.__call__'s traced-depth path runs n_loop - bptt_k iterations without gradient and always
exactly bptt_k with it, so it can give either full backprop (bptt_k >= every depth, but then every batch
runs bptt_k iterations, not T(n)) or T(n) iterations (with the first ones frozen), not both. Here the
loop is a lax.scan over max_depth iterations whose body is a lax.cond(i < depth, iterate, identity): one
compiled step for every depth, exactly T(n) iterations run forward and backward (cond executes one
branch), and every iteration gets its gradient. It runs the model's own forward steps (LoopedGPT.start,
iterate, halt_logit, readout), as __call__ and the decoder do, each as one apply (a lax.cond or scan body
cannot call a bound module).

Evaluation runs the loop once up to max_depth and reads the answer out after every iteration, so one
pass gives the accuracy at every n_loop and the confidence-based stop: per problem, the iteration whose
greedy answer has the highest probability (the sum of its tokens' max log-probabilities).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT, abstract_params
from nanoloop_jax.tasks.lengthgen import data as lengthgen_data
from nanoloop_jax.train import halting, steps


def check_model(config: ModelConfig) -> None:
    """One-line errors for model settings this path does not support."""
    if config.input_injection == "inject_random":
        raise ConfigError(
            "lengthgen runs need a deterministic initial state: model.input_injection 'inject' or 'passthrough'"
        )
    if config.dropout:
        raise ConfigError("lengthgen runs have no dropout: set model.dropout=0.0")


class _Forward:
    """LoopedGPT's forward steps over one window of T positions, each a pure function of params."""

    def __init__(self, model: LoopedGPT, params: Any, t: int) -> None:
        self.model, self.params, self.pos_T = model, params, jnp.arange(t)

    def _apply(self, method, *args):
        return self.model.apply({"params": self.params}, *args, method=method)

    def start(self, idx_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(e, s0)."""
        return self._apply(LoopedGPT.start, idx_BxT, self.pos_T)[:2]

    def iterate(self, s_BxTxD: jax.Array, e_BxTxD: jax.Array) -> jax.Array:
        return self._apply(LoopedGPT.iterate, s_BxTxD, e_BxTxD, self.pos_T)[0]

    def halt_logit(self, s_BxTxD: jax.Array) -> jax.Array:
        return self._apply(LoopedGPT.halt_logit, s_BxTxD)

    def readout(self, s_BxTxD: jax.Array) -> jax.Array:
        return self._apply(LoopedGPT.readout, s_BxTxD, self.pos_T)[0]


def logits_at_depth(model: LoopedGPT, params: Any, idx_BxT: jax.Array, depth: jax.Array, max_depth: int) -> jax.Array:
    """Logits (B, T, V) after `depth` (traced, 1..max_depth) iterations, differentiable through all of them."""
    p = _Forward(model, params, idx_BxT.shape[1])
    e_BxTxD, s_BxTxD = p.start(idx_BxT)

    def step(s, i):
        return jax.lax.cond(i < depth, lambda s: p.iterate(s, e_BxTxD), lambda s: s, s), None

    s_BxTxD, _ = jax.lax.scan(step, s_BxTxD, jnp.arange(max_depth))
    return p.readout(s_BxTxD)


def make_train_step(
    model: LoopedGPT, tx: optax.GradientTransformation, schedule: optax.Schedule, max_depth: int, tcfg=None, lg=None
):
    """train_step(state, batch, key, depth) -> (state, metrics): steps.make_train_step with the loss on y >= 0
    after `depth` (traced) iterations of logits_at_depth; with train.halting, the halting objective over the
    iterations 1..T(n) + train.halting_extra (full backprop, every one read out). lg: the lengthgen section,
    whose layout gives the 'prefix' lookahead's per-position depths."""

    def plain(params, x, y, mask, key, depth, step):
        return steps.cross_entropy(logits_at_depth(model, params, x, depth, max_depth), y, mask), {}

    loss_fn, update_mask = plain, None
    if tcfg is not None and tcfg.halting != "none":
        extra = int(tcfg.halting_extra)
        plan = lambda depth: halting.DepthPlan(0, 0, depth + extra, max_depth + extra, depth)  # noqa: E731
        loss_fn = halting.make_halting_loss(model, tcfg, plan, plain, None if lg is None else _prefix_problems_fn(lg))
        update_mask = halting.gate_only_updates(tcfg, abstract_params(model.config))
    return steps.make_train_step(model, tx, schedule, dynamic_depth=True, loss_fn=loss_fn, update_mask=update_mask)


def _prefix_problems_fn(lg):
    """(x, y) -> (depth, has one, answer) of the problem ending at each non-padding position (data.py)."""

    def prefix_problems(x_BxT: jax.Array, y_BxT: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        depth_T = jnp.asarray(lengthgen_data.prefix_depths(lg, x_BxT.shape[1]))
        answer_BxT = lengthgen_data.prefix_answers(lg, x_BxT, y_BxT)
        return jnp.broadcast_to(depth_T, x_BxT.shape), answer_BxT >= 0, answer_BxT

    return prefix_problems


def make_eval_step(model: LoopedGPT, max_depth: int):
    """eval_step(params, batch, key, depth) -> the mean loss of one (B, T) batch after `depth` (traced) iterations
    (no dropout or noise here: key is unused)."""

    def eval_step(params, batch: dict, key: jax.Array, depth: jax.Array) -> jax.Array:
        del key
        return steps.cross_entropy(logits_at_depth(model, params, batch["x"], depth, max_depth), batch["y"])

    return eval_step


GATE_THRESHOLD = 0.5  # the model's own stop: its gate's cumulative halting probability reaches this


def answers_per_iteration(
    model: LoopedGPT, params: Any, idx_BxT: jax.Array, y_BxT: jax.Array, n_iter: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(correct LxB, confidence LxB, halted LxB) after each of n_iter iterations: exact match of every answer
    slot; the log-probability of the greedy answer (sum over answer slots of the max log-softmax); and, for a
    model with an exit gate, the smallest cumulative halting probability 1 - prod_j (1 - lambda_j) over the
    answer slots (a problem stops once every answer slot would; zeros without a gate)."""
    p = _Forward(model, params, idx_BxT.shape[1])
    e_BxTxD, s_BxTxD = p.start(idx_BxT)
    answer_BxT = y_BxT >= 0
    gated = model.config.exit_gate

    def step(carry, _):
        s, log_survive_BxT = carry
        s = p.iterate(s, e_BxTxD)
        logp_BxTxV = jax.nn.log_softmax(p.readout(s), axis=-1)
        right_BxT = (jnp.argmax(logp_BxTxV, axis=-1) == y_BxT) | ~answer_BxT
        conf_B = jnp.sum(jnp.where(answer_BxT, jnp.max(logp_BxTxV, axis=-1), 0.0), axis=-1)
        if gated:
            log_survive_BxT = log_survive_BxT + jax.nn.log_sigmoid(-p.halt_logit(s))
        halted_B = jnp.min(jnp.where(answer_BxT, -jnp.expm1(log_survive_BxT), 1.0), axis=-1) if gated else conf_B * 0
        return (s, log_survive_BxT), (jnp.all(right_BxT, axis=-1), conf_B, halted_B)

    init = (s_BxTxD, jnp.zeros(idx_BxT.shape, jnp.float32))
    _, (correct_LxB, conf_LxB, halted_LxB) = jax.lax.scan(step, init, None, length=n_iter)
    return correct_LxB, conf_LxB, halted_LxB


def own_stop(conf_LxB: np.ndarray, halted_LxB: np.ndarray | None) -> np.ndarray:
    """The iteration (0-based) each problem stops at on its own: the first whose halting probability reaches
    GATE_THRESHOLD (the last if none does) with a gate; else the confidence stop (the most probable greedy
    answer; ties to the earliest)."""
    if halted_LxB is None:
        return np.argmax(conf_LxB, axis=0)
    reached_LxB = halted_LxB >= GATE_THRESHOLD
    return np.where(reached_LxB.any(axis=0), np.argmax(reached_LxB, axis=0), halted_LxB.shape[0] - 1)


def accuracies(
    correct_LxB: np.ndarray, conf_LxB: np.ndarray, halted_LxB: np.ndarray | None = None
) -> tuple[np.ndarray, float, float]:
    """(accuracy at n_loop 1..L, accuracy at the model's own stop (own_stop), its mean iterations)."""
    pick_B = own_stop(conf_LxB, halted_LxB)
    adaptive = float(np.mean(correct_LxB[pick_B, np.arange(correct_LxB.shape[1])]))
    return correct_LxB.mean(axis=1), adaptive, float(np.mean(pick_B + 1))
