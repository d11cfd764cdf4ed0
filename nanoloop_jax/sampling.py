"""Fast sampling: a jitted prefill, then decode steps in a lax loop over per-layer, per-iteration KV caches.

Caches. Every attention layer the decoder runs keeps its own K and V cache, (B, H, K, S) with
S = block_size (see cache_shape): prelude j, then recurrent block j at loop iteration i, then coda j,
n_prelude + n_block·n_loop + n_coda pairs in all, sized for the n_loop being decoded with (test-time
depth may differ from the trained one). The iterations are unrolled in the traced program, so each
cache is a buffer of its own that XLA updates and reads in place. One decode call runs up to
chunk_size steps in a lax.fori_loop; a sampler compiles once per model, n_loop, sampling setting,
batch size and prompt-length bucket. The exit threshold is traced, so it costs no recompilation.

Context window. Positions are learned absolute embeddings, so a token's K/V depend on its position in
the window and cannot be reused once the window slides. The prompt keeps its last block_size tokens
(as nanoGPT crops); when the next token would not fit, the window restarts from the last
block_size // 2 tokens (at positions 0..), which are re-prefilled in one call. Every token is therefore
predicted from at least block_size // 2 tokens of context, and the re-prefill cost is spread over
block_size // 2 steps. `naive_generate` recomputes from scratch over exactly the same windows.

Adaptive exit (exit_threshold = ε > 0): a position stops iterating the recurrent block once
‖s_i − s_{i−1}‖ / ‖s_i‖ < ε (s_{−1} is the initial state), keeping s_i; exit_threshold None or 0 runs
all n_loop iterations. Each iteration is a lax.while_loop of at most one trip that runs while any
position of any sequence is still active, so once all have exited the remaining iterations cost
nothing: a batch of one really does less work. The cache entries of a skipped iteration hold a copy of
the K/V of the position's last computed iteration (as Huginn does), so later tokens attend to defined
values. Prefills apply the same per-position rule, which makes one forward over the window with the
rule (the naive reference) and the incremental decoder compute the same function.

Dimension legend: B batch, T positions in this call, S cache length (block_size), D n_embd, H heads,
K head dim, V vocab, Y cache layers (n_prelude + n_block·n_loop + n_coda), C decode steps in a chunk,
N new tokens, P prompt length.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from nanoloop_jax.model import Block, LoopBody, LoopedGPT, ModelConfig, rms_norm


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


class DecodeState(NamedTuple):
    """What a decode step carries: n_ctx positions are in the cache; `pending` is sampled but not yet fed."""

    k_caches: tuple[jax.Array, ...]  # Y layers of (B, H, K, S)
    v_caches: tuple[jax.Array, ...]
    pending_B: jax.Array  # the last sampled token, fed at the next step
    n_ctx: jax.Array  # int32 scalar
    n_new: jax.Array  # int32 scalar: tokens sampled so far (indexes the sampling key)


class Generation(NamedTuple):
    """Sampled tokens, the loop iterations behind each, and (optionally) the logits they came from."""

    tokens_BxN: np.ndarray
    iters_BxN: np.ndarray
    logits_BxNxV: np.ndarray | None


def _apply(module, params, *args, method: str, **kw):
    return module.apply({"params": params}, *args, method=method, **kw)


def cache_shape(b: int, h: int, k: int, s: int) -> tuple[int, ...]:
    """One layer's K or V cache: (B, H, K, S) without size-1 B or H axes.

    This is exactly the operand XLA:CPU's attention dot reads, so the dot reads the cache in place; any
    other shape is read through a bitcast, for which XLA duplicates the in-place update and then has
    to copy the whole cache at every layer and step.
    """
    return (*(d for d in (b, h) if d > 1), k, s)


def _write(cache: jax.Array, kv_BxTxHxK: jax.Array, pos0) -> jax.Array:
    """Store the K or V of T positions at pos0.. of one layer's cache."""
    b, t, h, k = kv_BxTxHxK.shape
    kv = kv_BxTxHxK.transpose(0, 2, 3, 1).reshape(cache_shape(b, h, k, t)).astype(cache.dtype)
    return jax.lax.dynamic_update_slice(cache, kv, (0,) * (cache.ndim - 1) + (pos0,))


