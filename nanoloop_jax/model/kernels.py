"""Kernels chosen per platform, in one place: which attention runs and how the loop and matmuls are laid out.

The choice is made at trace time from `ModelConfig.platform`, the platform the program is *lowered for*
("cpu" | "cuda" | "rocm" | "tpu"); None means JAX's default backend, i.e. where the program will run.
Code that lowers for another platform (nanoloop_jax/tools/lowering.py) sets the field, so a CPU-only machine
traces exactly the program a GPU or TPU would run.

  platform  attention "auto"                 xla attention            gradient iterations      Dense
  cpu       xla                              row blocks of ATTN_CHUNK  length-1 scans (<= 4)    (B·T, D) 2-D dots
  cuda      cudnn (bf16/fp16, no dropout)    one (T, T) product        one scan                 einsum over (B, T, D)
  rocm      xla                              one (T, T) product        one scan                 einsum over (B, T, D)
  tpu       pallas flash (T % 128 == 0, no   one (T, T) product        one scan                 einsum over (B, T, D)
            dropout)
A fused kernel that does not apply falls back to xla attention.

The CPU column is what BENCHMARKS.md measured; the others are what each backend's compiler expects:
one fused attention kernel and no unrolled Python loops (which only add compile time there).

Dimension legend: B batch, T query positions, S key positions, H heads, K head dim, C/E a block's rows/keys,
N = B·H (a decode cache's leading axis).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from nanoloop_jax.errors import ConfigError

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
ATTENTION_IMPLS = ("auto", "xla", "cudnn", "pallas")
ATTN_CHUNK = 64  # query rows per block of CPU xla attention when T >= 2 blocks
CPU_MAX_UNROLL = 4  # CPU: gradient iterations of the loop run as inlined length-1 scans, at most
PALLAS_BLOCK = 128  # the TPU flash kernel's default tile: T must be a multiple of it
CUDNN_DTYPES = ("bfloat16", "float16")  # cuDNN's fused (flash) attention has no float32 kernel


def resolve_platform(platform: str | None) -> str:
    """`platform`, or for None the platform of JAX's default backend ('gpu' becomes 'cuda' or 'rocm')."""
    if platform is not None:
        if platform not in PLATFORMS:
            raise ConfigError(f"platform must be one of {PLATFORMS} or None, got {platform!r}")
        return platform
    backend = jax.default_backend()
    if backend == "gpu":
        return "rocm" if "rocm" in jax.devices()[0].client.platform_version.lower() else "cuda"
    return backend if backend in PLATFORMS else "cpu"


@dataclasses.dataclass(frozen=True)
class Layout:
    """How the model lays out its loop and matmuls on one platform."""

    platform: str
    max_unroll: int  # gradient iterations run as separate (inlined) length-1 scans, at most; 0 = always one scan
    flatten_dense: bool  # Dense computes on (B·T, D): XLA:CPU's slow two-batch-dims weight gradient is avoided
    row_blocked_attention: bool  # xla causal attention in row blocks (skips the masked triangle: XLA:CPU)


def layout(platform: str | None) -> Layout:
    """The loop/matmul layout for a platform (None: the default backend's)."""
    platform = resolve_platform(platform)
    if platform == "cpu":
        # Inlined length-1 scans fuse across iterations and keep no stacked residuals: -5-8% step time
        # at bptt_k=2 on XLA:CPU (BENCHMARKS.md). On GPU/TPU they only add compile time.
        return Layout(platform, max_unroll=CPU_MAX_UNROLL, flatten_dense=True, row_blocked_attention=True)
    return Layout(platform, max_unroll=0, flatten_dense=False, row_blocked_attention=False)


_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=4)


