"""Positions past block_size: learned (slide == nanoLOOP's crop, restart), rope and NoPE (ring KV caches)."""

import dataclasses
import functools

import jax
import numpy as np
import pytest
from exit_oracle import Oracle
from helpers import perturbed_params, tiny_config

from nanoloop_jax.decode.recompute import naive_generate
from nanoloop_jax.decode.recurrence import DecodeConfig
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig
from nanoloop_jax.model.looped import LoopedGPT, count_params

TINY = tiny_config()
GREEDY = SampleConfig(temperature=0.0)
NEW = 40  # past block_size (16) more than twice


@functools.cache
def _params(pos_encoding: str):
    cfg = dataclasses.replace(TINY, pos_encoding=pos_encoding)
    return cfg, perturbed_params(cfg, 0.3)


def _prompt(length=5, batch=2):
    return np.random.default_rng(length).integers(0, TINY.vocab_size, (batch, length)).astype(np.int32)


@pytest.mark.parametrize("window", ["slide", "restart"])
def test_learned_positions_equal_full_recomputation_over_the_same_windows(window):
    cfg, params = _params("learned")
    dec = KVDecoder(cfg, GREEDY, chunk_size=8, return_logits=True, window=window)
    key, noise_key = jax.random.PRNGKey(3), jax.random.PRNGKey(7)
    kv = dec.generate(params, _prompt(), NEW, key, noise_key)
    ref = naive_generate(cfg, params, _prompt(), NEW, key, GREEDY, noise_key=noise_key, window=window)
    np.testing.assert_array_equal(kv.tokens_BxN, ref.tokens_BxN)
    np.testing.assert_allclose(kv.logits_BxNxV, ref.logits_BxNxV, atol=1e-4)


def test_slide_and_restart_differ_past_block_size_only(capsys):
    cfg, params = _params("learned")
    decoders = {w: KVDecoder(cfg, GREEDY, chunk_size=8, return_logits=True, window=w) for w in ("slide", "restart")}
    a, b = (dec.generate(params, _prompt(), NEW, jax.random.PRNGKey(3)) for dec in decoders.values())
    # slide says once (of its many re-prefills past block_size) that it re-prefills, and what keeps the speed
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "--window=slide re-prefills" in notes[0] and "--window=restart keeps" in notes[0], notes
    decoders["restart"].generate(params, _prompt(), NEW, jax.random.PRNGKey(3))
    assert "note:" not in capsys.readouterr().err
    n_first = TINY.block_size - 5 + 1  # tokens predicted before the window first fills
    np.testing.assert_allclose(a.logits_BxNxV[:, :n_first], b.logits_BxNxV[:, :n_first], atol=1e-5)
    assert np.abs(a.logits_BxNxV[:, n_first:] - b.logits_BxNxV[:, n_first:]).max() > 1e-3


@pytest.mark.parametrize("pos_encoding", ["rope", "none"])
@pytest.mark.parametrize("draft", [0, 1])
def test_ring_cache_decode_equals_sliding_window_oracle_past_block_size(pos_encoding, draft):
    """Every layer attends to the last block_size positions, decoded with ring caches (also speculatively)."""
    cfg, params = _params(pos_encoding)
    dc = DecodeConfig(3, draft_n_loop=draft, draft_tokens=3)
    dec = KVDecoder(cfg, GREEDY, dc, chunk_size=8, return_logits=True)
    prompt = _prompt(batch=1)
    gen = dec.generate(params, prompt, NEW, jax.random.PRNGKey(3))
    seq = np.concatenate([prompt[0], gen.tokens_BxN[0, :-1]])
    ref_logits, ref_iters = Oracle(cfg, params, n_loop=3).run(seq)
    np.testing.assert_allclose(gen.logits_BxNxV[0], ref_logits[prompt.shape[1] - 1 :], atol=1e-4)
    np.testing.assert_array_equal(gen.tokens_BxN[0], np.argmax(ref_logits[prompt.shape[1] - 1 :], -1))
    if draft:
        assert dec.stats["rounds"] > 0


@pytest.mark.parametrize("pos_encoding", ["rope", "none"])
def test_rope_and_nope_have_no_position_table_and_train(pos_encoding):
    cfg, params = _params(pos_encoding)
    assert "wpe" not in params
    learned = count_params(_params("learned")[1])
    assert count_params(params)["total"] == learned["total"] - TINY.block_size * TINY.n_embd
    idx = _prompt(12)
    logits = LoopedGPT(cfg).apply({"params": params}, idx)
    grads = jax.grad(lambda p: LoopedGPT(cfg).apply({"params": p}, idx).mean())(params)
    assert np.isfinite(np.asarray(logits)).all() and float(np.abs(grads["wte"]["embedding"]).max()) > 0
    ref, _ = Oracle(cfg, params, n_loop=3).run(idx[0])
    np.testing.assert_allclose(np.asarray(logits)[0], ref, atol=1e-4)


