"""Fast sampling: a jitted prefill, then decode steps in a lax loop over per-layer KV caches.

The recurrence itself (which modules run, cache slots, exit rules, kv_share, warm start) is
recurrence.Recurrence, which calls the model's own modules; this module decides what is fed when:
windows, chunks of decode steps, token choice and self-speculative decoding.

Context window. The prompt keeps its last block_size tokens (as nanoGPT crops). With learned absolute
positions a token's K/V depend on its position in the window, so they cannot be reused once the window
slides. Past block_size, window="slide" (the default) does what nanoLOOP's generate does: every new
token is predicted from the last block_size tokens, re-prefilled in one jitted call per token (exact,
at the cost of a full forward per token). window="restart" restarts the window from the last
block_size // 2 tokens (at positions 0..), re-prefilled once per block_size // 2 tokens: every token
sees at least block_size // 2 tokens of context, at KV-cache speed. With rope or no positions (NoPE)
K/V do not depend on the window, so the caches are rings (recurrence.cache_write): every layer attends
to the last block_size positions (sliding-window attention), decoded at KV-cache speed forever. The
windows depend on the token count alone, so the host knows when a prefill is due and the jitted loops
need no branch.

Self-speculative decoding (draft_n_loop = D, draft_tokens = L): a round drafts L tokens with the same
model looped D times (prelude, loop slots 0..D-1 and coda of the shared cache: DecodeCache.first_slots), or,
with a draft exit rule (draft_exit, e.g. kl), up to D iterations (D may be n_loop), each drafted token
stopping by that rule: a drafted token then costs what an exiting token costs, and agrees with the full
depth as often as the rule's stop does. Then it runs all L + 1 positions through the full depth in one pass
(which rewrites every cache entry of those positions) and keeps the longest prefix the full model agrees
with, plus one token of its own (speculation.py: greedy and sampled acceptance, batch-wide prefix).
Rejected positions are rolled back by the position counter alone: nothing attends past it and the next
round overwrites them.

Dimension legend: B batch, T positions in this call, S cache slots (block_size), D n_embd, V vocab,
C decode steps in a chunk, L draft tokens, N new tokens, P prompt length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nanoloop_jax import log
from nanoloop_jax.decode.recurrence import DecodeConfig, Recurrence
from nanoloop_jax.decode.speculation import accept_greedy, accept_sampled, emitted_tokens
from nanoloop_jax.model.cache import DecodeCache
from nanoloop_jax.model.config import ModelConfig

logger = log.get(__name__)
WINDOWS = ("slide", "restart")  # past block_size with learned positions (rope/none always slide, cached)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How a token is drawn from logits; temperature 0 is greedy (argmax)."""

    temperature: float = 0.8
    top_k: int | None = 200  # keep the top_k most likely tokens; None or 0: no top-k filter
    top_p: float | None = None  # nucleus: smallest set with probability >= top_p; None or 1: off
    vocab_limit: int | None = None  # ids >= this (vocab padding past the tokenizer's) are never drawn


