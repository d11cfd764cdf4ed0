"""Test-time compute: exit criteria, kv_share, warm start and self-speculative decoding.

Against an independent per-position oracle (tests/exit_oracle.py), prefill == decode, batch == single,
speculative == plain (greedy, past block_size) and speculative sampling's distribution == the model's.
"""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from exit_oracle import Oracle
from helpers import perturbed_params, tiny_config

from nanoloop_jax.decode.recompute import naive_generate
from nanoloop_jax.decode.recurrence import EXIT_CRITERIA, DecodeConfig
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT

TINY = tiny_config()
GATED = tiny_config(exit_gate=True)  # the model for the learned gate's criterion
GREEDY = SampleConfig(temperature=0.0)
# thresholds that make positions exit after different numbers of iterations with the params below
EPS = {"none": 0.0, "latent_diff": 0.2, "kl": 0.05, "entropy": 0.05, "argmax": 0.0, "gate": 0.5}


def _cfg(criterion: str) -> ModelConfig:
    return GATED if criterion == "gate" else TINY


SETTINGS = [(0, False), (2, False), (0, True)]  # (kv_share, warm_start)


@functools.cache
def _params(cfg=TINY, scale=0.3):
    return perturbed_params(cfg, scale)


@functools.cache
def _decoder(dc: DecodeConfig, sc: SampleConfig = GREEDY, cfg: ModelConfig = TINY) -> KVDecoder:
    return KVDecoder(cfg, sc, dc, chunk_size=8, return_logits=True)


def _tokens(shape, seed=1):
    return np.random.default_rng(seed).integers(0, TINY.vocab_size, shape).astype(np.int32)


@pytest.mark.parametrize("criterion", EXIT_CRITERIA)
@pytest.mark.parametrize("kv_share, warm", SETTINGS)
def test_decoder_equals_the_per_position_oracle(criterion, kv_share, warm):
    dc, cfg = DecodeConfig(6, criterion, min_loops=2, kv_share=kv_share, warm_start=warm), _cfg(criterion)
    toks = _tokens((1, 12))
    logits, iters = _decoder(dc, cfg=cfg).window_logits(_params(cfg), toks, jax.random.PRNGKey(0), EPS[criterion])
    eps = EPS[criterion]
    oracle = Oracle(
        cfg, _params(cfg), n_loop=6, criterion=criterion, eps=eps, min_loops=2, kv_share=kv_share, warm=warm
    )
    ref_logits, ref_iters = oracle.run(toks[0])
    np.testing.assert_array_equal(np.asarray(iters)[0], ref_iters)
    np.testing.assert_allclose(np.asarray(logits)[0], ref_logits, atol=1e-4)
    if criterion != "none":  # the rule really skips work, and not uniformly
        assert 2 <= ref_iters.min() and ref_iters.mean() < 6


@pytest.mark.parametrize(
    "criterion, kv_share, warm",
    [(c, 0, False) for c in EXIT_CRITERIA]
    + [("kl", 2, False), ("argmax", 0, True), ("latent_diff", 3, True), ("gate", 2, True)],
)
def test_prefill_equals_decode(criterion, kv_share, warm):
    """Logits of tokens decoded one at a time == logits of one prefill over the same tokens."""
    dc = DecodeConfig(6, criterion, min_loops=2, kv_share=kv_share, warm_start=warm)
    dec, params = _decoder(dc, cfg=_cfg(criterion)), _params(_cfg(criterion))
    gen = dec.generate(params, _tokens((2, 3)), 12, jax.random.PRNGKey(3), jax.random.PRNGKey(7), EPS[criterion])
    seq = np.concatenate([_tokens((2, 3)), gen.tokens_BxN[:, :-1]], axis=1)  # 14 <= block_size: one window
    logits, iters = dec.window_logits(params, seq, jax.random.PRNGKey(7), EPS[criterion])
    np.testing.assert_allclose(np.asarray(logits)[:, 2:], gen.logits_BxNxV, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(iters)[:, 2:], gen.iters_BxN)