def cached_block(cfg, p, x_BxTxD, k_cache, v_cache, pos0, mask_1xTxS, fill=None):
    """One Block on T new positions: write their K/V at pos0 of this layer's cache, attend over the cache."""
    block = Block(cfg)
    q, k, v = _apply(block, p, x_BxTxD, method="attn_qkv")
    if fill is not None:
        # an exited position re-writes the K/V of its last computed iteration (the Huginn fill)
        active_BxT, last_k, last_v = fill
        k = jnp.where(active_BxT[:, :, None, None], k, last_k)
        v = jnp.where(active_BxT[:, :, None, None], v, last_v)
    k_cache, v_cache = _write(k_cache, k, pos0), _write(v_cache, v, pos0)
    # the model attends over (B, S, H, K); XLA folds this transpose into the dot (see cache_shape)
    b, _, h, hd = q.shape
    k_BxSxHxK, v_BxSxHxK = (c.reshape(b, h, hd, -1).transpose(0, 3, 1, 2) for c in (k_cache, v_cache))
    x_BxTxD = _apply(block, p, x_BxTxD, q, k_BxSxHxK, v_BxSxHxK, mask_1xTxS, method="attn_residual")
    return _apply(block, p, x_BxTxD, method="mlp_residual"), k_cache, v_cache, (k, v)