def test_rope_depends_on_relative_position_only():
    """Shifting every position by the same offset leaves rope attention scores unchanged."""
    from nanoloop_jax.model.layers import apply_rope

    q, k = (np.random.default_rng(i).normal(size=(1, 6, 2, 8)).astype(np.float32) for i in range(2))
    pos = np.arange(6)
    scores = lambda off: np.einsum("bthk,bshk->bhts", apply_rope(q, pos + off, 1e4), apply_rope(k, pos + off, 1e4))  # noqa: E731
    np.testing.assert_allclose(scores(0), scores(37), atol=1e-4)
    assert np.abs(scores(0) - np.einsum("bthk,bshk->bhts", q, k)).max() > 1e-2


def test_slide_reproduces_nanoloops_own_generate_far_past_block_size():
    """tests/fixtures/generate_ref: nanoLOOP's GPT.generate(top_k=1) on its ckpt.pt, 60 tokens past block 16."""
    from conftest import REPO_ROOT

    from nanoloop_jax.ckpt import convert

    fixture = REPO_ROOT / "tests" / "fixtures" / "generate_ref"
    try:
        ckpt = convert.load_nanoloop_ckpt(str(fixture / "ckpt.pt"))
    except ImportError as err:
        pytest.skip(str(err))
    cfg, params = convert.from_nanoloop(ckpt["model"], ckpt["model_args"])
    ref = np.load(fixture / "generate_top1.npy")  # (2, 5 + 60): prompt, then nanoLOOP's tokens
    prompt, want = ref[:, :5], ref[:, 5:]
    for window, same in (("slide", True), ("restart", False)):
        dec = KVDecoder(cfg, GREEDY, chunk_size=8, window=window)
        got = dec.generate(params, prompt, want.shape[1], jax.random.PRNGKey(0)).tokens_BxN
        assert np.array_equal(got, want) == same, window
        np.testing.assert_array_equal(got[:, : cfg.block_size - 4], want[:, : cfg.block_size - 4])


@pytest.mark.parametrize("pos_encoding", ["learned", "rope", "none"])
def test_attn_window_forward_and_kv_decode_equal_the_sliding_window_oracle(pos_encoding):
    """model.attn_window: every layer of the full forward and of the KV decoder attends to the last 5 positions."""
    cfg = dataclasses.replace(TINY, pos_encoding=pos_encoding, attn_window=5)
    params = _params(pos_encoding)[1]  # the window adds no parameters
    idx = _prompt(14, batch=1)
    logits = np.asarray(LoopedGPT(cfg).apply({"params": params}, idx, n_loop=3))[0]
    ref, _ = Oracle(cfg, params, n_loop=3).run(idx[0])
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    whole = np.asarray(LoopedGPT(_params(pos_encoding)[0]).apply({"params": params}, idx, n_loop=3))[0]
    assert np.abs(whole[-1] - logits[-1]).max() > 1e-2  # the window changes what a late position sees
    np.testing.assert_allclose(whole[:5], logits[:5], atol=1e-5)  # ... not what the first 5 see
    new = NEW if pos_encoding != "learned" else TINY.block_size - 5  # learned: within the position table
    draft = 1 if pos_encoding == "rope" else 0  # rope: self-speculative rounds through the same window
    dc = DecodeConfig(3, draft_n_loop=draft, draft_tokens=3)
    dec = KVDecoder(cfg, GREEDY, dc, chunk_size=8, return_logits=True)
    gen = dec.generate(params, idx[:, :5], new, jax.random.PRNGKey(3))
    seq = np.concatenate([idx[0, :5], gen.tokens_BxN[0, :-1]])
    ref_logits, _ = Oracle(cfg, params, n_loop=3).run(seq)
    np.testing.assert_allclose(gen.logits_BxNxV[0], ref_logits[4:], atol=1e-4)
    if draft:
        assert dec.stats["rounds"] > 0


@pytest.mark.parametrize("bad", [0, TINY.block_size + 1, 2.5])
def test_attn_window_out_of_range_is_one_line(bad):
    from nanoloop_jax.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.attn_window must be None \(the whole context\) or an integer in"):
        dataclasses.replace(TINY, attn_window=bad).validate()