def filter_logits(
    logits_BxV: jax.Array, *, top_k: int | None = None, top_p: float | None = None, vocab_limit: int | None = None
) -> jax.Array:
    """Logits with -inf outside ids < vocab_limit, the top_k largest and the top_p nucleus (ties kept)."""
    v = logits_BxV.shape[-1]
    if vocab_limit is not None and vocab_limit < v:
        logits_BxV = jnp.where(jnp.arange(v) < vocab_limit, logits_BxV, -jnp.inf)
    if top_k and top_k < min(v, vocab_limit or v):
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][..., -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
    if top_p is not None and top_p < 1.0:
        sorted_BxV = jnp.flip(jnp.sort(logits_BxV, axis=-1), axis=-1)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        # keep a token while the mass of the more likely ones is still short of top_p: the first always stays
        keep_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p
        cutoff_Bx1 = jnp.min(jnp.where(keep_BxV, sorted_BxV, jnp.inf), axis=-1, keepdims=True)
        logits_BxV = jnp.where(logits_BxV < cutoff_Bx1, -jnp.inf, logits_BxV)
    return logits_BxV


def sample_token(logits_BxV: jax.Array, key: jax.Array, sc: SampleConfig) -> jax.Array:
    """One token id per row (int32): argmax at temperature 0, else a draw from the filtered distribution."""
    if sc.temperature == 0:
        return jnp.argmax(filter_logits(logits_BxV, vocab_limit=sc.vocab_limit), axis=-1).astype(jnp.int32)
    logits_BxV = filter_logits(logits_BxV / sc.temperature, top_k=sc.top_k, top_p=sc.top_p, vocab_limit=sc.vocab_limit)
    return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


def token_probs(logits_BxV: jax.Array, sc: SampleConfig) -> jax.Array:
    """The distribution sample_token draws from at temperature > 0 (after temperature, top_k, top_p)."""
    logits_BxV = filter_logits(logits_BxV / sc.temperature, top_k=sc.top_k, top_p=sc.top_p, vocab_limit=sc.vocab_limit)
    return jax.nn.softmax(logits_BxV, axis=-1)


class DecodeState(NamedTuple):
    """What a decode step carries: n_ctx positions are in the caches; `pending` is sampled but not yet fed."""

    cache: DecodeCache
    pending_B: jax.Array  # the last sampled token, fed at the next step
    n_ctx: jax.Array  # int32 scalar
    n_new: jax.Array  # int32 scalar: tokens sampled so far (indexes the sampling key)
    s_last_BxD: jax.Array  # final recurrent state of the last fed position (warm start)


class Generation(NamedTuple):
    """Sampled tokens, the loop iterations behind each, and (optionally) the logits they came from."""

    tokens_BxN: np.ndarray
    iters_BxN: np.ndarray
    logits_BxNxV: np.ndarray | None


def _split_key(key: jax.Array, noise_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(sampling key, inject_random noise key); the noise key is derived from key unless given."""
    sample_key, derived = jax.random.split(key)
    return sample_key, derived if noise_key is None else noise_key


def _threshold(exit_threshold: float | None) -> np.float32:
    """The exit threshold as a traced value, so every threshold shares one compilation."""
    if exit_threshold is not None and not exit_threshold >= 0:
        raise ValueError(f"exit_threshold must be None or >= 0, got {exit_threshold!r}")
    return np.float32(exit_threshold or 0.0)


def padded_length(n: int, multiple: int, cap: int) -> int:
    """n rounded up to a multiple, at most cap: few distinct shapes, so few compilations."""
    return min(cap, -(-n // multiple) * multiple)


# Seconds this process has spent compiling (tracing, lowering to MLIR, XLA compile), from jax.monitoring's events.
_COMPILE_EVENTS = tuple(
    f"/jax/core/compile/{e}_duration" for e in ("jaxpr_trace", "jaxpr_to_mlir_module", "backend_compile")
)
_compile_seconds = 0.0


def _count_compile(event: str, duration: float, **_) -> None:
    global _compile_seconds
    if event in _COMPILE_EVENTS:
        _compile_seconds += duration


jax.monitoring.register_event_duration_secs_listener(_count_compile)


class CompileTimed:
    """jax.jit(fn) that adds up the seconds its calls spent compiling (`compile_seconds`), so a timer can leave
    them out of a call that compiled: run time alone, however few calls. Calls go through jax.jit's own fast
    path (an ahead-of-time executable per argument signature cost ~0.25 ms of Python per decode call)."""

    def __init__(self, fn, **jit_kwargs) -> None:
        self.jitted = jax.jit(fn, **jit_kwargs)
        self.compile_seconds = 0.0

    def __call__(self, *args):
        before = _compile_seconds
        out = self.jitted(*args)
        self.compile_seconds += _compile_seconds - before
        return out

    def compilations(self) -> int:
        """Programs compiled so far (one per argument signature)."""
        return self.jitted._cache_size()


def _at(x_BxTxD: jax.Array, t) -> jax.Array:
    """Position t (traced) of (B, T, ...) as (B, 1, ...)."""
    return jax.lax.dynamic_slice_in_dim(x_BxTxD, t, 1, axis=1)


class KVDecoder:
    """Jitted prefill + chunked decode for one model config, DecodeConfig and sampling setting."""

    def __init__(
        self,
        config: ModelConfig,
        sample_config: SampleConfig,
        decode_config: DecodeConfig | None = None,
        *,
        n_loop: int | None = None,
        chunk_size: int = 32,
        return_logits: bool = False,
        window: str = "slide",
    ) -> None:
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
        self.cfg, self.sc, self.window = config, sample_config, window
        if decode_config is None:
            decode_config = DecodeConfig(n_loop=config.n_loop if n_loop is None else n_loop)
        self.dc = decode_config.validate()
        self.n_loop = self.dc.n_loop
        self.rec = Recurrence(config, self.dc, sample_config.vocab_limit)
        if self.dc.draft_n_loop:
            dc = self.dc  # argmax drafts: draft_threshold is their patience (parse_exit's argmax:PATIENCE)
            patience = int(dc.draft_threshold) if dc.draft_exit == "argmax" else dc.exit_patience
            draft_dc = DecodeConfig(n_loop=dc.draft_n_loop, exit_criterion=dc.draft_exit, exit_patience=patience)
            self.draft = Recurrence(config, draft_dc, sample_config.vocab_limit)
        self.chunk_size = chunk_size
        self.return_logits = return_logits
        self.n_keep = max(1, config.block_size // 2)
        self.rolling = config.pos_encoding != "learned"  # ring caches: the window slides at KV-cache speed
        # a ring longer than the window by one speculative round, so a rolled-back round never overwrote
        # an entry that is still in some later position's window
        self.ring = config.block_size + (self.dc.draft_tokens + 1 if self.dc.draft_n_loop and self.rolling else 0)
        self.n_layers = jax.eval_shape(lambda: self.rec.init_cache(1, self.ring)).n_layers
        self.stats = {"rounds": 0, "drafted": 0, "accepted": 0}
        self._slide_noted = False
        self._prefill = CompileTimed(self._prefill_fn)
        # the state (its caches) is donated: updated in place instead of copied every call
        self._decode = CompileTimed(self._decode_fn, donate_argnums=1)
        self._speculate = CompileTimed(self._speculate_fn, donate_argnums=1)
        self._window_logits = CompileTimed(self._window_logits_fn)

    def _programs(self) -> tuple[CompileTimed, ...]:
        return self._prefill, self._decode, self._speculate, self._window_logits

    def compilations(self) -> int:
        """Programs compiled so far by this decoder."""
        return sum(f.compilations() for f in self._programs())

    def compile_seconds(self) -> float:
        """Seconds this decoder has spent compiling so far (a timer subtracts them: run time alone)."""
        return sum(f.compile_seconds for f in self._programs())

    def cache_bytes(self, batch: int) -> int:
        """Bytes of all K/V buffers for a batch (what --stats reports)."""
        return jax.eval_shape(lambda: self.rec.init_cache(batch, self.ring)).nbytes()

    def _sample(self, logits_BxV, sample_key, n_new):
        return sample_token(logits_BxV, jax.random.fold_in(sample_key, n_new), self.sc)

    def _prefill_fn(self, params, window_BxT, n_valid, n_new, sample_key, noise_key, eps):
        """Fresh caches from the window's first n_valid tokens (at positions 0..), and the next token."""
        b = window_BxT.shape[0]
        s0 = jnp.zeros((b, self.cfg.n_embd), jnp.dtype(self.cfg.dtype))
        cache = self.rec.init_cache(b, self.ring)
        out = self.rec.forward(params, window_BxT, 0, n_valid, cache, s0, noise_key, eps, t_out=n_valid - 1)
        logits_BxV = out.logits[:, 0]
        tok_B = self._sample(logits_BxV, sample_key, n_new)
        iters_B = _at(out.iters_BxT, n_valid - 1)[:, 0]
        state = DecodeState(out.cache, tok_B, jnp.int32(n_valid), n_new + 1, out.s_last_BxD)
        return state, tok_B, iters_B, logits_BxV

    def _feed(self, params, state: DecodeState, noise_key, eps):
        """Feed the pending token at position n_ctx: (logits (B, V), iterations (B,), state with new caches)."""
        out = self.rec.forward(
            params, state.pending_B[:, None], state.n_ctx, 1, state.cache, state.s_last_BxD, noise_key, eps
        )
        return out.logits[:, 0], out.iters_BxT[:, 0], state._replace(cache=out.cache, s_last_BxD=out.s_last_BxD)

    def _buffers(self, b: int, c: int):
        v = self.cfg.vocab_size
        logits = jnp.zeros((b, c, v) if self.return_logits else (0,), jnp.float32)
        return jnp.zeros((b, c), jnp.int32), jnp.zeros((b, c), jnp.int32), logits

    def _decode_fn(self, params, state, n_steps, sample_key, noise_key, eps):
        """n_steps (<= chunk_size, and no more than the caches have room for) decode steps in one lax loop."""

        def body(t, carry):
            st, toks_BxC, iters_BxC, logits = carry
            logits_BxV, iters_B, st = self._feed(params, st, noise_key, eps)
            tok_B = self._sample(logits_BxV, sample_key, st.n_new)
            st = st._replace(pending_B=tok_B, n_ctx=st.n_ctx + 1, n_new=st.n_new + 1)
            toks_BxC, iters_BxC = toks_BxC.at[:, t].set(tok_B), iters_BxC.at[:, t].set(iters_B)
            if self.return_logits:
                logits = logits.at[:, t].set(logits_BxV)
            return st, toks_BxC, iters_BxC, logits

        return jax.lax.fori_loop(0, n_steps, body, (state, *self._buffers(state.pending_B.shape[0], self.chunk_size)))

    def _speculate_fn(self, params, state, n_wanted, sample_key, noise_key, eps):
        """Speculative rounds while fewer than n_wanted tokens are out and L + 1 positions fit in the caches."""
        dc, sc = self.dc, self.sc
        n_draft, b = dc.draft_tokens, state.pending_B.shape[0]
        draft_eps = jnp.float32(dc.draft_threshold)  # unused by a draft without an exit rule

        def draft(st: DecodeState, key):
            """L tokens drafted with draft_n_loop iterations: (tokens (B, L), their q (B, L, V) if sampled, cache)."""
            cache, tok_B, drafts, q_probs = st.cache, st.pending_B, [], []
            for j in range(n_draft):
                out = self.draft.forward(
                    params, tok_B[:, None], st.n_ctx + j, 1, cache.first_slots(dc.draft_n_loop), st.s_last_BxD,
                    noise_key, draft_eps,
                )  # fmt: skip
                cache = cache.with_first_slots(out.cache)
                q_BxV = out.logits[:, 0]
                if sc.temperature == 0:
                    tok_B = sample_token(q_BxV, key, sc)
                else:
                    q_BxV = token_probs(q_BxV, sc)
                    tok_B = jax.random.categorical(jax.random.fold_in(key, 2 * j), jnp.log(q_BxV)).astype(jnp.int32)
                    q_probs.append(q_BxV)
                drafts.append(tok_B)
            return jnp.stack(drafts, 1), jnp.stack(q_probs, 1) if q_probs else None, cache

        def round_(carry):
            st, done, toks, iters, logits, n_acc = carry
            key = jax.random.fold_in(sample_key, st.n_new)
            d_BxL, q_BxLxV, cache = draft(st, key)
            # verify all L + 1 positions with the full depth in one pass
            fed_BxT = jnp.concatenate([st.pending_B[:, None], d_BxL], axis=1)
            out = self.rec.forward(params, fed_BxT, st.n_ctx, n_draft + 1, cache, st.s_last_BxD, noise_key, eps)
            if sc.temperature == 0:
                acc = accept_greedy(d_BxL, filter_logits(out.logits, vocab_limit=sc.vocab_limit))
            else:
                p_BxTxV = jax.vmap(lambda lg: token_probs(lg, sc), in_axes=1, out_axes=1)(out.logits)
                acc = accept_sampled(d_BxL, q_BxLxV, p_BxTxV, key)
            toks = jax.lax.dynamic_update_slice(toks, emitted_tokens(d_BxL, acc), (0, done))
            iters = jax.lax.dynamic_update_slice(iters, out.iters_BxT, (0, done))
            if self.return_logits:
                logits = jax.lax.dynamic_update_slice(logits, out.logits, (0, done, 0))
            st = DecodeState(out.cache, acc.next_B, st.n_ctx + acc.n + 1, st.n_new + acc.n + 1, out.s_last_BxD)
            return st, done + acc.n + 1, toks, iters, logits, n_acc + acc.n

        def more(carry):
            st, done = carry[0], carry[1]
            return (done < n_wanted) & (self._room(st.n_ctx) >= n_draft + 1)

        carry = (state, jnp.int32(0), *self._buffers(b, self.chunk_size + n_draft + 1), jnp.int32(0))
        rounds = jnp.int32(0)
        carry, rounds = jax.lax.while_loop(
            lambda cr: more(cr[0]), lambda cr: (round_(cr[0]), cr[1] + 1), (carry, rounds)
        )
        state, done, toks, iters, logits, n_acc = carry
        return state, done, toks, iters, logits, rounds, n_acc

    def _note_slide(self) -> None:
        """Say once per decoder that the slide window re-prefills from here on (the decoding slows down)."""
        if self._slide_noted:
            return
        self._slide_noted = True
        spec = "; speculative decoding stops there" if self.dc.draft_n_loop else ""
        logger.warning(
            f"note: past block_size ({self.cfg.block_size}) --window=slide re-prefills the last {self.cfg.block_size} "
            f"tokens for every new token (nanoLOOP's crop: exact, one full forward per token){spec}; "
            "--window=restart keeps KV-cache speed"
        )

    def _room(self, n_ctx):
        """Positions that fit before the window must restart (learned) or the ring wraps (rope/none)."""
        return self.ring - n_ctx % self.ring if self.rolling else self.cfg.block_size - n_ctx

    def _window_logits_fn(self, params, tok_BxT, noise_key, eps):
        """Logits (B, T, V) and iterations (B, T) of every position of fresh windows, as the decoder computes them."""
        b, t = tok_BxT.shape
        s0 = jnp.zeros((b, self.cfg.n_embd), jnp.dtype(self.cfg.dtype))
        out = self.rec.forward(params, tok_BxT, 0, t, self.rec.init_cache(b, t), s0, noise_key, eps)
        return out.logits, out.iters_BxT

    def window_logits(self, params, tok_BxT, noise_key, exit_threshold=None):
        """Per-position logits and iterations over windows of up to block_size tokens (for loss frontiers)."""
        return self._window_logits(params, np.asarray(tok_BxT, np.int32), noise_key, _threshold(exit_threshold))

    def _out(self, toks, iters, logits, n: int) -> Generation:
        return Generation(
            np.asarray(toks)[:, :n], np.asarray(iters)[:, :n], np.asarray(logits)[:, :n] if self.return_logits else None
        )

    def stream(
        self,
        params,
        prompt_BxP,
        max_new_tokens: int,
        key: jax.Array,
        noise_key: jax.Array | None = None,
        exit_threshold: float | None = None,
    ) -> Iterator[Generation]:
        """Yield new tokens as they are produced: one from each prefill, then chunks."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        seq_BxL = np.asarray(prompt_BxP, np.int32)
        if seq_BxL.ndim != 2 or seq_BxL.shape[1] == 0:
            raise ValueError(f"prompt must be a non-empty (batch, length) array, got shape {seq_BxL.shape}")
        sample_key, noise_key = _split_key(key, noise_key)
        eps, s_max = _threshold(exit_threshold), self.cfg.block_size
        n_window, n_ctx, state, done = min(seq_BxL.shape[1], s_max), 0, None, 0  # the first window: the prompt
        n_draft = self.dc.draft_tokens if self.dc.draft_n_loop else None
        while done < max_new_tokens:
            if n_ctx == 0 or (n_ctx == s_max and not self.rolling):
                if n_ctx and self.window == "slide":
                    self._note_slide()
                state = None  # free the old caches before the new ones are made
                # pad to a multiple of 16 so that windows of many lengths share a few compilations
                window_BxT = np.zeros((seq_BxL.shape[0], padded_length(n_window, 16, s_max)), np.int32)
                window_BxT[:, :n_window] = seq_BxL[:, -n_window:]
                state, tok_B, it_B, logits_BxV = self._prefill(
                    params, window_BxT, n_window, done, sample_key, noise_key, eps
                )
                n_ctx, n, n_window = n_window, 1, s_max if self.window == "slide" else self.n_keep
                out = self._out(tok_B[:, None], it_B[:, None], logits_BxV[:, None] if self.return_logits else None, 1)
            elif n_draft is not None and self._room(n_ctx) >= n_draft + 1:
                want = min(self.chunk_size, max_new_tokens - done)
                state, n, toks, iters, logits, rounds, n_acc = self._speculate(
                    params, state, want, sample_key, noise_key, eps
                )
                n = int(n)
                self.stats["rounds"] += int(rounds)
                self.stats["drafted"] += int(rounds) * n_draft
                self.stats["accepted"] += int(n_acc)
                n_ctx += n
                out = self._out(toks, iters, logits, min(n, max_new_tokens - done))
            else:
                n = min(self.chunk_size, max_new_tokens - done, self._room(n_ctx))
                state, toks_BxC, iters_BxC, logits = self._decode(params, state, n, sample_key, noise_key, eps)
                n_ctx += n
                out = self._out(toks_BxC, iters_BxC, logits, n)
            seq_BxL = np.concatenate([seq_BxL[:, -s_max:], out.tokens_BxN], axis=1)
            done += out.tokens_BxN.shape[1]
            yield out

    def generate(self, params, prompt_BxP, max_new_tokens: int, key: jax.Array, noise_key=None, exit_threshold=None):
        """All max_new_tokens new tokens of every sequence (blocking), as one Generation."""
        return concat_generations(list(self.stream(params, prompt_BxP, max_new_tokens, key, noise_key, exit_threshold)))


def concat_generations(parts: list[Generation]) -> Generation:
    """One Generation from consecutive chunks (as stream yields them)."""
    logits = None if parts[0].logits_BxNxV is None else np.concatenate([g.logits_BxNxV for g in parts], axis=1)
    return Generation(
        np.concatenate([g.tokens_BxN for g in parts], axis=1),
        np.concatenate([g.iters_BxN for g in parts], axis=1),
        logits,
    )
