"""Behaviour of LoopedGPT: causality, scan == unrolled, remat, truncated BPTT, depth override, init."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import perturbed_params, tiny_config

from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.layers import Block, Dense, rms_norm
from nanoloop_jax.model.looped import LoopedGPT, count_params, init_params

TINY = tiny_config(vocab_size=29, n_embd=16, bptt_k=None)


def _idx(b=2, t=10, seed=0, vocab=29):
    return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 0, vocab)


def _perturbed_params(cfg):
    return perturbed_params(cfg, 0.05)


def unrolled_forward(cfg, params, idx, n_loop=None, detach_before=0):
    """Reference: the same model as plain Python loops over submodule applies (no nn.scan)."""
    n_loop = n_loop or cfg.n_loop
    t = idx.shape[1]
    x = params["wte"]["embedding"][idx] + params["wpe"]["embedding"][jnp.arange(t)][None]
    for j in range(cfg.n_prelude):
        x = Block(cfg).apply({"params": params[f"prelude_{j}"]}, x, jnp.arange(t))[0]
    e = x
    s = e
    for i in range(n_loop):
        if cfg.input_injection == "passthrough":
            u = s
        else:
            inject = Dense(cfg.n_embd, ("inject_in", "embed"), use_bias=cfg.bias)
            u = inject.apply({"params": params["loop"]["inject"]}, jnp.concatenate([e, s], -1))
        for j in range(cfg.n_block):
            u = Block(cfg).apply({"params": params["loop"][f"recur_{j}"]}, u, jnp.arange(t))[0]
        s = rms_norm(cfg, "n").apply({"params": params["loop"]["norm_recur"]}, u)
        if i < detach_before:
            s = jax.lax.stop_gradient(s)
    x = s
    for j in range(cfg.n_coda):
        x = Block(cfg).apply({"params": params[f"coda_{j}"]}, x, jnp.arange(t))[0]
    x = rms_norm(cfg, "n").apply({"params": params["ln_f"]}, x)
    return x @ params["wte"]["embedding"].T


def _loss(cfg, params, idx, **kw):
    logits = LoopedGPT(cfg).apply({"params": params}, idx, **kw)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], idx[:, 1:]).mean()


def _ref_loss(cfg, params, idx, **kw):
    logits = unrolled_forward(cfg, params, idx, **kw)
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], idx[:, 1:]).mean()


def _max_tree_diff(a, b):
    return max(
        float(jnp.abs(x - y).max())
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


@pytest.mark.parametrize("injection", ["inject", "passthrough"])
def test_scan_equals_unrolled(injection):
    cfg = dataclasses.replace(TINY, input_injection=injection)
    params, idx = _perturbed_params(cfg), _idx()
    got = LoopedGPT(cfg).apply({"params": params}, idx)
    want = unrolled_forward(cfg, params, idx)
    np.testing.assert_allclose(got, want, atol=1e-5)
    g_got = jax.grad(lambda p: _loss(cfg, p, idx))(params)
    g_want = jax.grad(lambda p: _ref_loss(cfg, p, idx))(params)
    assert _max_tree_diff(g_got, g_want) < 1e-5


def test_causality():
    params, idx = _perturbed_params(TINY), _idx()
    logits = LoopedGPT(TINY).apply({"params": params}, idx)
    idx2 = idx.at[:, 6].set((idx[:, 6] + 1) % TINY.vocab_size)
    logits2 = LoopedGPT(TINY).apply({"params": params}, idx2)
    np.testing.assert_allclose(logits[:, :6], logits2[:, :6], atol=1e-6)
    assert float(jnp.abs(logits[:, 6:] - logits2[:, 6:]).max()) > 1e-4


def test_non_causal_attends_to_later_tokens_and_refuses_to_decode():
    """model.causal=False: a change at position 6 reaches every position, earlier ones too (causal: only 6 on)."""
    from nanoloop_jax.decode.recurrence import DecodeConfig, Recurrence
    from nanoloop_jax.errors import ConfigError

    cfg = dataclasses.replace(TINY, causal=False)
    params, idx = _perturbed_params(cfg), _idx()
    idx2 = idx.at[:, 6].set((idx[:, 6] + 1) % cfg.vocab_size)
    logits, logits2 = (LoopedGPT(cfg).apply({"params": params}, i) for i in (idx, idx2))
    assert float(jnp.abs(logits[:, :6] - logits2[:, :6]).min(axis=-1).max()) > 1e-6
    assert float(jnp.abs(logits[:, 0] - logits2[:, 0]).max()) > 1e-4
    with pytest.raises(ConfigError, match="cannot decode token by token"):
        Recurrence(cfg, DecodeConfig(n_loop=2))


def test_remat_equals_no_remat():
    params, idx = _perturbed_params(TINY), _idx()
    cfg_remat = dataclasses.replace(TINY, remat_policy="nothing_saveable")
    l0, g0 = jax.value_and_grad(lambda p: _loss(TINY, p, idx))(params)
    l1, g1 = jax.value_and_grad(lambda p: _loss(cfg_remat, p, idx))(params)
    np.testing.assert_allclose(l0, l1, rtol=1e-6)
    assert _max_tree_diff(g0, g1) < 1e-6


def test_bptt_k_none_equals_bptt_k_n_loop():
    params, idx = _perturbed_params(TINY), _idx()
    g_none = jax.grad(lambda p: _loss(TINY, p, idx))(params)
    g_full = jax.grad(lambda p: _loss(dataclasses.replace(TINY, bptt_k=TINY.n_loop), p, idx))(params)
    g_more = jax.grad(lambda p: _loss(dataclasses.replace(TINY, bptt_k=10), p, idx))(params)
    assert _max_tree_diff(g_none, g_full) < 1e-7
    assert _max_tree_diff(g_none, g_more) < 1e-7


def test_bptt_k1_gradient_is_last_iteration_only():
    cfg = dataclasses.replace(TINY, bptt_k=1)
    params, idx = _perturbed_params(cfg), _idx()
    g = jax.grad(lambda p: _loss(cfg, p, idx))(params)
    # hand-built expectation: stop_gradient after every iteration but the last
    g_want = jax.grad(lambda p: _ref_loss(cfg, p, idx, detach_before=cfg.n_loop - 1))(params)
    g_full = jax.grad(lambda p: _ref_loss(cfg, p, idx))(params)
    assert _max_tree_diff(g, g_want) < 1e-5
    # and it really is truncated: recur grads differ from full backprop
    assert _max_tree_diff(g["loop"]["recur_0"], g_full["loop"]["recur_0"]) > 1e-4


def test_plain_gpt_when_one_loop_and_no_prelude_coda():
    # norm_eps ~0: RMSNorm(RMSNorm(x)) == RMSNorm(x) only when eps is negligible against mean(x^2) ~ 5e-4
    cfg = dataclasses.replace(
        TINY, n_prelude=0, n_coda=0, n_block=3, n_loop=1, input_injection="passthrough", norm_eps=1e-12
    )
    params, idx = init_params(cfg, jax.random.PRNGKey(3)), _idx()
    x = params["wte"]["embedding"][idx] + params["wpe"]["embedding"][: idx.shape[1]][None]
    for j in range(3):
        x = Block(cfg).apply({"params": params["loop"][f"recur_{j}"]}, x, jnp.arange(idx.shape[1]))[0]
    # norm_recur (scale 1 at init) followed by ln_f equals ln_f alone
    x = rms_norm(cfg, "n").apply({"params": params["ln_f"]}, x)
    np.testing.assert_allclose(
        LoopedGPT(cfg).apply({"params": params}, idx), x @ params["wte"]["embedding"].T, atol=1e-5
    )


def test_inject_init_is_identity_on_prelude_output():
    params = init_params(TINY, jax.random.PRNGKey(0))
    e = jax.random.normal(jax.random.PRNGKey(1), (2, 5, TINY.n_embd))
    s = jax.random.normal(jax.random.PRNGKey(2), (2, 5, TINY.n_embd))
    inject = Dense(TINY.n_embd, ("inject_in", "embed"), use_bias=False)
    out = inject.apply({"params": params["loop"]["inject"]}, jnp.concatenate([e, s], -1))
    np.testing.assert_allclose(out, e, atol=1e-6)


def test_inject_random_depends_on_noise_key_only():
    cfg = dataclasses.replace(TINY, input_injection="inject_random")
    params, idx = _perturbed_params(cfg), _idx()
    model = LoopedGPT(cfg)
    a = model.apply({"params": params}, idx, rngs={"noise": jax.random.PRNGKey(1)})
    b = model.apply({"params": params}, idx, rngs={"noise": jax.random.PRNGKey(1)})
    c = model.apply({"params": params}, idx, rngs={"noise": jax.random.PRNGKey(2)})
    np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(a - c).max()) > 1e-4
    # with the [I | 0] init kernel the noisy first state is ignored, so inject_random == inject exactly
    params_id = {
        **params,
        "loop": {**params["loop"], "inject": init_params(cfg, jax.random.PRNGKey(0))["loop"]["inject"]},
    }
    inject = LoopedGPT(dataclasses.replace(cfg, input_injection="inject")).apply({"params": params_id}, idx)
    np.testing.assert_allclose(
        model.apply({"params": params_id}, idx, rngs={"noise": jax.random.PRNGKey(1)}), inject, atol=1e-6
    )
    with pytest.raises(ValueError, match="noise"):
        model.apply({"params": params}, idx)


def test_n_loop_override_changes_depth_not_params():
    params, idx = _perturbed_params(TINY), _idx()
    model = LoopedGPT(TINY)
    deep = model.apply({"params": params}, idx, n_loop=7)
    np.testing.assert_allclose(deep, unrolled_forward(TINY, params, idx, n_loop=7), atol=1e-5)
    assert float(jnp.abs(deep - model.apply({"params": params}, idx)).max()) > 1e-4
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, idx, n_loop=7))
    assert jax.tree_util.tree_structure(nn.unbox(shapes["params"])) == jax.tree_util.tree_structure(params)


def test_dropout_only_in_training():
    cfg = dataclasses.replace(TINY, dropout=0.3)
    params, idx = _perturbed_params(cfg), _idx()
    model = LoopedGPT(cfg)
    ev1 = model.apply({"params": params}, idx)
    ev2 = model.apply({"params": params}, idx, rngs={"dropout": jax.random.PRNGKey(5)})
    np.testing.assert_array_equal(ev1, ev2)
    tr1 = model.apply({"params": params}, idx, train=True, rngs={"dropout": jax.random.PRNGKey(5)})
    tr2 = model.apply({"params": params}, idx, train=True, rngs={"dropout": jax.random.PRNGKey(6)})
    assert float(jnp.abs(tr1 - ev1).max()) > 1e-3
    assert float(jnp.abs(tr1 - tr2).max()) > 1e-3


def test_init_scales():
    cfg = ModelConfig(block_size=8, vocab_size=512, n_prelude=1, n_block=1, n_coda=1, n_head=4, n_embd=256)
    p = init_params(cfg, jax.random.PRNGKey(0))
    assert abs(float(p["wte"]["embedding"].std()) - 0.02) < 1e-3
    assert abs(float(p["prelude_0"]["mlp"]["c_fc"]["kernel"].std()) - 0.02) < 1e-3
    want = 0.02 / np.sqrt(2 * 3)
    assert abs(float(p["prelude_0"]["mlp"]["c_proj"]["kernel"].std()) - want) < 5e-4
    assert abs(float(p["loop"]["recur_0"]["attn"]["c_proj"]["kernel"].std()) - want) < 5e-4
    np.testing.assert_array_equal(p["ln_f"]["scale"], 1.0)


def test_count_params_by_hand():
    cfg = dataclasses.replace(TINY, bias=True)
    counts = count_params(init_params(cfg, jax.random.PRNGKey(0)))
    d, v, t = 16, 29, 16
    block = 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    assert counts["prelude"] == counts["coda"] == block
    assert counts["recur"] == 2 * block
    assert counts["inject"] == 2 * d * d + d
    assert counts["norm_recur"] == d
    total = v * d + t * d + 4 * block + (2 * d * d + d) + d + d  # + norm_recur + ln_f
    assert counts["total"] == total
    assert counts["non_embedding"] == total - t * d


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_head", 3, "divisible by model.n_head"),
        ("bptt_k", 0, "bptt_k must be None"),
        ("bptt_k", 9, r"model.bptt_k \(9\) must be <= model.n_loop \(3\)"),
        ("input_injection", "add", "input_injection must be one of"),
        ("n_embd", 0, "n_embd must be a positive integer"),
        ("n_loop", -1, "n_loop must be a positive integer"),
        ("n_prelude", -1, "n_prelude must be a non-negative integer"),
        ("attention", "flash", "attention must be one of"),
        ("remat_policy", "everything", "remat_policy must be"),
        ("dtype", "fp8", "dtype must be one of"),
        ("dropout", 1.5, "dropout must be in"),
    ],
)
def test_validation_messages(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **{field: value}).validate()


def test_sequence_longer_than_block_size():
    params = init_params(TINY, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="longer than model.block_size 16"):
        LoopedGPT(TINY).apply({"params": params}, jnp.zeros((1, 17), jnp.int32))


def test_inject_init_identity_and_additive():
    """The inject kernel (2D, D) starts as [I; 0] (nanoLOOP: u = e) or [I; I] (u = e + s)."""
    for kind, lower in (("identity", 0.0), ("additive", 1.0)):
        kernel = np.asarray(
            init_params(tiny_config(inject_init=kind), jax.random.PRNGKey(0))["loop"]["inject"]["kernel"]
        )
        d = kernel.shape[1]
        np.testing.assert_array_equal(kernel, np.concatenate([np.eye(d), lower * np.eye(d)]))
    with pytest.raises(ValueError, match="inject_init"):
        tiny_config(inject_init="zeros").validate()