@pytest.mark.parametrize("criterion", EXIT_CRITERIA)
def test_batch_of_8_equals_each_sequence_alone(criterion):
    dc = DecodeConfig(6, criterion, min_loops=1)
    dec, params = _decoder(dc, cfg=_cfg(criterion)), _params(_cfg(criterion))
    prompts = _tokens((8, 4), seed=5)
    batch = dec.generate(params, prompts, 24, jax.random.PRNGKey(3), jax.random.PRNGKey(7), EPS[criterion])
    for b in range(8):
        alone = dec.generate(
            params, prompts[b : b + 1], 24, jax.random.PRNGKey(3), jax.random.PRNGKey(7), EPS[criterion]
        )
        np.testing.assert_array_equal(batch.tokens_BxN[b], alone.tokens_BxN[0])
        np.testing.assert_array_equal(batch.iters_BxN[b], alone.iters_BxN[0])
    if criterion != "none":
        assert len(np.unique(batch.iters_BxN)) > 1  # rows really exit at different depths


# kl with kv_share (the parallel loop over a shared slot) and gate with warm start (the position-by-position loop):
# the compaction code is the same for every criterion, whose exit decisions test_decoder_equals... checks
@pytest.mark.parametrize("criterion, kv_share, warm", [("kl", 2, False), ("gate", 0, True)])
def test_compacted_rows_equal_the_full_batch(criterion, kv_share, warm):
    """Running each iteration on the active rows alone (gathered, scattered back) changes no token, iteration
    count or logit against running every row, with rows that exit at different depths."""
    kw = dict(min_loops=1, kv_share=kv_share, warm_start=warm)
    cfg, params, prompts = _cfg(criterion), _params(_cfg(criterion)), _tokens((8, 4), seed=5)
    out = [
        _decoder(DecodeConfig(6, criterion, compact_rows=compact, **kw), cfg=cfg).generate(
            params, prompts, 16, jax.random.PRNGKey(3), jax.random.PRNGKey(7), EPS[criterion]
        )
        for compact in (True, False)
    ]
    np.testing.assert_array_equal(out[0].tokens_BxN, out[1].tokens_BxN)
    np.testing.assert_array_equal(out[0].iters_BxN, out[1].iters_BxN)
    np.testing.assert_allclose(out[0].logits_BxNxV, out[1].logits_BxNxV, atol=1e-5)
    # some iterations ran with fewer than half the rows active: the compacted path really ran
    assert (np.sum(out[0].iters_BxN[:, :, None] > np.arange(6), axis=0) <= 4).any()


def test_kv_share_fixes_the_cache_size_and_changes_only_what_sharing_implies():
    plain, shared = _decoder(DecodeConfig(6)), _decoder(DecodeConfig(6, kv_share=2))
    assert plain.n_layers == 1 + 6 * 2 + 1 and shared.n_layers == 1 + 2 * 2 + 1
    assert shared.cache_bytes(1) * 14 == plain.cache_bytes(1) * 6
    toks = _tokens((1, 10))
    a = np.asarray(plain.window_logits(_params(), toks, jax.random.PRNGKey(0))[0])
    b = np.asarray(shared.window_logits(_params(), toks, jax.random.PRNGKey(0))[0])
    np.testing.assert_allclose(a[:, 0], b[:, 0], atol=1e-5)  # the first position attends only to itself
    assert np.abs(a[:, 1:] - b[:, 1:]).max() > 1e-3


@pytest.mark.parametrize(
    "criterion, draft",
    [
        ("none", {"draft_n_loop": 1}),
        ("kl", {"draft_n_loop": 1}),
        # drafts stopped by an exit rule, up to the full depth (the draft and the verifier use the same slots)
        ("none", {"draft_n_loop": 4, "draft_exit": "latent_diff", "draft_threshold": 0.3}),
        ("kl", {"draft_n_loop": 3, "draft_exit": "kl", "draft_threshold": 0.01}),
        ("none", {"draft_n_loop": 4, "draft_exit": "argmax", "draft_threshold": 1}),  # the number is its patience
    ],
)
def test_speculative_greedy_equals_plain_past_block_size(criterion, draft):
    plain = _decoder(DecodeConfig(4, criterion))
    spec = _decoder(DecodeConfig(4, criterion, draft_tokens=3, **draft))
    params, prompts = _params(), _tokens((2, 5))
    args = (params, prompts, 45, jax.random.PRNGKey(3), jax.random.PRNGKey(7), EPS[criterion])
    a, b = plain.generate(*args), spec.generate(*args)  # 5 + 45 tokens: three windows of block_size 16
    np.testing.assert_array_equal(a.tokens_BxN, b.tokens_BxN)
    np.testing.assert_array_equal(a.iters_BxN, b.iters_BxN)
    np.testing.assert_allclose(a.logits_BxNxV, b.logits_BxNxV, atol=1e-4)
    assert spec.stats["rounds"] > 0 and 0 < spec.stats["accepted"] <= spec.stats["drafted"]
    if "draft_exit" not in draft:  # a one-iteration draft disagrees somewhere: the rollback path ran too
        assert spec.stats["accepted"] < spec.stats["drafted"]


