"""The decoder's KV cache: one typed structure whose layout the model gives (LoopedGPT.init_cache).

DecodeCache has three named parts: `prelude` (one LayerCache per prelude block), `loop` (n_slots slots of
n_block LayerCaches: iteration i of the recurrent block uses slot i, or i mod K with kv_share=K) and `coda`
(one per coda block). Code outside this module reaches a layer by part and slot (`cache.slot(i)`,
`cache.with_slot(i, ...)`), never by an offset into a flat list.

A LayerCache holds one attention layer's K and V for S entries, each (N, S, K) with N = B·H: batch and
heads merged, so every cache has rank 3 at any batch size. Why not (B, H, S, K): at batch 1 XLA drops the
size-1 batch axis of the attention dot and reads the cache through a bitcast, for which it duplicates the
in-place update and copies every cache at every layer and step (96 full-cache copies per decode step of
the Shakespeare looped model, counted in the compiled HLO). (N, S, K) is an operand kernels.cache_attention's
dots read in place at batch 1, 8 and 64 alike (N = 1, a one-head model at batch 1, is the one shape that still
copies). Why S before K: a decode step writes one entry per layer (and the adaptive decoder's Huginn fill
copies one per skipped iteration); with K innermost an entry is N runs of K contiguous values, where the
(N, K, S) layout of earlier versions scattered it over N·K cache lines. At batch 64 (a 2 MB cache per K or V)
that made each skipped iteration's fill cost ~0.45 ms, a third of a computed iteration (BENCHMARKS.md).

Dimension legend: B batch, T new positions, H heads, K head dim, N = B·H, S cache entries.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LayerCache(NamedTuple):
    """One attention layer's K and V, each (N, S, K) with N = B·H (see the module docstring)."""

    k: jax.Array
    v: jax.Array


class CacheWrite(NamedTuple):
    """Where a cached call's T new positions go (the same for every layer) and what they attend to.

    slot0: first of the T consecutive cache entries written (int32 scalar).
    mask_TxS: cache entries each new position attends to (the caller's window: causal, sliding, ...).
    write_BxT: positions whose K/V are written; the others keep the cache's entry at their slot (an
      exited position of the adaptive decoder keeps the K/V its last computed iteration left there).
      None: all are written.
    """

    slot0: jax.Array
    mask_TxS: jax.Array
    write_BxT: jax.Array | None = None


def empty_layer_cache(batch: int, n_head: int, head_dim: int, entries: int, dtype) -> LayerCache:
    """A zero K/V cache of `entries` positions for one attention layer."""
    shape = (batch * n_head, entries, head_dim)
    return LayerCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _write(cache_NxSxK: jax.Array, kv_BxTxHxK: jax.Array, at: CacheWrite) -> jax.Array:
    """Store the K or V of T positions at entries slot0.., keeping the old entry where write_BxT is False."""
    b, t, h, k = kv_BxTxHxK.shape
    kv_NxTxK = kv_BxTxHxK.transpose(0, 2, 1, 3).reshape(b * h, t, k).astype(cache_NxSxK.dtype)
    start = (0, at.slot0, 0)
    if at.write_BxT is not None:
        old_NxTxK = jax.lax.dynamic_slice(cache_NxSxK, start, kv_NxTxK.shape)
        write_NxTx1 = jnp.broadcast_to(at.write_BxT[:, None], (b, h, t)).reshape(b * h, t, 1)
        kv_NxTxK = jnp.where(write_NxTx1, kv_NxTxK, old_NxTxK)
    return jax.lax.dynamic_update_slice(cache_NxSxK, kv_NxTxK, start)


def write_layer(cache: LayerCache, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array, at: CacheWrite) -> LayerCache:
    """The layer's cache with the K/V of T new positions written at `at`."""
    return LayerCache(_write(cache.k, k_BxTxHxK, at), _write(cache.v, v_BxTxHxK, at))


