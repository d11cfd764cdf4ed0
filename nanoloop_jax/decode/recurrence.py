"""The decoder's forward over KV caches: the model's own modules, driven per iteration with exit rules.

The sampler never rebuilds a block: it runs the model's forward (LoopedGPT.start, iterate, readout) with a
DecodeCache (model/cache.py) and decides, per iteration, which loop slot is used, which positions still
iterate, and what an exited position leaves in the cache.

Caches. LoopedGPT.init_cache lays them out: prelude, n_slots loop slots of n_block layers (n_slots =
n_loop, or K with kv_share=K: iteration i uses slot i mod K, Huginn's `compress-sK`, so the cache size does
not grow with n_loop), coda. Every cache is a ring: position p lives in entry p mod S and attends to
positions (p − block_size, p] (see cache_write).

Exit rules (DecodeConfig.exit_criterion, per position, exit_threshold ε traced): a position that has
computed at least min_loops iterations stops after iteration i when
  latent_diff: ‖s_i − s_{i−1}‖ / ‖s_i‖ < ε
  kl:          KL(p_i ‖ p_{i−1}) < ε, p_i = softmax(head(ln_f(s_i))) (Huginn's `kl`; the coda is not run)
  entropy:     |H(p_i) − H(p_{i−1})| < ε
  argmax:      argmax p_i equal to argmax p_{i−1} for exit_patience iterations in a row (ε unused)
  gate:        1 − Π_{j≤i} (1 − λ_j) ≥ ε, λ_j = sigmoid(halt_logit(s_j)): the learned exit gate's cumulative
               halting probability (model.exit_gate; the running log Π(1 − λ) is the carried statistic)
with s_{−1} the initial state. A skipped iteration runs no compute for that position; the cache slot of
a skipped iteration receives the K/V the position's last computed iteration wrote (the Huginn fill):
before iteration i runs, slot (i−1) mod n_slots is copied into slot i mod n_slots at these positions,
and the iteration overwrites the entries of the positions still active.

Exited rows cost nothing (compact_rows, off by default: it costs log2(B) more compiled iterations and gained
nothing on the trained models measured, BENCHMARKS.md; with an exit rule at batch B > 1, one position per row: decode
steps and the position-by-position loop of kv_share / warm_start). Each iteration gathers the rows
with a position still active into the smallest of the capacities B, ceil(B/2), ..., 1 that holds them
(their states, injections and this slot's caches), runs on those alone and scatters the new states and
the written cache entries back; padding rows (index B) are dropped by the scatter. Each capacity is a
lax.while_loop of at most one trip (a lax.cond would copy the caches), so one of them runs, and none once
every position has exited: the rest of the loop is skipped. Rows are independent in every layer, so this
changes no number: batch == alone holds as before (tested, and compacted == not compacted).

Prefill == decode. With per-iteration slots and a cold start, position p's iteration i reads earlier
positions' iteration-i entries whether they were computed in this call or an earlier one, so a window
is processed in one parallel pass. With kv_share or warm_start (s of position p starts from the final
s of position p−1, Huginn's `continuous_compute`) position p depends on earlier positions' *final*
states, so a window is processed position by position (a lax.scan of single-position passes) and
prefill still equals decode exactly. Only the loop needs that: the prelude and the coda of a window run in
one parallel pass either way (they depend on nothing but earlier positions' inputs and final states).

Dimension legend: B batch, T positions in this call, S cache slots, D n_embd, V vocab.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.model import kernels
from nanoloop_jax.model.cache import CacheWrite, DecodeCache, gather_rows, scatter_entries
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT

EXIT_CRITERIA = ("none", "latent_diff", "kl", "entropy", "argmax", "gate")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How the decoder runs the recurrence (static: one compilation per value)."""

    n_loop: int
    exit_criterion: str = "none"
    min_loops: int = 1  # no exit before this many iterations
    exit_patience: int = 2  # argmax: iterations in a row with an unchanged argmax
    kv_share: int = 0  # K > 0: iteration i uses cache slot i mod K (0: one slot per iteration)
    warm_start: bool = False  # a position's state starts from the previous position's final state
    compact_rows: bool = False  # with an exit rule, each iteration runs only the rows still active (see above)
    draft_n_loop: int = 0  # self-speculative decoding: draft with this many iterations (0: off)
    draft_tokens: int = 4  # tokens drafted per speculative round
    draft_exit: str = "none"  # the draft's own exit rule, stopping each drafted token within draft_n_loop iterations
    draft_threshold: float = 0.0  # its threshold (argmax: its patience, the draft's own exit_patience)

    def validate(self) -> DecodeConfig:
        """Raise ConfigError with one line for a bad setting or combination; return self."""
        if not isinstance(self.n_loop, int) or self.n_loop < 1:
            raise ConfigError(f"n_loop must be a positive integer, got {self.n_loop!r}")
        if self.exit_criterion not in EXIT_CRITERIA:
            raise ConfigError(
                f"unknown exit criterion {self.exit_criterion!r}; choose one of {', '.join(EXIT_CRITERIA)}"
            )
        if not 1 <= self.min_loops <= self.n_loop:
            raise ConfigError(f"min_loops must be in 1..n_loop ({self.n_loop}), got {self.min_loops}")
        if self.exit_patience < 1:
            raise ConfigError(f"exit_patience must be >= 1, got {self.exit_patience}")
        if not 0 <= self.kv_share <= self.n_loop:
            raise ConfigError(f"kv_share ({self.kv_share}) must be in 0..n_loop ({self.n_loop}); 0 turns sharing off")
        if self.draft_exit not in EXIT_CRITERIA:
            raise ConfigError(f"unknown draft exit rule {self.draft_exit!r}; choose one of {', '.join(EXIT_CRITERIA)}")
        if self.draft_exit != "none" and not self.draft_n_loop:
            raise ConfigError("a draft exit rule needs speculative decoding: set draft_n_loop (up to n_loop)")
        if self.draft_n_loop:
            if self.draft_exit != "none":  # an exit rule bounds the draft's cost: it may loop up to the full depth
                if not 1 <= self.draft_n_loop <= self.n_loop:
                    raise ConfigError(f"draft_n_loop ({self.draft_n_loop}) must be in 1..n_loop ({self.n_loop})")
            elif not 1 <= self.draft_n_loop < self.n_loop:
                raise ConfigError(f"draft_n_loop ({self.draft_n_loop}) must be in 1..n_loop-1 ({self.n_loop - 1})")
            if self.draft_tokens < 1:
                raise ConfigError(f"draft_tokens must be >= 1, got {self.draft_tokens}")
            if not self.parallel:
                raise ConfigError("speculative decoding verifies drafts in one parallel pass: drop kv_share/warm_start")
        return self

    @property
    def n_slots(self) -> int:
        """Cache slots per recurrent-block layer."""
        return self.kv_share or self.n_loop

    @property
    def parallel(self) -> bool:
        """Whether a window can be processed in one pass (see the module docstring)."""
        return self.n_slots == self.n_loop and not self.warm_start


