"""KV-cache decoding equals full recomputation; adaptive exit, depth override, and the sampling filters."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import perturbed_params, tiny_config

from nanoloop_jax.decode.recompute import naive_generate, naive_windows
from nanoloop_jax.decode.recurrence import DecodeConfig
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig, filter_logits, sample_token

TINY = tiny_config()
GREEDY = SampleConfig(temperature=0.0)
NEW = 40  # past block_size (16) more than twice: the window restarts several times


@functools.cache
def _params(injection: str):
    """Init params with every leaf nudged, so identity-like inits (inject, norms) don't hide bugs."""
    cfg = dataclasses.replace(TINY, input_injection=injection)
    return cfg, perturbed_params(cfg, 0.3)


@functools.cache
def _decoder(injection: str, n_loop: int | None = None, sc: SampleConfig = GREEDY) -> KVDecoder:
    """One decoder (one compilation) per setting, shared by the tests; exit thresholds are call arguments."""
    cfg, _ = _params(injection)
    return KVDecoder(cfg, sc, n_loop=n_loop, chunk_size=8, return_logits=True)


def _prompt(length: int, batch: int = 2) -> np.ndarray:
    return np.random.default_rng(length).integers(0, TINY.vocab_size, (batch, length)).astype(np.int32)


@functools.cache
def _naive_fixed_depth(injection: str, prompt_len: int):
    cfg, params = _params(injection)
    key, noise_key = jax.random.PRNGKey(3), jax.random.PRNGKey(7)
    return naive_generate(cfg, params, _prompt(prompt_len), NEW, key, GREEDY, noise_key=noise_key)


def _assert_same(kv, ref, atol=1e-4):
    np.testing.assert_array_equal(kv.tokens_BxN, ref.tokens_BxN)
    np.testing.assert_allclose(kv.logits_BxNxV, ref.logits_BxNxV, atol=atol)


@pytest.mark.parametrize(
    "injection, prompt_len",
    [("inject", 5), ("inject_random", 1), ("passthrough", 20)],  # 20 > block_size: the prompt is cropped
)
def test_greedy_kv_cache_equals_full_recomputation(injection, prompt_len):
    cfg, params = _params(injection)
    key, noise_key = jax.random.PRNGKey(3), jax.random.PRNGKey(7)
    kv = _decoder(injection).generate(params, _prompt(prompt_len), NEW, key, noise_key)
    _assert_same(kv, _naive_fixed_depth(injection, prompt_len))
    assert (kv.iters_BxN == cfg.n_loop).all()
    assert len(set(kv.tokens_BxN.ravel().tolist())) > 2  # not a degenerate constant stream


def test_inject_random_noise_key_matters():
    _, params = _params("inject_random")
    a = _decoder("inject_random").generate(params, _prompt(1), 4, jax.random.PRNGKey(3), jax.random.PRNGKey(7))
    b = _decoder("inject_random").generate(params, _prompt(1), 4, jax.random.PRNGKey(3), jax.random.PRNGKey(8))
    assert np.abs(a.logits_BxNxV - b.logits_BxNxV).max() > 1e-3


def test_exit_threshold_zero_equals_fixed_depth():
    cfg, params = _params("inject")
    key, noise_key = jax.random.PRNGKey(3), jax.random.PRNGKey(7)
    dec = KVDecoder(cfg, GREEDY, DecodeConfig(cfg.n_loop, "latent_diff"), chunk_size=8, return_logits=True)
    kv = dec.generate(params, _prompt(5), NEW, key, noise_key, exit_threshold=0.0)
    _assert_same(kv, _naive_fixed_depth("inject", 5))
    assert (kv.iters_BxN == cfg.n_loop).all()


def test_latent_diff_exit_saves_iterations_and_changes_the_result():
    """(The decoder's exit rules are checked against an independent oracle in test_test_time.py.)"""
    cfg, params = _params("inject")
    key, noise_key, threshold = jax.random.PRNGKey(3), jax.random.PRNGKey(7), 0.5
    dec = KVDecoder(cfg, GREEDY, DecodeConfig(cfg.n_loop, "latent_diff"), chunk_size=8, return_logits=True)
    kv = dec.generate(params, _prompt(5), NEW, key, noise_key, exit_threshold=threshold)
    assert 1 <= kv.iters_BxN.min() and kv.iters_BxN.mean() < cfg.n_loop
    # the rule changes the result: skipped iterations are really skipped
    assert np.abs(kv.logits_BxNxV - _naive_fixed_depth("inject", 5).logits_BxNxV).max() > 1e-3