def test_speculative_sampling_keeps_the_models_distribution():
    """The joint distribution of two sampled tokens equals the model's exact one, which the draft's is not."""
    cfg = dataclasses.replace(TINY, vocab_size=5)
    params = _params(cfg, 0.6)
    sc = SampleConfig(temperature=1.0, top_k=None)
    n = 6000
    prompt = np.tile(np.array([[1, 3, 2]], np.int32), (n, 1))
    spec = _decoder(DecodeConfig(4, draft_n_loop=1, draft_tokens=2), sc, cfg)
    gen = spec.generate(params, prompt, 2, jax.random.PRNGKey(11))
    empirical = np.zeros((5, 5))
    np.add.at(empirical, (gen.tokens_BxN[:, 0], gen.tokens_BxN[:, 1]), 1.0 / n)

    def joint(n_loop):
        seqs = np.array([[1, 3, 2, a] for a in range(5)], np.int32)
        logp = jax.nn.log_softmax(LoopedGPT(cfg).apply({"params": params}, seqs, n_loop=n_loop), -1)
        return np.exp(np.asarray(logp[0, 2])[:, None] + np.asarray(logp[:, 3]))

    exact, draft = joint(4), joint(1)
    assert np.abs(empirical - exact).max() < 0.025  # ~3.5 standard errors of the largest cell
    assert np.abs(draft - exact).max() > 0.05  # drafts alone would fail the check above


def test_naive_recomputation_equals_the_decoder_with_inject_random():
    cfg = dataclasses.replace(TINY, input_injection="inject_random")
    params = _params(cfg)
    dec = _decoder(DecodeConfig(3), GREEDY, cfg)
    key, noise_key = jax.random.PRNGKey(3), jax.random.PRNGKey(7)
    a = dec.generate(params, _tokens((2, 2)), 20, key, noise_key)
    b = naive_generate(cfg, params, _tokens((2, 2)), 20, key, GREEDY, noise_key=noise_key)
    np.testing.assert_array_equal(a.tokens_BxN, b.tokens_BxN)
    np.testing.assert_allclose(a.logits_BxNxV, b.logits_BxNxV, atol=1e-4)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"kv_share": 7}, "kv_share \\(7\\) must be in 0..n_loop \\(6\\)"),
        ({"draft_n_loop": 6}, "draft_n_loop \\(6\\) must be in 1..n_loop-1"),
        ({"draft_n_loop": 7, "draft_exit": "kl"}, "draft_n_loop \\(7\\) must be in 1..n_loop \\(6\\)"),
        ({"draft_exit": "kl"}, "a draft exit rule needs speculative decoding"),
        ({"draft_n_loop": 2, "draft_exit": "halting"}, "unknown draft exit rule 'halting'"),
        ({"exit_criterion": "confidence"}, "unknown exit criterion 'confidence'"),
        ({"min_loops": 0}, "min_loops must be in 1..n_loop"),
        ({"draft_n_loop": 2, "warm_start": True}, "speculative decoding verifies drafts in one parallel pass"),
    ],
)
def test_bad_combinations_are_one_line(kw, message):
    with pytest.raises(ValueError, match=message):
        DecodeConfig(6, **kw).validate()


def test_exit_threshold_is_traced_not_compiled():
    dec = _decoder(DecodeConfig(6, "latent_diff"))
    for eps in (0.1, 0.2, 0.5):
        dec.window_logits(_params(), _tokens((1, 8)), jax.random.PRNGKey(0), eps)
    assert dec._window_logits.compilations() == 1


def test_gate_criterion_needs_a_gated_model():
    with pytest.raises(ValueError, match="exit_gate=True"):
        KVDecoder(TINY, GREEDY, DecodeConfig(4, "gate"))