def _copy_entries(src: jax.Array, dst: jax.Array, slot0, t: int) -> jax.Array:
    """dst with entries slot0..slot0+t copied from src."""
    start = (0, slot0, 0)
    return jax.lax.dynamic_update_slice(dst, jax.lax.dynamic_slice(src, start, (src.shape[0], t, src.shape[2])), start)


Layers = tuple[LayerCache, ...]


def _row_entries(rows_R: jax.Array, n_head: int) -> jax.Array:
    """(R·H,) indices into N = B·H of the heads of batch rows `rows_R`."""
    return (rows_R[:, None] * n_head + jnp.arange(n_head)[None]).reshape(-1)


def gather_rows(layers: Layers, rows_R: jax.Array, n_head: int) -> Layers:
    """The caches of batch rows `rows_R` (R, H·R entries of N; rows >= B read the last row, a placeholder)."""
    n = _row_entries(rows_R, n_head)
    return jax.tree_util.tree_map(lambda x: jnp.take(x, n, axis=0, mode="clip"), layers)


def scatter_entries(layers: Layers, rows_R: jax.Array, sub: Layers, n_head: int, slot0, t: int) -> Layers:
    """`layers` with entries slot0..slot0+t of batch rows `rows_R` taken from `sub` (a gather_rows view the
    rows wrote into); rows >= B are dropped. Only the T written entries move, not the rows' whole caches."""
    n = _row_entries(rows_R, n_head)

    def put(full_NxSxK, part_RxSxK):
        new_RxTxK = jax.lax.dynamic_slice_in_dim(part_RxSxK, slot0, t, axis=1)
        entries_T = slot0 + jnp.arange(t)
        k = jnp.arange(full_NxSxK.shape[2])
        return full_NxSxK.at[n[:, None, None], entries_T[None, :, None], k[None, None, :]].set(new_RxTxK, mode="drop")

    return jax.tree_util.tree_map(put, layers, sub)


class DecodeCache(NamedTuple):
    """Every cache the decoder runs: prelude blocks, loop slots × recurrent blocks, coda blocks."""

    prelude: Layers  # one per prelude block
    loop: tuple[Layers, ...]  # n_slots slots, each one LayerCache per recurrent block
    coda: Layers  # one per coda block

    @property
    def n_slots(self) -> int:
        """Loop slots (iterations that write their own K/V)."""
        return len(self.loop)

    @property
    def n_layers(self) -> int:
        """Attention layers with a cache of their own."""
        return len(self.prelude) + sum(len(s) for s in self.loop) + len(self.coda)

    @property
    def entries(self) -> int:
        """Positions each cache holds (S)."""
        return jax.tree_util.tree_leaves(self)[0].shape[1]

    def nbytes(self) -> int:
        """Bytes of all K/V buffers (also of a jax.eval_shape'd cache)."""
        return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(self))

    def slot(self, i: int) -> Layers:
        """The recurrent blocks' caches of loop slot i."""
        return self.loop[i]

    def with_slot(self, i: int, layers: Layers) -> DecodeCache:
        """This cache with loop slot i replaced."""
        return self._replace(loop=self.loop[:i] + (tuple(layers),) + self.loop[i + 1 :])

    def first_slots(self, n: int) -> DecodeCache:
        """Prelude, loop slots 0..n-1 and coda: the cache a shallower (draft) recurrence of n iterations runs on."""
        return self._replace(loop=self.loop[:n])

    def with_first_slots(self, sub: DecodeCache) -> DecodeCache:
        """This cache with the parts a first_slots(n) view holds taken from `sub` (the draft's writes)."""
        return DecodeCache(sub.prelude, sub.loop + self.loop[sub.n_slots :], sub.coda)

    def fill_slot(self, dst: int, src: int, slot0, t: int) -> DecodeCache:
        """Entries slot0..slot0+t of loop slot dst copied from slot src (the Huginn fill of a skipped iteration)."""
        filled = tuple(
            LayerCache(*(_copy_entries(a, b, slot0, t) for a, b in zip(s, d, strict=True)))
            for s, d in zip(self.slot(src), self.slot(dst), strict=True)
        )
        return self.with_slot(dst, filled)