def test_n_loop_override_sizes_the_caches_and_equals_naive():
    cfg, params = _params("inject")
    sc = SampleConfig(temperature=1.5, top_k=12, vocab_limit=15)
    key, noise_key = jax.random.PRNGKey(3), jax.random.PRNGKey(7)
    dec = _decoder("inject", 6, sc)
    assert dec.n_layers == cfg.n_prelude + cfg.n_block * 6 + cfg.n_coda
    kv = dec.generate(params, _prompt(5), NEW, key, noise_key)
    ref = naive_generate(cfg, params, _prompt(5), NEW, key, sc, n_loop=6, noise_key=noise_key)
    _assert_same(kv, ref)  # sampled (temperature 1.5) with the same keys: the same draws
    assert (kv.iters_BxN == 6).all()
    assert kv.tokens_BxN.max() < 15  # ids past the tokenizer's vocabulary are never drawn
    # the first token's logits come from the same prompt: depth 6 differs from the trained depth 3
    assert np.abs(kv.logits_BxNxV[:, 0] - _naive_fixed_depth("inject", 5).logits_BxNxV[:, 0]).max() > 1e-3


def test_restart_windows_stay_within_block_size_and_keep_half_of_it():
    windows = naive_windows(prompt_len=1, max_new_tokens=60, block_size=16, window="restart")
    lengths = [end - start for start, end in windows]
    assert lengths[:16] == list(range(1, 17))
    assert max(lengths) == 16 and min(lengths[16:]) == 8
    assert all(end == 1 + i for i, (_, end) in enumerate(windows))
    assert naive_windows(prompt_len=40, max_new_tokens=1, block_size=16, window="restart") == [(24, 40)]
    slide = naive_windows(prompt_len=1, max_new_tokens=60, block_size=16)
    assert [end - start for start, end in slide] == list(range(1, 17)) + [16] * 44


def test_filter_top_k_keeps_the_k_largest():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0, -1.0]])
    out = filter_logits(logits, top_k=2)
    np.testing.assert_array_equal(np.isfinite(out), [[False, True, False, True, False]])
    np.testing.assert_array_equal(filter_logits(logits, top_k=50), logits)  # k >= vocab: no-op


@pytest.mark.parametrize("top_p, kept", [(0.1, 1), (0.6, 2), (0.9, 3), (0.99, 4), (1.0, 4)])
def test_filter_top_p_keeps_the_nucleus(top_p, kept):
    probs = np.array([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5, 0.3, 0.15, 0.05
    out = filter_logits(jnp.log(jnp.array([probs])), top_p=top_p)
    keep = np.isfinite(np.asarray(out))[0]
    assert keep.sum() == kept
    assert set(np.flatnonzero(keep)) == set(np.argsort(-probs)[:kept])


def test_vocab_limit_is_never_sampled():
    logits = jnp.tile(jnp.array([[0.0, 0.1, 0.2, 9.0, 9.0]]), (512, 1))  # the padding ids are the most likely
    sc = SampleConfig(temperature=1.0, top_k=None, vocab_limit=3)
    toks = sample_token(logits, jax.random.PRNGKey(0), sc)
    assert int(toks.max()) < 3 and len(set(toks.tolist())) == 3
    assert sample_token(logits, jax.random.PRNGKey(0), dataclasses.replace(sc, temperature=0.0)).tolist() == [2] * 512


def test_bad_arguments():
    cfg, params = _params("inject")
    dec = _decoder("inject")
    with pytest.raises(ValueError, match="max_new_tokens"):
        next(dec.stream(params, _prompt(3), 0, jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match="non-empty"):
        next(dec.stream(params, np.zeros((1, 0), np.int32), 5, jax.random.PRNGKey(0)))
    with pytest.raises(ValueError, match="exit_threshold"):
        next(dec.stream(params, _prompt(3), 5, jax.random.PRNGKey(0), exit_threshold=-1.0))
    with pytest.raises(ValueError, match="n_loop"):
        KVDecoder(cfg, GREEDY, n_loop=0)