def forward_window(cfg, n_loop, params, tok_BxT, pos0, n_valid, k_caches, v_caches, noise_key, exit_threshold):
    """Hidden states (before ln_f) of T positions pos0.., the updated caches, and loop iterations per position.

    Positions t >= n_valid are padding: they start inactive (no recurrent compute is spent on them) and
    nothing real attends to them. exit_threshold is a traced scalar; 0 never exits (fixed depth).
    """
    b, t = tok_BxT.shape
    k_caches, v_caches = list(k_caches), list(v_caches)
    pos_T = pos0 + jnp.arange(t)
    mask_1xTxS = (jnp.arange(k_caches[0].shape[-1])[None, :] <= pos_T[:, None])[None]
    model, body = LoopedGPT(cfg), LoopBody(cfg)

    x_BxTxD = _apply(model, params, tok_BxT, pos_T, method="embed")
    for j in range(cfg.n_prelude):
        x_BxTxD, k_caches[j], v_caches[j], _ = cached_block(
            cfg, params[f"prelude_{j}"], x_BxTxD, k_caches[j], v_caches[j], pos0, mask_1xTxS
        )
    e_BxTxD = x_BxTxD
    s_BxTxD = _apply(model, params, e_BxTxD, pos_T, method="initial_state", rngs={"noise": noise_key})

    def iteration(carry):
        s_BxTxD, active_BxT, iters_BxT, last_k, last_v, k_iter, v_iter = carry
        last_k, last_v, k_iter, v_iter = list(last_k), list(last_v), list(k_iter), list(v_iter)
        u_BxTxD = _apply(body, params["loop"], s_BxTxD, e_BxTxD, method="inject_input")
        for j in range(cfg.n_block):
            fill = (active_BxT, last_k[j], last_v[j])
            u_BxTxD, k_iter[j], v_iter[j], (last_k[j], last_v[j]) = cached_block(
                cfg, params["loop"][f"recur_{j}"], u_BxTxD, k_iter[j], v_iter[j], pos0, mask_1xTxS, fill
            )
        s_new = _apply(rms_norm(cfg, "norm_recur"), params["loop"]["norm_recur"], u_BxTxD, method="__call__")
        s_new = s_new.astype(s_BxTxD.dtype)
        delta = jnp.linalg.norm((s_new - s_BxTxD).astype(jnp.float32), axis=-1)
        rel_BxT = delta / jnp.maximum(jnp.linalg.norm(s_new.astype(jnp.float32), axis=-1), 1e-30)
        s_BxTxD = jnp.where(active_BxT[..., None], s_new, s_BxTxD)
        iters_BxT = iters_BxT + active_BxT.astype(jnp.int32)
        active_BxT = active_BxT & ~(rel_BxT < exit_threshold)
        return s_BxTxD, active_BxT, iters_BxT, tuple(last_k), tuple(last_v), tuple(k_iter), tuple(v_iter)

    # Unrolled, so that every layer's cache is its own buffer that the attention reads in place (slices
    # of a stacked cache would be copied out layer by layer). Each iteration is a while_loop of at most
    # one trip, which skips the work once every position has exited and, unlike lax.cond, updates the
    # caches in place.
    zeros = jnp.zeros((b, t, cfg.n_head, cfg.n_embd // cfg.n_head), k_caches[0].dtype)
    active_BxT = jnp.broadcast_to(jnp.arange(t)[None] < n_valid, (b, t))
    carry = (s_BxTxD, active_BxT, jnp.zeros((b, t), jnp.int32), (zeros,) * cfg.n_block, (zeros,) * cfg.n_block)
    for i in range(n_loop):
        layers = range(cfg.n_prelude + i * cfg.n_block, cfg.n_prelude + (i + 1) * cfg.n_block)
        # first the entries an exited position keeps: its last computed K/V (the Huginn fill);
        # the iteration, if it runs, overwrites those of the positions still active
        k_iter = tuple(_write(k_caches[y], kv, pos0) for y, kv in zip(layers, carry[3], strict=True))
        v_iter = tuple(_write(v_caches[y], kv, pos0) for y, kv in zip(layers, carry[4], strict=True))
        carry = jax.lax.while_loop(
            lambda c: c[0] & jnp.any(c[2]),
            lambda c: (jnp.array(False), *iteration(c[1:])),
            (jnp.array(True), *carry, k_iter, v_iter),
        )[1:]
        for y, k_c, v_c in zip(layers, carry[5], carry[6], strict=True):
            k_caches[y], v_caches[y] = k_c, v_c
        carry = carry[:5]
    x_BxTxD, _, iters_BxT = carry[:3]
    first_coda = cfg.n_prelude + cfg.n_block * n_loop
    for j in range(cfg.n_coda):
        y = first_coda + j
        x_BxTxD, k_caches[y], v_caches[y], _ = cached_block(
            cfg, params[f"coda_{j}"], x_BxTxD, k_caches[y], v_caches[y], pos0, mask_1xTxS
        )
    return x_BxTxD, tuple(k_caches), tuple(v_caches), iters_BxT


def _logits_at(cfg, params, x_BxTxD, t) -> jax.Array:
    """Float32 logits (B, V) of position t (traced) of the hidden states."""
    x_Bx1xD = jax.lax.dynamic_slice_in_dim(x_BxTxD, t, 1, axis=1)
    return _apply(LoopedGPT(cfg), params, x_Bx1xD, method="head")[:, 0]


def _split_key(key: jax.Array, noise_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """(sampling key, inject_random noise key); the noise key is derived from key unless given."""
    sample_key, derived = jax.random.split(key)
    return sample_key, derived if noise_key is None else noise_key


def _threshold(exit_threshold: float | None) -> np.float32:
    """The exit threshold as a traced value (0: never exit), so every threshold shares one compilation."""
    if exit_threshold is not None and not exit_threshold >= 0:
        raise ValueError(f"exit_threshold must be None or >= 0, got {exit_threshold!r}")
    return np.float32(exit_threshold or 0.0)


def padded_length(n: int, multiple: int, cap: int) -> int:
    """n rounded up to a multiple, at most cap: few distinct shapes, so few compilations."""
    return min(cap, -(-n // multiple) * multiple)


class KVDecoder:
    """Jitted prefill + chunked decode for one model config, depth (n_loop) and sampling setting."""

    def __init__(
        self,
        config: ModelConfig,
        sample_config: SampleConfig,
        *,
        n_loop: int | None = None,
        chunk_size: int = 32,
        return_logits: bool = False,
    ) -> None:
        self.cfg = config
        self.sc = sample_config
        self.n_loop = config.n_loop if n_loop is None else n_loop
        if not isinstance(self.n_loop, int) or self.n_loop < 1:
            raise ValueError(f"n_loop must be a positive integer, got {n_loop!r}")
        self.chunk_size = chunk_size
        self.return_logits = return_logits
        self.n_keep = max(1, config.block_size // 2)
        self.n_layers = config.n_prelude + config.n_block * self.n_loop + config.n_coda
        self._forward = functools.partial(forward_window, config, self.n_loop)
        self._prefill = jax.jit(self._prefill_fn)
        # the state (its caches) is donated: updated in place instead of copied every call
        self._decode = jax.jit(self._decode_fn, donate_argnums=1)

    def _sample(self, logits_BxV, sample_key, n_new):
        return sample_token(logits_BxV, jax.random.fold_in(sample_key, n_new), self.sc)

    def _prefill_fn(self, params, window_BxT, n_valid, n_new, sample_key, noise_key, exit_threshold):
        """A fresh cache from the window's first n_valid tokens (at positions 0..), and the next token."""
        cfg = self.cfg
        b = window_BxT.shape[0]
        cache = (
            jnp.zeros(cache_shape(b, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size), jnp.dtype(cfg.dtype)),
        ) * self.n_layers
        x_BxTxD, k_cache, v_cache, iters_BxT = self._forward(
            params, window_BxT, 0, n_valid, cache, cache, noise_key, exit_threshold
        )
        logits_BxV = _logits_at(cfg, params, x_BxTxD, n_valid - 1)
        tok_B = self._sample(logits_BxV, sample_key, n_new)
        iters_B = jax.lax.dynamic_index_in_dim(iters_BxT, n_valid - 1, axis=1, keepdims=False)
        return DecodeState(k_cache, v_cache, tok_B, jnp.int32(n_valid), n_new + 1), tok_B, iters_B, logits_BxV

    def _decode_fn(self, params, state, n_steps, sample_key, noise_key, exit_threshold):
        """n_steps (<= chunk_size, and no more than the cache has room for) decode steps in one lax loop."""
        b, c = state.pending_B.shape[0], self.chunk_size
        toks_BxC = jnp.zeros((b, c), jnp.int32)
        iters_BxC = jnp.zeros((b, c), jnp.int32)
        logits = jnp.zeros((b, c, self.cfg.vocab_size) if self.return_logits else (0,), jnp.float32)

        def body(t, carry):
            st, toks_BxC, iters_BxC, logits = carry
            # feed the pending token at position n_ctx, sample the next from its logits
            x_BxTxD, k_cache, v_cache, iters_BxT = self._forward(
                params, st.pending_B[:, None], st.n_ctx, 1, st.k_caches, st.v_caches, noise_key, exit_threshold
            )
            logits_BxV = _logits_at(self.cfg, params, x_BxTxD, 0)
            tok_B = self._sample(logits_BxV, sample_key, st.n_new)
            st = DecodeState(k_cache, v_cache, tok_B, st.n_ctx + 1, st.n_new + 1)
            toks_BxC = toks_BxC.at[:, t].set(tok_B)
            iters_BxC = iters_BxC.at[:, t].set(iters_BxT[:, 0])
            if self.return_logits:
                logits = logits.at[:, t].set(logits_BxV)
            return st, toks_BxC, iters_BxC, logits

        return jax.lax.fori_loop(0, n_steps, body, (state, toks_BxC, iters_BxC, logits))

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
        """Yield new tokens as they are produced: one from each prefill, then chunks of up to chunk_size."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        seq_BxL = np.asarray(prompt_BxP, np.int32)
        if seq_BxL.ndim != 2 or seq_BxL.shape[1] == 0:
            raise ValueError(f"prompt must be a non-empty (batch, length) array, got shape {seq_BxL.shape}")
        sample_key, noise_key = _split_key(key, noise_key)
        eps, s_max = _threshold(exit_threshold), self.cfg.block_size
        n_window, n_ctx, state, done = min(seq_BxL.shape[1], s_max), 0, None, 0  # the first window: the prompt
        while done < max_new_tokens:
            # the window depends on the step count alone, so the host knows when the cache is full and
            # the jitted loop needs no branch: prefill (the prompt, later the last n_keep tokens) or extend
            if n_ctx in (0, s_max):
                state = None  # free the old caches before the new ones are made
                # pad to a multiple of 16 so that windows of many lengths share a few compilations
                window_BxT = np.zeros((seq_BxL.shape[0], padded_length(n_window, 16, s_max)), np.int32)
                window_BxT[:, :n_window] = seq_BxL[:, -n_window:]
                state, tok_B, it_B, logits_BxV = self._prefill(
                    params, window_BxT, n_window, done, sample_key, noise_key, eps
                )
                n_ctx, n, n_window = n_window, 1, self.n_keep
                out = self._out(tok_B[:, None], it_B[:, None], logits_BxV[:, None] if self.return_logits else None, 1)
            else:
                n = min(self.chunk_size, max_new_tokens - done, s_max - n_ctx)
                state, toks_BxC, iters_BxC, logits = self._decode(params, state, n, sample_key, noise_key, eps)
                n_ctx += n
                out = self._out(toks_BxC, iters_BxC, logits, n)
            seq_BxL = np.concatenate([seq_BxL[:, -s_max:], out.tokens_BxN], axis=1)
            done += n
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


def naive_step_fn(config: ModelConfig, sample_config: SampleConfig, *, n_loop=None, exit_threshold=None):
    """Jitted (params, window_BxT, n_valid, key, noise_key) -> (token, iterations, logits) by full recomputation.

    The window is right-padded to T; position n_valid - 1 gives the logits. Without an exit rule this is
    exactly the model's forward (LoopedGPT.__call__); with one it is forward_window on a fresh cache.
    """
    n_loop = config.n_loop if n_loop is None else int(n_loop)

    def step(params, window_BxT, n_valid, key, noise_key):
        b, t = window_BxT.shape
        if exit_threshold is None:
            logits_BxTxV = LoopedGPT(config).apply(
                {"params": params}, window_BxT, n_loop=n_loop, rngs={"noise": noise_key}
            )
            logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, n_valid - 1, axis=1, keepdims=False)
            iters_B = jnp.full((b,), n_loop, jnp.int32)
        else:
            n_layers = config.n_prelude + config.n_block * n_loop + config.n_coda
            cache = (
                jnp.zeros(cache_shape(b, config.n_head, config.n_embd // config.n_head, t), jnp.dtype(config.dtype)),
            ) * n_layers
            x, _, _, iters_BxT = forward_window(
                config, n_loop, params, window_BxT, 0, n_valid, cache, cache, noise_key, _threshold(exit_threshold)
            )
            logits_BxV = _logits_at(config, params, x, n_valid - 1)
            iters_B = jax.lax.dynamic_index_in_dim(iters_BxT, n_valid - 1, axis=1, keepdims=False)
        return sample_token(logits_BxV, key, sample_config), iters_B, logits_BxV

    return jax.jit(step)


def naive_windows(prompt_len: int, max_new_tokens: int, block_size: int) -> list[tuple[int, int]]:
    """(start, end) of the context window behind each new token: the decoder's rule, written out plainly."""
    n_keep = max(1, block_size // 2)
    start, windows = max(0, prompt_len - block_size), []
    for end in range(prompt_len, prompt_len + max_new_tokens):
        if end - start > block_size:
            start = end - n_keep
        windows.append((start, end))
    return windows


def naive_generate(
    config: ModelConfig,
    params,
    prompt_BxP,
    max_new_tokens: int,
    key: jax.Array,
    sample_config: SampleConfig,
    *,
    n_loop: int | None = None,
    exit_threshold: float | None = None,
    noise_key: jax.Array | None = None,
    pad_multiple: int | None = None,
) -> Generation:
    """nanoLOOP-style generate: one full forward over the context window per new token (the reference)."""
    seq_BxL = np.asarray(prompt_BxP, np.int32)
    sample_key, noise_key = _split_key(key, noise_key)
    step = naive_step_fn(config, sample_config, n_loop=n_loop, exit_threshold=exit_threshold)
    pad_multiple = pad_multiple or config.block_size
    toks, iters, logits = [], [], []
    for n, (start, end) in enumerate(naive_windows(seq_BxL.shape[1], max_new_tokens, config.block_size)):
        window_BxW = seq_BxL[:, start:end]
        padded = np.zeros((seq_BxL.shape[0], padded_length(end - start, pad_multiple, config.block_size)), np.int32)
        padded[:, : end - start] = window_BxW
        tok_B, it_B, logits_BxV = step(params, padded, end - start, jax.random.fold_in(sample_key, n), noise_key)
        seq_BxL = np.concatenate([seq_BxL, np.asarray(tok_B)[:, None]], axis=1)
        toks.append(np.asarray(tok_B))
        iters.append(np.asarray(it_B))
        logits.append(np.asarray(logits_BxV))
    return Generation(np.stack(toks, 1), np.stack(iters, 1), np.stack(logits, 1))