def _capacities(b: int) -> tuple[int, ...]:
    """Row capacities an iteration can run at, largest first: b, ceil(b/2), ..., 1 (wasting < half a run)."""
    caps = [b]
    while caps[-1] > 1:
        caps.append((caps[-1] + 1) // 2)
    return tuple(caps)


class Pass(NamedTuple):
    """What one forward over T new positions returns."""

    logits: jax.Array  # float32 (B, T, V), or (B, 1, V) of position t_out alone
    cache: DecodeCache
    iters_BxT: jax.Array  # loop iterations computed per position
    s_last_BxD: jax.Array  # final recurrent state of the last valid position (the next warm start)


class _Iter(NamedTuple):
    """The per-position loop carry."""

    s_BxTxD: jax.Array
    active_BxT: jax.Array
    iters_BxT: jax.Array
    stat: jax.Array  # what the criterion compares: (B, T, V) log-probs, (B, T) entropy or argmax
    stable_BxT: jax.Array  # argmax: iterations in a row without a change


def cache_write(pos0, t: int, ring: int, window: int) -> CacheWrite:
    """Slots and mask for T new positions pos0.. in caches of `ring` entries: position p lives in entry p mod ring.

    Each new position attends to the cached positions in (p − window, p]: the whole context for learned
    positions (which never pass block_size), sliding-window attention in every layer for rope/none (window:
    ModelConfig.attn_span, the model's own attn_window where it has one, as its full forward). A ring
    longer than the window leaves room for speculative positions that may be rolled back. The T entries
    must not wrap around the end of the ring within one call (the decoder keeps to that).
    """
    last = pos0 + t - 1  # the newest position in the cache after this call
    pos_S = last - jnp.mod(jnp.mod(last, ring) - jnp.arange(ring), ring)  # the position each entry holds
    pos_T = pos0 + jnp.arange(t)
    mask_TxS = kernels.window_mask(pos_T, pos_S, True, window) & (pos_S[None] >= 0)  # >= 0: entries never written
    return CacheWrite(jnp.mod(pos0, ring), mask_TxS)


class Recurrence:
    """Cached forward passes of one model under one DecodeConfig (pure functions of params and caches)."""

    def __init__(self, config: ModelConfig, dc: DecodeConfig, vocab_limit: int | None = None) -> None:
        self.cfg, self.dc = config, dc.validate()
        if not config.causal:
            raise ConfigError(
                "this model attends both ways (model.causal=False: it answers a whole problem in one pass) and "
                "cannot decode token by token; evaluate it with python -m nanoloop_jax.tools.eval_lengthgen"
            )
        if dc.exit_criterion == "gate" and not config.exit_gate:
            raise ConfigError("--exit_criterion=gate needs a model with a learned exit gate (model.exit_gate=True)")
        self.model = LoopedGPT(config)
        self.vocab_limit = vocab_limit

    def init_cache(self, batch: int, entries: int) -> DecodeCache:
        """Zero caches of `entries` positions for this recurrence's loop slots."""
        return self.model.init_cache(batch, entries, self.dc.n_slots)

    def _m(self, params, method, *args, **kw):
        return self.model.apply({"params": params}, *args, method=method, **kw)

    def _stat(self, params, s_BxTxD) -> jax.Array:
        """What the exit criterion compares between iterations, for state s (Huginn: ln_f and head, no coda)."""
        crit = self.dc.exit_criterion
        if crit in ("none", "latent_diff"):
            return jnp.zeros(s_BxTxD.shape[:2], jnp.float32)
        if crit == "gate":  # this iteration's log(1 − λ); iteration() accumulates it
            return jax.nn.log_sigmoid(-self._m(params, LoopedGPT.halt_logit, s_BxTxD))
        logits_BxTxV = self._m(params, LoopedGPT.head, s_BxTxD, self.vocab_limit)  # ids < vocab_limit only
        if crit == "argmax":
            return jnp.argmax(logits_BxTxV, axis=-1).astype(jnp.float32)
        logp_BxTxV = jax.nn.log_softmax(logits_BxTxV, axis=-1)
        if crit == "kl":
            return logp_BxTxV
        p_BxTxV = jnp.exp(logp_BxTxV)
        return -jnp.sum(jnp.where(p_BxTxV > 0, p_BxTxV * logp_BxTxV, 0.0), axis=-1)  # entropy

    def _converged(self, old: _Iter, s_new, stat_new, eps) -> tuple[jax.Array, jax.Array]:
        """(exit now per position, argmax stable count) after an iteration from old.s to s_new."""
        crit = self.dc.exit_criterion
        stable = old.stable_BxT
        if crit == "none":
            done = jnp.zeros(old.active_BxT.shape, bool)
        elif crit == "latent_diff":
            delta = jnp.linalg.norm((s_new - old.s_BxTxD).astype(jnp.float32), axis=-1)
            done = delta / jnp.maximum(jnp.linalg.norm(s_new.astype(jnp.float32), axis=-1), 1e-30) < eps
        elif crit == "kl":
            p_new = jnp.exp(stat_new)
            kl = jnp.sum(jnp.where(p_new > 0, p_new * (stat_new - jnp.maximum(old.stat, -1e30)), 0.0), axis=-1)
            done = kl < eps
        elif crit == "entropy":
            done = jnp.abs(stat_new - old.stat) < eps
        elif crit == "gate":  # stat_new is the accumulated log prod (1 - lambda): halting probability >= eps
            done = -jnp.expm1(stat_new) >= eps
        else:  # argmax
            stable = jnp.where(stat_new == old.stat, stable + 1, 0)
            done = stable >= self.dc.exit_patience
        return done, stable

    def _loop(self, params, s_BxTxD, e_BxTxD, pos_T, active_BxT, cache: DecodeCache, at: CacheWrite, eps):
        """The n_loop iterations with their exit masks and Huginn fill: (final s, iterations, cache)."""
        dc = self.dc
        b, t = active_BxT.shape
        stat0 = jnp.zeros((b, t), jnp.float32) if dc.exit_criterion == "gate" else self._stat(params, s_BxTxD)
        carry = _Iter(s_BxTxD, active_BxT, jnp.zeros((b, t), jnp.int32), stat0, jnp.zeros((b, t), jnp.int32))
        # Without an exit rule only padding is ever inactive, and nothing reads a padding entry: every
        # position writes its K/V and no fill is needed (the plain decoder pays for neither).
        exits = dc.exit_criterion != "none"

        def iteration(c: _Iter, layers, e_BxTxD):
            s_new, layers = self._m(
                params, LoopedGPT.iterate, c.s_BxTxD, e_BxTxD, pos_T, None, layers,
                at._replace(write_BxT=c.active_BxT) if exits else at,
            )  # fmt: skip
            stat_new = self._stat(params, s_new)
            if dc.exit_criterion == "gate":
                stat_new = c.stat + stat_new
            done, stable = self._converged(c, s_new, stat_new, eps)
            keep = c.active_BxT
            iters = c.iters_BxT + keep.astype(jnp.int32)
            done = done & (iters >= dc.min_loops)
            new = _Iter(
                jnp.where(keep[..., None], s_new, c.s_BxTxD),
                keep & ~done,
                iters,
                jnp.where(keep.reshape(keep.shape + (1,) * (stat_new.ndim - 2)), stat_new, c.stat),
                jnp.where(keep, stable, c.stable_BxT),
            )
            return new, layers

        def compacted(c: _Iter, layers, cap: int):
            """The iteration over the `cap` rows still active, gathered (rows >= b pad), scattered back."""
            rows_R = jnp.nonzero(jnp.any(c.active_BxT, axis=1), size=cap, fill_value=b)[0]
            sub = jax.tree_util.tree_map(lambda x: jnp.take(x, rows_R, axis=0, mode="clip"), c)
            sub_layers = gather_rows(layers, rows_R, self.cfg.n_head)
            sub, sub_layers = iteration(sub, sub_layers, jnp.take(e_BxTxD, rows_R, axis=0, mode="clip"))
            c = jax.tree_util.tree_map(lambda x, y: x.at[rows_R].set(y, mode="drop"), c, sub)
            return c, scatter_entries(layers, rows_R, sub_layers, self.cfg.n_head, at.slot0, t)

        # one position per row (decoding, or a kv_share / warm_start window's position-by-position loop): a
        # window's rows rarely all exit early, and every capacity is one more compiled iteration
        caps = _capacities(b) if exits and dc.compact_rows and t == 1 else (b,)
        for i in range(dc.n_loop):
            slot, prev = i % dc.n_slots, (i - 1) % dc.n_slots
            if exits and i > 0 and slot != prev:  # the Huginn fill, overwritten below for the positions still active
                cache = cache.fill_slot(slot, prev, at.slot0, t)
            rows = jnp.sum(jnp.any(carry.active_BxT, axis=1))  # rows with a position still iterating
            layers = cache.slot(slot)
            for j, cap in enumerate(caps):
                # runs at most once, for the smallest capacity that holds the active rows; none once every
                # position has exited (a while_loop of at most one trip: lax.cond would copy the caches)
                fits = (rows > (caps[j + 1] if j + 1 < len(caps) else 0)) & (rows <= cap)
                step = (lambda c, ly: iteration(c, ly, e_BxTxD)) if cap == b else functools.partial(compacted, cap=cap)
                _, carry, layers = jax.lax.while_loop(
                    lambda st: st[0],
                    lambda st, step=step: (jnp.array(False), *step(st[1], st[2])),
                    (fits, carry, layers),
                )
            cache = cache.with_slot(slot, layers)
        return carry.s_BxTxD, carry.iters_BxT, cache

    def forward(
        self, params, tok_BxT, pos0, n_valid, cache: DecodeCache, s_warm_BxD, noise_key, eps, t_out=None
    ) -> Pass:
        """T new positions at pos0.. (positions >= n_valid are padding): start and readout in one parallel pass,
        the loop in one too or (kv_share / warm_start) one position at a time. t_out: see LoopedGPT.readout."""
        b, t = tok_BxT.shape
        pos_T = pos0 + jnp.arange(t)
        at = cache_write(pos0, t, cache.entries, self.cfg.attn_span)
        e_BxTxD, s_BxTxD, cache = self._m(
            params, LoopedGPT.start, tok_BxT, pos_T, None, cache, at, rngs={"noise": noise_key}
        )
        valid_BxT = jnp.broadcast_to(jnp.arange(t)[None] < n_valid, (b, t))
        if self.dc.parallel:
            s_BxTxD, iters_BxT, cache = self._loop(params, s_BxTxD, e_BxTxD, pos_T, valid_BxT, cache, at, eps)
            s_last_BxD = jax.lax.dynamic_index_in_dim(s_BxTxD, jnp.maximum(n_valid - 1, 0), 1, keepdims=False)
        else:

            def one(carry, x):
                cache, s_warm_BxD = carry
                t_idx, s_Bx1xD, e_Bx1xD, valid_Bx1 = x
                # the stream's first position starts cold, every later one from its predecessor's final state
                if self.dc.warm_start:
                    s_Bx1xD = jnp.where(pos0 + t_idx > 0, s_warm_BxD[:, None].astype(s_Bx1xD.dtype), s_Bx1xD)
                at_1 = cache_write(pos0 + t_idx, 1, cache.entries, self.cfg.attn_span)
                s_Bx1xD, iters_Bx1, cache = self._loop(
                    params, s_Bx1xD, e_Bx1xD, pos_T[t_idx][None], valid_Bx1, cache, at_1, eps
                )
                # a padding position computes no iteration and leaves the warm state alone
                s_warm_BxD = jnp.where(valid_Bx1, s_Bx1xD[:, 0], s_warm_BxD)
                return (cache, s_warm_BxD), (s_Bx1xD[:, 0], iters_Bx1[:, 0])

            xs = (
                jnp.arange(t),
                *(jnp.swapaxes(a, 0, 1)[:, :, None] for a in (s_BxTxD, e_BxTxD)),
                valid_BxT.T[:, :, None],
            )
            (cache, s_last_BxD), (s_TxBxD, iters_TxB) = jax.lax.scan(one, (cache, s_warm_BxD), xs)
            s_BxTxD, iters_BxT = jnp.swapaxes(s_TxBxD, 0, 1), iters_TxB.T
        logits, cache = self._m(params, LoopedGPT.readout, s_BxTxD, pos_T, None, cache, at, t_out)
        return Pass(logits, cache, iters_BxT, s_last_BxD)
