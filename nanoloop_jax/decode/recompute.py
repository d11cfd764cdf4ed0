"""nanoLOOP-style generation by full recomputation: the reference the KV-cache decoder is tested against,
and the baseline bench.py --mode=sample times it against. One forward of LoopedGPT.__call__ per new token.

Fixed depth only; the adaptive-exit reference is a plain per-position loop in tests/exit_oracle.py.
"""

from __future__ import annotations

import jax
import numpy as np

from nanoloop_jax.decode.sampling import Generation, SampleConfig, _split_key, padded_length, sample_token
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT


def naive_step_fn(config: ModelConfig, sample_config: SampleConfig, *, n_loop=None):
    """Jitted (params, window_BxT, n_valid, key, noise_key) -> (token, iterations, logits) by full recomputation.

    The window is right-padded to T; position n_valid - 1 gives the logits.
    """
    n_loop = config.n_loop if n_loop is None else int(n_loop)

    def step(params, window_BxT, n_valid, key, noise_key):
        logits_BxTxV = LoopedGPT(config).apply({"params": params}, window_BxT, n_loop=n_loop, rngs={"noise": noise_key})
        logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, n_valid - 1, axis=1, keepdims=False)
        iters_B = jax.numpy.full((window_BxT.shape[0],), n_loop, jax.numpy.int32)
        return sample_token(logits_BxV, key, sample_config), iters_B, logits_BxV

    return jax.jit(step)


def naive_windows(
    prompt_len: int, max_new_tokens: int, block_size: int, window: str = "slide"
) -> list[tuple[int, int]]:
    """(start, end) of the context window behind each new token, written out plainly.

    slide: nanoLOOP's generate, the last block_size tokens. restart: the window restarts from the last
    block_size // 2 tokens when the next token would not fit.
    """
    n_keep = max(1, block_size // 2)
    start, windows = max(0, prompt_len - block_size), []
    for end in range(prompt_len, prompt_len + max_new_tokens):
        if end - start > block_size:
            start = end - block_size if window == "slide" else end - n_keep
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
    noise_key: jax.Array | None = None,
    pad_multiple: int | None = None,
    window: str = "slide",
) -> Generation:
    """One full forward over the context window per new token."""
    seq_BxL = np.asarray(prompt_BxP, np.int32)
    sample_key, noise_key = _split_key(key, noise_key)
    step = naive_step_fn(config, sample_config, n_loop=n_loop)
    pad_multiple = pad_multiple or config.block_size
    toks, iters, logits = [], [], []
    for n, (start, end) in enumerate(naive_windows(seq_BxL.shape[1], max_new_tokens, config.block_size, window)):
        padded = np.zeros((seq_BxL.shape[0], padded_length(end - start, pad_multiple, config.block_size)), np.int32)
        padded[:, : end - start] = seq_BxL[:, start:end]
        tok_B, it_B, logits_BxV = step(params, padded, end - start, jax.random.fold_in(sample_key, n), noise_key)
        seq_BxL = np.concatenate([seq_BxL, np.asarray(tok_B)[:, None]], axis=1)
        toks.append(np.asarray(tok_B))
        iters.append(np.asarray(it_B))
        logits.append(np.asarray(logits_BxV))
    return Generation(np.stack(toks, 1), np.stack(iters, 1), np.stack(logits, 1))
