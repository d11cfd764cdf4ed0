"""Randomized-depth training: the depth sampler, traced-depth == static-depth, one compile for every depth."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_config

from nanoloop_jax.config import base_config
from nanoloop_jax.model.looped import LoopedGPT, init_params
from nanoloop_jax.train.depth import sample_depth
from nanoloop_jax.train.optim import make_optimizer
from nanoloop_jax.train.steps import init_train_state, make_train_step

CFG = tiny_config(
    vocab_size=29, n_loop=4, n_embd=16, loop_sampling="poisson_lognormal", n_loop_mean=4.0, n_loop_max=32, dropout=0.1
)


def test_depth_is_a_pure_function_of_seed_and_step():
    a = [sample_depth(CFG, 1337, t) for t in range(200)]
    assert a == [sample_depth(CFG, 1337, t) for t in range(200)]
    assert a != [sample_depth(CFG, 1338, t) for t in range(200)]
    assert min(a) >= CFG.bptt_k and max(a) <= CFG.n_loop_max and len(set(a)) > 4
    assert sample_depth(dataclasses.replace(CFG, loop_sampling="fixed"), 0, 5) == 4


@pytest.mark.parametrize("mean", [3.0, 6.0, 10.0])
def test_depth_distribution_mean(mean):
    cfg = dataclasses.replace(CFG, n_loop_mean=mean, n_loop_max=1000)
    depths = np.array([sample_depth(cfg, 0, t) for t in range(20000)])
    assert abs(depths.mean() - mean) < 0.05 * mean
    assert depths.var() > depths.mean() - cfg.bptt_k  # over-dispersed vs Poisson: the log-normal rate


def test_depth_config_validation():
    with pytest.raises(ValueError, match="needs model.bptt_k"):
        dataclasses.replace(CFG, bptt_k=None).validate()
    with pytest.raises(ValueError, match="bptt_k <= n_loop_mean <= n_loop_max"):
        dataclasses.replace(CFG, n_loop_mean=1.0).validate()
    with pytest.raises(ValueError, match="loop_sampling must be one of"):
        dataclasses.replace(CFG, loop_sampling="uniform").validate()


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_traced_depth_equals_static_depth(dropout):
    """Also in train mode: iteration i draws its dropout mask from (key, i) in the fori_loop and in the scan."""
    cfg = dataclasses.replace(CFG, dropout=dropout)
    params = init_params(cfg, jax.random.PRNGKey(0))
    params = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), params)
    idx = jax.random.randint(jax.random.PRNGKey(2), (2, 10), 0, 29)
    train = dropout > 0

    def loss(p, n, seed=9):
        key = jax.random.PRNGKey(seed)
        logits = LoopedGPT(cfg).apply({"params": p}, idx, n_loop=n, train=train, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], idx[:, 1:]).mean()

    traced = jax.jit(jax.value_and_grad(loss))
    static = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    for n in (2, 6):  # 2 == bptt_k: no gradient-free iterations, the initial state keeps its gradient; 6: four without
        l_dyn, g_dyn = traced(params, jnp.int32(n))
        l_sta, g_sta = static(params, n)
        np.testing.assert_allclose(l_dyn, l_sta, rtol=1e-6)
        for a, b in zip(jax.tree_util.tree_leaves(g_dyn), jax.tree_util.tree_leaves(g_sta), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    if train:  # the masks are real: another key, or no dropout, gives another loss
        jloss = jax.jit(loss)  # depth and seed traced: one compile
        assert abs(float(jloss(params, 6)) - float(jloss(params, 6, 10))) > 1e-4
        no_dropout = jax.jit(LoopedGPT(dataclasses.replace(cfg, dropout=0.0)).apply, static_argnames="n_loop")
        logits = no_dropout({"params": params}, idx, n_loop=6)
        ref = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], idx[:, 1:]).mean()
        assert abs(float(jloss(params, 6)) - float(ref)) > 1e-4


def test_one_compilation_for_every_sampled_depth():
    model = LoopedGPT(CFG)
    tx = make_optimizer(base_config().opt)
    state = init_train_state(model, tx, jax.random.PRNGKey(0))
    traces = []
    step_fn = make_train_step(model, tx, dynamic_depth=True)

    def counted(*args):
        traces.append(1)
        return step_fn(*args)

    step = jax.jit(counted, donate_argnums=0)
    x = np.random.default_rng(0).integers(0, 29, size=(1, 4, 16)).astype(np.int32)
    depths = sorted({sample_depth(CFG, 0, t) for t in range(40)})[:4]
    losses = []
    for depth in depths:
        state, metrics = step(state, {"x": x, "y": x}, jax.random.PRNGKey(1), np.int32(depth))
        losses.append(float(metrics["loss"]))
    assert len(depths) == 4 and len(traces) == 1 and step._cache_size() == 1
    assert all(np.isfinite(losses))
