"""Tokens/s of the KV-cache decoder against naive full recomputation (nanoLOOP's generate), in one run.

  python -m nanoloop_jax.sampling_bench    # Shakespeare-char looped model, 500 new tokens, batch 1 and 8

Compilation is excluded: each decoder runs once to warm up, then is timed (median of `repeats` runs).
The naive decoder does one full forward per token, so timing all 500 tokens at batch 8 would take many
minutes on a CPU; it is timed instead on `naive_steps` of the same 500 context windows, evenly spaced,
and its rate is batch / mean seconds per step. Its windows are right-padded to a multiple of 32 so a
handful of compilations cover every length.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np

from nanoloop_jax.model import ModelConfig, init_params
from nanoloop_jax.recompute import naive_step_fn, naive_windows
from nanoloop_jax.sampling import KVDecoder, SampleConfig, padded_length

# nanoLOOP's config/train_shakespeare_char_looped.py model: 2 prelude + 2 recurrent × 4 loops + 2 coda.
SHAKESPEARE_CHAR_LOOPED = ModelConfig(
    block_size=256,
    vocab_size=65,
    n_prelude=2,
    n_block=2,
    n_coda=2,
    n_loop=4,
    n_head=6,
    n_embd=384,
    bptt_k=2,
    input_injection="inject",
)
NAIVE_PAD = 32


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_sample_benchmark(
    model_config: ModelConfig,
    params,
    *,
    batch_size: int,
    max_new_tokens: int = 500,
    prompt_len: int = 1,
    n_loop: int | None = None,
    naive_steps: int = 20,
    repeats: int = 3,
    chunk_size: int = 32,
) -> dict:
    """Print and return tokens/s (all sequences together) of the KV-cache and naive decoders, and the speed-up."""
    sc = SampleConfig(temperature=0.8, top_k=200)  # nanoLOOP sample.py's defaults
    rng = np.random.default_rng(0)
    prompt_BxP = rng.integers(0, model_config.vocab_size, (batch_size, prompt_len), dtype=np.int32)
    key = jax.random.PRNGKey(1337)

    decoder = KVDecoder(model_config, sc, n_loop=n_loop, chunk_size=chunk_size)
    decoder.generate(params, prompt_BxP, max_new_tokens, key)  # compile
    kv_s = _median_seconds(lambda: decoder.generate(params, prompt_BxP, max_new_tokens, key), repeats)

    step = naive_step_fn(model_config, sc, n_loop=n_loop)
    windows = naive_windows(prompt_len, max_new_tokens, model_config.block_size)
    picked = [windows[i] for i in np.linspace(0, len(windows) - 1, min(naive_steps, len(windows))).astype(int)]
    inputs = []
    for start, end in picked:
        n = end - start
        window_BxT = rng.integers(
            0, model_config.vocab_size, (batch_size, padded_length(n, NAIVE_PAD, model_config.block_size))
        )
        inputs.append((window_BxT.astype(np.int32), n))
    noise_key = jax.random.PRNGKey(0)
    for window_BxT, n in {w.shape[1]: (w, n) for w, n in inputs}.values():  # compile each padded length once
        jax.block_until_ready(step(params, window_BxT, n, key, noise_key))

    def naive_run():
        for i, (window_BxT, n) in enumerate(inputs):
            jax.block_until_ready(step(params, window_BxT, n, jax.random.fold_in(key, i), noise_key))

    naive_step_s = _median_seconds(naive_run, repeats) / len(inputs)

    result = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "prompt_len": prompt_len,
        "n_loop": decoder.n_loop,
        "kv_seconds": kv_s,
        "kv_tokens_per_s": batch_size * max_new_tokens / kv_s,
        "naive_steps_timed": len(inputs),
        "naive_seconds_per_step": naive_step_s,
        "naive_tokens_per_s": batch_size / naive_step_s,
    }
    result["speedup"] = result["kv_tokens_per_s"] / result["naive_tokens_per_s"]
    print(
        f"batch {batch_size}, {max_new_tokens} new tokens, n_loop {decoder.n_loop}: "
        f"KV cache {result['kv_tokens_per_s']:,.1f} tok/s ({kv_s:.2f} s), "
        f"naive {result['naive_tokens_per_s']:,.1f} tok/s ({naive_step_s * 1e3:.0f} ms/step over "
        f"{len(inputs)} of the {max_new_tokens} windows), speed-up {result['speedup']:.1f}x",
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max_new_tokens", type=int, default=500)
    parser.add_argument("--n_loop", type=int, default=None, help="test-time depth (default: the model's 4)")
    parser.add_argument("--naive_steps", type=int, default=20, help="context windows the naive decoder is timed on")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from nanoloop_jax import cpu_defaults

    cpu_defaults.apply_if_cpu()
    cfg = SHAKESPEARE_CHAR_LOOPED
    params = init_params(cfg, jax.random.PRNGKey(0))  # random weights: speed does not depend on training
    print(f"Shakespeare-char looped model (random init) on {jax.devices()[0].platform}: {cfg}")
    for b in args.batch_sizes:
        run_sample_benchmark(
            cfg,
            params,
            batch_size=b,
            max_new_tokens=args.max_new_tokens,
            n_loop=args.n_loop,
            naive_steps=args.naive_steps,
            repeats=args.repeats,
        )


if __name__ == "__main__":
    main()
