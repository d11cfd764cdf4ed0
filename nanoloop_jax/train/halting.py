"""Learned halting: the objectives over per-iteration losses and exit-gate logits (pure functions of arrays),
and the loss_fn that reads the loop out after every iteration (model/iterations.py) to apply them.

The model (model.exit_gate) gives, after loop iteration i (1-based), a halting logit h_i per position;
lambda_i = sigmoid(h_i) is the probability of stopping there given it did not stop before, so with d iterations
  p_i = lambda_i · prod_{j<i} (1 - lambda_j)   (i < d),      p_d = prod_{j<d} (1 - lambda_j)
(the last iteration takes the remaining mass). L_i is the per-position loss of the output read out after
iteration i (what the decoder emits when it exits there). The objectives (train.halting):
  ponder   sum_i p_i L_i + beta · KL(p || truncated Geometric(halting_prior))        (PonderNet, Banino 2021)
  ouro     sum_i p_i L_i - beta · H(p)                                  (Ouro / LoopLM stage I, arXiv 2510.25741)
and train.halting_stage = 2, the gate alone (Ouro's stage II; halting_freeze=False: the rest meanwhile keeps
training on the task's plain loss, read out at the task's depth): binary cross-entropy of lambda_i against
1 - w_i, w_i = sigmoid(k · (I_i - gamma)) the "worth continuing" probability of the detached loss improvement
  I_i = max(0, L_i - L_{i+1})               (halting_lookahead 'next': Ouro's one-step improvement)
  I_i = max(0, L_i - min_{j>i} L_j)         (halting_lookahead 'all': whatever later iterations still gain)
'next' is myopic where the loss plateaus before it drops (parity: chance until the last needed iteration).
Where wrong answers are confident and right ones lucky (parity's early iterations are right half the time,
with loss ~0), any loss-based target says "stop" at random; 'depth' instead supervises the stop with the
task's own training depth (lengthgen's T(n)): stop from it on, continue before it. 'prefix' (lengthgen) does
the same at every position where a shorter problem of the task would end (its answer slot), each with that
problem's depth: parity's gate learns to stop at j at every bit j, not only at T(n) on the '=' slot, so a
"done" signal has to travel along the sequence the way the parity information does (with halting_bce_trunk
the loop learns to carry it). Nothing of it is used at test time: the gate reads only the state. The last
iteration has no loss-based target (it cannot continue).

train.halting_stable (stage II beside the rest's training, halting_freeze=False): the rest's task loss is the
mean of L_i over the iterations from the task's depth to the last read out (lengthgen: T(n) .. T(n) +
halting_extra) instead of L at the task's depth alone, so the answer stays right after it (a fixed point):
a gate that stops late then costs nothing, and the gate only has to learn not to stop early. With the 'prefix'
lookahead it is scored on every shorter problem's answer too (parity: the parity of each prefix), each from
its own depth on: the loop learns a computation whose every position, once right, stays right.
train.halting_bce_trunk (stage II, halting_freeze=False): the gate's cross-entropy also reaches the states (the
gate is not detached), so the loop learns a "done" signal the gate's linear read can find; without it the gate
can only read what the task loss alone put in the state.

When: from step train.halting_start on (before it the task's plain loss); stage II also freezes every
parameter but the gate from then on (gate_only_updates).

Shapes: L iterations (the leading axis; iteration i < depth is valid, depth may be traced), then any
per-position axes (B, T). Valid positions are given as a mask of those axes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.model.iterations import iteration_outputs
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.train.steps import train_rngs

HALTINGS = ("none", "ponder", "ouro")
LOOKAHEADS = ("next", "all", "depth", "prefix")
OURO_K = 50.0  # Ouro stage II: slope of the continuation target's sigmoid
OURO_GAMMA = 0.005  # Ouro stage II: loss improvement (nats) that counts as worth an iteration


def _valid_iterations(n: int, depth) -> jax.Array:
    """(L,) bool: iteration i (0-based) < depth."""
    return jnp.arange(n) < depth


def _expand(v_L: jax.Array, like: jax.Array) -> jax.Array:
    return v_L.reshape(v_L.shape + (1,) * (like.ndim - 1))


def log_halting_probs(halt_logits_LxN: jax.Array, depth) -> jax.Array:
    """log p_i (L, ...) of stopping after iteration i with `depth` iterations run (-inf past depth)."""
    h = halt_logits_LxN.astype(jnp.float32)
    n = h.shape[0]
    valid = _expand(_valid_iterations(n, depth), h)
    last = _expand(jnp.arange(n) == depth - 1, h)
    log_continue = jnp.where(valid, jax.nn.log_sigmoid(-h), 0.0)
    # sum_{j<i} log(1 - lambda_j): an exclusive cumulative sum over iterations
    log_survive = jnp.cumsum(log_continue, axis=0) - log_continue
    log_p = jnp.where(last, log_survive, log_survive + jax.nn.log_sigmoid(h))
    return jnp.where(valid, log_p, -jnp.inf)


def log_geometric_prior(n: int, depth, prior: float) -> jax.Array:
    """log q_i (L,) of the geometric prior truncated at `depth` (its last iteration takes the tail's mass)."""
    i = jnp.arange(n, dtype=jnp.float32)
    log_q = i * jnp.log1p(-prior) + jnp.where(i == depth - 1, 0.0, jnp.log(prior))
    return jnp.where(_valid_iterations(n, depth), log_q, -jnp.inf)


def expected_iterations(p_LxN: jax.Array, mask_N: jax.Array) -> jax.Array:
    """Mean over valid positions of sum_i p_i · i (1-based): the iterations the halting distribution spends."""
    steps_N = jnp.sum(p_LxN * _expand(jnp.arange(1, p_LxN.shape[0] + 1, dtype=jnp.float32), p_LxN), axis=0)
    return _mean(steps_N, mask_N)


def _mean(x_N: jax.Array, mask_N: jax.Array) -> jax.Array:
    mask = mask_N.astype(jnp.float32)
    return jnp.sum(x_N * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def stage1_loss(
    losses_LxN: jax.Array, halt_logits_LxN: jax.Array, depth, mask_N: jax.Array, halting: str, beta: float, prior: float
) -> tuple[jax.Array, dict]:
    """(sum_i p_i L_i + beta · regularizer, averaged over valid positions; metrics)."""
    log_p = log_halting_probs(halt_logits_LxN, depth)
    p = jnp.exp(log_p)
    safe_log_p = jnp.where(p > 0, log_p, 0.0)
    expected_N = jnp.sum(p * losses_LxN.astype(jnp.float32), axis=0)
    if halting == "ponder":
        log_q = _expand(log_geometric_prior(p.shape[0], depth, prior), p)
        reg_N = jnp.sum(jnp.where(p > 0, p * (safe_log_p - jnp.where(p > 0, log_q, 0.0)), 0.0), axis=0)  # KL
    elif halting == "ouro":
        reg_N = jnp.sum(p * safe_log_p, axis=0)  # -H(p)
    else:
        raise ValueError(f"halting must be 'ponder' or 'ouro' here, got {halting!r}")
    expected = _mean(expected_N, mask_N)
    loss = expected + beta * _mean(reg_N, mask_N)
    return loss, {"expected_loss": expected, "halt_iters": expected_iterations(p, mask_N)}


def stable_loss(losses_LxN: jax.Array, mask_N: jax.Array, first, end) -> jax.Array:
    """Mean loss over the (iteration, valid position) pairs with first <= iteration <= end (1-based, may be traced;
    first may be per position: 'prefix' holds each position from its own depth on)."""
    i = _expand(jnp.arange(1, losses_LxN.shape[0] + 1), losses_LxN)
    window = (i >= first) & (i <= end) & mask_N[None].astype(bool)
    return _mean(losses_LxN.astype(jnp.float32), window)


def stage2_targets(losses_LxN: jax.Array, depth, lookahead: str, task_depth=None) -> tuple[jax.Array, jax.Array]:
    """(stop target 1 - w_i, has-target mask) per iteration from detached per-iteration losses; 'depth': 1 from
    the task's own depth on, 0 before it."""
    losses = jax.lax.stop_gradient(losses_LxN.astype(jnp.float32))
    n = losses.shape[0]
    valid = _expand(_valid_iterations(n, depth), losses)
    if lookahead == "depth":
        i = _expand(jnp.arange(n), losses)
        return jnp.broadcast_to((i >= task_depth - 1).astype(jnp.float32), losses.shape), valid
    masked = jnp.where(valid, losses, jnp.inf)
    if lookahead == "next":
        later = jnp.concatenate([masked[1:], jnp.full_like(masked[:1], jnp.inf)])
    elif lookahead == "all":  # min over j > i: a reversed cumulative min, shifted by one
        suffix_min = jax.lax.cummin(masked, axis=0, reverse=True)
        later = jnp.concatenate([suffix_min[1:], jnp.full_like(masked[:1], jnp.inf)])
    else:
        raise ValueError(f"lookahead must be one of {LOOKAHEADS}, got {lookahead!r}")
    has_target = valid & jnp.isfinite(later)  # every valid iteration but the last
    improvement = jnp.maximum(jnp.where(has_target, losses - later, 0.0), 0.0)
    w = jax.nn.sigmoid(OURO_K * (improvement - OURO_GAMMA))
    return 1.0 - w, has_target


def stage2_loss(
    losses_LxN: jax.Array, halt_logits_LxN: jax.Array, depth, mask_N: jax.Array, lookahead: str, task_depth=None
) -> tuple[jax.Array, dict]:
    """Mean binary cross-entropy of lambda_i against the stop target, over valid positions and iterations."""
    target, has_target = stage2_targets(losses_LxN, depth, lookahead, task_depth)
    h = halt_logits_LxN.astype(jnp.float32)
    bce = -(target * jax.nn.log_sigmoid(h) + (1.0 - target) * jax.nn.log_sigmoid(-h))
    both = has_target & mask_N[None].astype(bool)
    loss = _mean(bce, both)
    return loss, {"gate_bce": loss, "stop_target": _mean(target, both)}


class DepthPlan(NamedTuple):
    """Which iterations a halting step reads out (model/iterations.py): counts may be traced, maxima static."""

    n_detached: Any
    max_detached: int
    n_tracked: Any
    max_tracked: int
    task_depth: Any = None  # the iteration the task's plain loss reads (lengthgen: T(n)); None: the last

    @property
    def depth(self):
        """Iterations run: the halting distribution's support."""
        return self.n_detached + self.n_tracked


def loop_plan(model_config, n_loop) -> DepthPlan:
    """The language-modelling forward's iterations: truncated BPTT's detached ones, then bptt_k tracked ones;
    n_loop None is the model's own (static), else a traced depth (randomized depth, at most n_loop_max)."""
    if n_loop is None:
        n_detached, n_tracked = model_config.loop_split()
        return DepthPlan(n_detached, n_detached, n_tracked, n_tracked)
    k = model_config.bptt_k
    return DepthPlan(jnp.maximum(n_loop - k, 0), max(model_config.n_loop_max - k, 0), k, k)


def check_halting(tcfg, model_config) -> None:
    """One-line errors for train.halting* settings that cannot work with this model."""
    if tcfg.halting not in HALTINGS:
        raise ConfigError(f"train.halting must be one of {HALTINGS}, got {tcfg.halting!r}")
    if tcfg.halting == "none":
        return
    if not model_config.exit_gate:
        raise ConfigError(f"train.halting={tcfg.halting!r} trains the exit gate: set model.exit_gate=True")
    if tcfg.halting_stage not in (1, 2):
        raise ConfigError(f"train.halting_stage must be 1 or 2, got {tcfg.halting_stage!r}")
    if tcfg.halting_lookahead not in LOOKAHEADS:
        raise ConfigError(f"train.halting_lookahead must be one of {LOOKAHEADS}, got {tcfg.halting_lookahead!r}")
    if not 0 < tcfg.halting_prior < 1 or tcfg.halting_beta < 0 or tcfg.halting_start < 0 or tcfg.halting_extra < 0:
        raise ConfigError(
            "train.halting_prior must be in (0, 1) and halting_beta, halting_start, halting_extra >= 0, got "
            f"{tcfg.halting_prior}, {tcfg.halting_beta}, {tcfg.halting_start}, {tcfg.halting_extra}"
        )
    for name in ("halting_stable", "halting_bce_trunk"):
        if tcfg[name] not in (True, False):
            raise ConfigError(f"train.{name} must be True or False, got {tcfg[name]!r}")
    if tcfg.halting_bce_trunk and (tcfg.halting_stage != 2 or tcfg.halting_freeze):
        raise ConfigError(
            "train.halting_bce_trunk lets stage II's gate loss train the loop beside the task loss: it needs "
            f"halting_stage=2, halting_freeze=False (got {tcfg.halting_stage}, {tcfg.halting_freeze})"
        )
    if tcfg.halting_stable and (tcfg.halting_stage != 2 or tcfg.halting_freeze or not tcfg.halting_extra):
        raise ConfigError(
            "train.halting_stable trains the rest on iterations T(n)..T(n)+halting_extra beside the gate: it needs "
            f"halting_stage=2, halting_freeze=False, halting_extra > 0 (got {tcfg.halting_stage}, "
            f"{tcfg.halting_freeze}, {tcfg.halting_extra})"
        )


def make_halting_loss(
    model: LoopedGPT,
    tcfg,
    plan_of: Callable[[Any], DepthPlan],
    plain_loss,
    prefix_problems: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]] | None = None,
) -> Callable:
    """loss_fn(params, x, y, mask, key, n_loop, step) for steps.make_train_step: the plain loss before step
    train.halting_start, the halting objective from it on (a lax.cond: only one branch runs).
    prefix_problems(x, y) -> (depth, has one, answer) per position of the problem ending there: the 'prefix'
    lookahead's targets (the task's); with halting_stable the readouts are scored against those answers.

    Metrics of either branch: final_loss (the readout at the task's depth: the plain loss), halt_iters
    (expected iterations under p; stage 2: under the gate's own p) and halt_objective."""
    stage, lookahead = int(tcfg.halting_stage), tcfg.halting_lookahead
    prefix = stage == 2 and lookahead == "prefix"
    if prefix and prefix_problems is None:
        raise ConfigError(
            "train.halting_lookahead='prefix' needs a task whose positions end shorter problems (config.task="
            "'lengthgen'): use 'next', 'all' or 'depth'"
        )

    def halting_branch(params, x, y, mask, key, n_loop):
        plan = plan_of(n_loop)
        if prefix:  # every position that ends a problem, at that problem's depth
            gate_depth, gate_mask, prefix_answers = prefix_problems(x, y)
        out = model.apply(
            {"params": params},
            x,
            prefix_answers if prefix and tcfg.halting_stable else y,  # the readouts' targets
            mask,
            n_detached=plan.n_detached,
            max_detached=plan.max_detached,
            n_tracked=plan.n_tracked,
            max_tracked=plan.max_tracked,
            train=True,
            detach_gate=stage == 2 and not tcfg.halting_bce_trunk,
            method=iteration_outputs,
            rngs=train_rngs(key),
        )
        losses, halts, read = out
        valid = read & (y >= 0)  # the task's own answer positions
        task_depth = plan.depth if plan.task_depth is None else plan.task_depth
        final = _mean(jax.lax.dynamic_index_in_dim(losses, task_depth - 1, keepdims=False), valid)
        if stage == 1:
            loss, m = stage1_loss(losses, halts, plan.depth, valid, tcfg.halting, tcfg.halting_beta, tcfg.halting_prior)
        else:
            if prefix:
                gate, m = stage2_loss(losses, halts, plan.depth, gate_mask, "depth", gate_depth)
            else:
                gate, m = stage2_loss(losses, halts, plan.depth, valid, lookahead, task_depth)
            # Adam's step does not depend on the loss's scale, but grad_clip's global norm does: beta keeps
            # the gate's gradient from shrinking the rest's when they train together (halting_freeze=False)
            loss = tcfg.halting_beta * gate
            if tcfg.halting_stable and prefix:  # every prefix's answer, from its own depth to the last read out
                loss = loss + stable_loss(losses, read & gate_mask, gate_depth, plan.depth)
            elif tcfg.halting_stable:  # the answer must hold from the task's depth to the last iteration read out
                loss = loss + stable_loss(losses, valid, task_depth, plan.depth)
            elif not tcfg.halting_freeze:  # the rest keeps training on the task's plain loss meanwhile
                loss = loss + final
            p = jnp.exp(log_halting_probs(jax.lax.stop_gradient(halts), plan.depth))
            m = {**m, "halt_iters": expected_iterations(p, valid)}
        return loss, {"final_loss": final, "halt_iters": m["halt_iters"], "halt_objective": m.get("gate_bce", loss)}

    def loss_fn(params, x, y, mask, key, n_loop, step):
        if not tcfg.halting_start:
            return halting_branch(params, x, y, mask, key, n_loop)

        def plain(params):
            loss, _ = plain_loss(params, x, y, mask, key, n_loop, step)
            return loss, {"final_loss": loss, "halt_iters": jnp.float32(0), "halt_objective": jnp.float32(0)}

        return jax.lax.cond(
            step >= tcfg.halting_start, lambda p: halting_branch(p, x, y, mask, key, n_loop), plain, params
        )

    return loss_fn


def gate_only_updates(tcfg, params) -> Callable[[jax.Array], Any] | None:
    """Stage II freezes everything but the exit gate (from train.halting_start on): update_mask(step) for
    steps.make_train_step, or None when nothing is frozen."""
    if tcfg.halting == "none" or int(tcfg.halting_stage) != 2 or not tcfg.halting_freeze:
        return None

    def update_mask(step):
        gate_phase = step >= tcfg.halting_start
        return {
            name: jax.tree_util.tree_map(lambda _, keep=(name == "exit_gate"): jnp.where(gate_phase, keep, True), sub)
            for name, sub in params.items()
        }

    return update_mask