def attention_impl(
    requested: str,
    platform: str | None,
    *,
    seq_len: int,
    head_dim: int,
    dtype: str,
    dropout: bool,
    masked: bool,
) -> str:
    """The attention that runs: `requested`, or the platform's choice for 'auto'; falls back where it can't run.

    dropout: attention-weight dropout is active (training with dropout > 0); masked: an explicit mask
    (the decoder's cache window, model.attn_window, model.causal=False) instead of the plain causal one: those
    run xla attention, one (T, S) product with the mask. An explicitly requested kernel that cannot
    run here warns once and falls back; 'auto' falls back silently.
    """
    platform = resolve_platform(platform)
    if masked:
        return "xla"  # the KV-cache decoder's windows: one (T, S) product with its mask
    auto = requested == "auto"
    want = requested
    if auto:
        want = {"cuda": "cudnn", "tpu": "pallas"}.get(platform, "xla")
    why = None
    if want == "cudnn":
        if platform != "cuda":
            why = f"attention='cudnn' needs a CUDA GPU (lowering for {platform})"
        elif dtype not in CUDNN_DTYPES:
            why = f"cuDNN flash attention needs bfloat16/float16 compute, not {dtype}"
        elif head_dim > 128 or head_dim % 8:
            why = f"cuDNN flash attention needs a head dim <= 128 and a multiple of 8, not {head_dim}"
        elif dropout:
            why = "cuDNN attention has no attention-weight dropout here; using xla attention while dropout > 0"
    elif want == "pallas":
        if platform != "tpu":
            why = f"attention='pallas' (the TPU flash kernel) needs a TPU (lowering for {platform})"
        elif seq_len % PALLAS_BLOCK:
            why = f"the TPU flash kernel needs T to be a multiple of {PALLAS_BLOCK}, not {seq_len}"
        elif dropout:
            why = "the TPU flash kernel has no attention-weight dropout; using xla attention while dropout > 0"
    if why is None:
        return want
    if not auto:
        _warn_once(f"{why}; falling back to xla attention")
    return "xla"


def full_attention(
    q_BxTxHxK: jax.Array,
    k_BxSxHxK: jax.Array,
    v_BxSxHxK: jax.Array,
    mask_TxS: jax.Array | None = None,
    dropout: Callable[[jax.Array, int], jax.Array] | None = None,
) -> jax.Array:
    """softmax(q kᵀ/√K + mask) v over the whole (T, S) matrix, softmax in float32 (causal by default).

    What jax.nn.dot_product_attention(implementation='xla') computes, plus attention-weight dropout.
    """
    att_BxHxTxS = attention_weights(q_BxTxHxK, k_BxSxHxK, mask_TxS)
    if dropout is not None:
        att_BxHxTxS = dropout(att_BxHxTxS, 0)
    return jnp.einsum("bhts,bshk->bthk", att_BxHxTxS.astype(v_BxSxHxK.dtype), v_BxSxHxK)


def attention_weights(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, mask_TxS: jax.Array | None = None) -> jax.Array:
    """Softmax attention weights in float32, scale 1/sqrt(K); causal (last T keys = queries) by default."""
    # Scaling q (T·K products) rather than the scores (T·S) saves a pass over the largest tensor.
    q_BxTxHxK = q_BxTxHxK * jnp.asarray(1.0 / math.sqrt(q_BxTxHxK.shape[-1]), q_BxTxHxK.dtype)
    att_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32)
    if mask_TxS is None:
        t, s = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
        mask_TxS = jnp.tril(jnp.ones((t, s), dtype=bool), k=s - t)
    att_BxHxTxS = jnp.where(mask_TxS, att_BxHxTxS, -jnp.inf)
    return jax.nn.softmax(att_BxHxTxS, axis=-1)


def window_mask(pos_T: jax.Array, pos_S: jax.Array, causal: bool, window: int | None) -> jax.Array:
    """(T, S) bool: whether a query at position pos_T[t] sees the key at pos_S[s]: key <= query when causal,
    |query - key| < window with a window (None: any distance). The training forward and the decoder's caches
    both build their masks here."""
    dist_TxS = pos_T[:, None] - pos_S[None]
    mask_TxS = dist_TxS >= 0 if causal else jnp.ones(dist_TxS.shape, bool)
    return mask_TxS if window is None else mask_TxS & (jnp.abs(dist_TxS) < window)


def cache_attention(
    q_BxTxHxK: jax.Array,
    k_NxSxK: jax.Array,
    v_NxSxK: jax.Array,
    mask_TxS: jax.Array,
    dropout: Callable[[jax.Array, int], jax.Array] | None = None,
) -> jax.Array:
    """Attention of T new queries over a decode cache's S entries (model/cache.py: N = B·H), as mask_TxS allows.

    The dots take the cache in its stored (N, S, K) shape, so XLA reads it in place (no per-step copy of
    the caches it updates); the queries move to (N, T, K) instead. Softmax in float32, scale 1/sqrt(K), as
    full_attention; dropout(weights (B, H, T, S), 0) as there.
    """
    b, t, h, k = q_BxTxHxK.shape
    q_BxTxHxK = q_BxTxHxK * jnp.asarray(1.0 / math.sqrt(k), q_BxTxHxK.dtype)
    q_NxTxK = q_BxTxHxK.transpose(0, 2, 1, 3).reshape(b * h, t, k)
    att_NxTxS = jnp.einsum("ntk,nsk->nts", q_NxTxK, k_NxSxK, preferred_element_type=jnp.float32)
    att_NxTxS = jax.nn.softmax(jnp.where(mask_TxS, att_NxTxS, -jnp.inf), axis=-1)
    if dropout is not None:
        att_NxTxS = dropout(att_NxTxS.reshape(b, h, t, -1), 0).reshape(b * h, t, -1)
    y_NxTxK = jnp.einsum("nts,nsk->ntk", att_NxTxS.astype(v_NxSxK.dtype), v_NxSxK)
    return y_NxTxK.reshape(b, h, t, k).transpose(0, 2, 1, 3)


def blocked_causal_attention(
    q_BxTxHxK: jax.Array,
    k_BxTxHxK: jax.Array,
    v_BxTxHxK: jax.Array,
    dropout: Callable[[jax.Array, int], jax.Array] | None = None,
) -> jax.Array:
    """Causal attention of T queries over the same T positions, in blocks of ATTN_CHUNK query rows (XLA:CPU).

    Heads move ahead of time once (B, H, T, K), so every product below is a plain batched matmul
    (XLA:CPU otherwise transposes q, k and v, and each block's slices of them, around each einsum).
    Query block [start, end) attends to keys [0, end) only: the masked triangle beyond the block is
    never computed (5/8 of the work at 4 blocks) and the masked entries inside it are exact zeros
    of the softmax, so the result is the full (T, T) computation's.
    """
    t = q_BxTxHxK.shape[1]
    scale = jnp.asarray(1.0 / math.sqrt(q_BxTxHxK.shape[-1]), q_BxTxHxK.dtype)
    q_BxHxTxK = jnp.swapaxes(q_BxTxHxK * scale, 1, 2)
    k_BxHxTxK, v_BxHxTxK = jnp.swapaxes(k_BxTxHxK, 1, 2), jnp.swapaxes(v_BxTxHxK, 1, 2)
    chunk = t if t < 2 * ATTN_CHUNK else ATTN_CHUNK
    outs = []
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        att_BxHxCxE = jnp.einsum(
            "bhtk,bhsk->bhts",
            q_BxHxTxK[:, :, start:end],
            k_BxHxTxK[:, :, :end],
            preferred_element_type=jnp.float32,
        )
        mask_CxE = jnp.tril(jnp.ones((end - start, end), dtype=bool), k=start)
        att_BxHxCxE = jax.nn.softmax(jnp.where(mask_CxE, att_BxHxCxE, -jnp.inf), axis=-1)
        if dropout is not None:
            att_BxHxCxE = dropout(att_BxHxCxE, start)
        outs.append(jnp.einsum("bhts,bhsk->bhtk", att_BxHxCxE.astype(v_BxHxTxK.dtype), v_BxHxTxK[:, :, :end]))
    return jnp.swapaxes(jnp.concatenate(outs, axis=2), 1, 2)


def cudnn_causal_attention(q_BxTxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array) -> jax.Array:
    """cuDNN fused (flash) causal attention; JAX partitions it over batch and heads itself."""
    return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxK, is_causal=True, implementation="cudnn")


def _pallas_flash(q_BxHxTxK: jax.Array, k_BxHxTxK: jax.Array, v_BxHxTxK: jax.Array) -> jax.Array:
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash  # imported only where used

    scale = 1.0 / math.sqrt(q_BxHxTxK.shape[-1])
    return tpu_flash.flash_attention(q_BxHxTxK, k_BxHxTxK, v_BxHxTxK, causal=True, sm_scale=scale)


def pallas_causal_attention(q_BxTxHxK: jax.Array, k_BxTxHxK: jax.Array, v_BxTxHxK: jax.Array) -> jax.Array:
    """The Pallas TPU flash-attention kernel (jax.experimental.pallas.ops.tpu), forward and backward.

    A Pallas call is opaque to the SPMD partitioner, which would gather q, k, v onto every device; under
    a mesh it runs in a shard_map instead, split over the batch and head axes as the logical rules say.
    On CPU it runs under pltpu.force_tpu_interpret_mode() (the numerics tests).
    """
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q_BxTxHxK, k_BxTxHxK, v_BxTxHxK))
    flash = _pallas_flash
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        spec = nn.logical_to_mesh_axes(("act_batch", "heads", None, None))
        flash = jax.shard_map(flash, mesh=mesh, in_specs=(spec, spec, spec), out_specs=spec, check_vma=False)
    return jnp.swapaxes(flash(q, k, v), 1, 2)


def causal_attention(
    impl: str,
    platform: str | None,
    q_BxTxHxK: jax.Array,
    k_BxSxHxK: jax.Array,
    v_BxSxHxK: jax.Array,
    mask_TxS: jax.Array | None = None,
    dropout: Callable[[jax.Array, int], jax.Array] | None = None,
) -> jax.Array:
    """Attention of queries over keys/values by `impl` (from attention_impl) on `platform`; output (B, T, H, K).

    dropout(weights, i) is applied to the attention weights by the xla paths, i the first query row of
    the block (the fused kernels are chosen only when there is none). mask_TxS: which keys each query
    may attend to (the decoder's cache slots); None: causal.
    """
    if impl == "cudnn":
        return cudnn_causal_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
    if impl == "pallas":
        return pallas_causal_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK)
    self_attention = mask_TxS is None and q_BxTxHxK.shape[1] == k_BxSxHxK.shape[1]
    if self_attention and layout(platform).row_blocked_attention:
        return blocked_causal_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, dropout)
    return full_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_TxS, dropout)


def dense(x: jax.Array, kernel: jax.Array, flatten: bool) -> jax.Array:
    """x @ kernel over the last axis; flatten=True computes on (N, in) (XLA:CPU's fast 2-D dot path)."""
    if not flatten:
        return jnp.einsum("...i,io->...o", x, kernel)
    # A weight gradient contracting over two batch dims (B, T) takes a slow path on XLA:CPU;
    # one flattened N axis keeps every matmul (and its transposes) a plain 2-D dot.
    y_NxO = jnp.dot(x.reshape(-1, x.shape[-1]), kernel)
    return y_NxO.reshape(*x.shape[:-1], kernel.shape[-1])


@functools.cache
def cuda_plugin_available() -> bool:
    """Whether cuDNN can be queried here (the CUDA plugin is installed): needed to trace cuDNN attention."""
    try:
        from jax._src.lib import cuda_versions  # None without jax-cuda*-plugin

        return cuda_versions is not None and cuda_versions.cudnn_get_version() > 0
    except Exception:  # a plugin without its cuDNN libraries
        return False
