"""The halting objectives (train/halting.py) against written-out numpy loops over iterations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanoloop_jax.train import halting

RNG = np.random.default_rng(0)
L, N = 6, 5  # iterations, positions


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def ref_probs(h, depth):
    """p_i for i < depth, written out: lambda_i · prod_{j<i}(1 - lambda_j), the last one takes the rest."""
    p = np.zeros_like(h)
    for n in range(h.shape[1]):
        survive = 1.0
        for i in range(depth):
            lam = sig(h[i, n])
            p[i, n] = survive if i == depth - 1 else survive * lam
            survive *= 1.0 - lam
    return p


def ref_stage1(losses, h, depth, mask, kind, beta, prior):
    p = ref_probs(h, depth)
    q = np.array([prior * (1 - prior) ** i if i < depth - 1 else (1 - prior) ** i for i in range(depth)])
    total, count = 0.0, 0
    for n in range(h.shape[1]):
        if not mask[n]:
            continue
        expected = sum(p[i, n] * losses[i, n] for i in range(depth))
        if kind == "ponder":
            reg = sum(p[i, n] * math.log(p[i, n] / q[i]) for i in range(depth) if p[i, n] > 0)
        else:
            reg = sum(p[i, n] * math.log(p[i, n]) for i in range(depth) if p[i, n] > 0)
        total += expected + beta * reg
        count += 1
    return total / count


def ref_stage2(losses, h, depth, mask, lookahead):
    total, count = 0.0, 0
    for n in range(h.shape[1]):
        if not mask[n]:
            continue
        for i in range(depth - 1):
            later = losses[i + 1, n] if lookahead == "next" else min(losses[j, n] for j in range(i + 1, depth))
            w = sig(halting.OURO_K * (max(0.0, losses[i, n] - later) - halting.OURO_GAMMA))
            t, lam = 1.0 - w, sig(h[i, n])
            total += -(t * math.log(lam) + (1 - t) * math.log(1 - lam))
            count += 1
    return total / count


@pytest.mark.parametrize("depth", [1, 3, L])
def test_probs_match_the_written_out_product_and_sum_to_one(depth):
    h = RNG.normal(size=(L, N)) * 2
    p = np.exp(np.asarray(halting.log_halting_probs(jnp.asarray(h), depth)))
    np.testing.assert_allclose(p, ref_probs(h, depth), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(p.sum(0), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kind", ["ponder", "ouro"])
@pytest.mark.parametrize("depth", [2, 4])
def test_stage1_loss_matches_reference_and_traced_depth(kind, depth):
    losses, h = RNG.uniform(0.5, 3.0, size=(L, N)), RNG.normal(size=(L, N))
    mask = np.array([1, 1, 0, 1, 1], bool)
    want = ref_stage1(losses, h, depth, mask, kind, beta=0.3, prior=0.25)
    got, _ = halting.stage1_loss(jnp.asarray(losses), jnp.asarray(h), depth, jnp.asarray(mask), kind, 0.3, 0.25)
    traced = jax.jit(
        lambda d: halting.stage1_loss(jnp.asarray(losses), jnp.asarray(h), d, jnp.asarray(mask), kind, 0.3, 0.25)[0]
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(traced(jnp.int32(depth))), want, rtol=1e-5)


@pytest.mark.parametrize("lookahead", ["next", "all"])
def test_stage2_loss_matches_reference(lookahead):
    losses, h = RNG.uniform(0.5, 3.0, size=(L, N)), RNG.normal(size=(L, N))
    losses[2:, 1] = losses[1, 1] + 0.0  # a plateau, where 'next' and 'all' differ
    losses[4, 1] = 0.1
    mask = np.ones(N, bool)
    got, _ = halting.stage2_loss(jnp.asarray(losses), jnp.asarray(h), 5, jnp.asarray(mask), lookahead)
    np.testing.assert_allclose(float(got), ref_stage2(losses, h, 5, mask, lookahead), rtol=1e-5)


def test_all_lookahead_sees_past_a_plateau_where_next_does_not():
    # parity-like: chance until iteration 4, right at 4, chance after
    losses = np.array([0.69, 0.69, 0.69, 0.01, 0.69, 0.69])[:, None]
    t_next, _ = halting.stage2_targets(jnp.asarray(losses), 6, "next")
    t_all, has = halting.stage2_targets(jnp.asarray(losses), 6, "all")
    # no gain: the stop target is 1 - sigmoid(-k·gamma) = 0.56 (Ouro's constants), a gain of 0.68 nats: ~0
    assert float(t_next[0, 0]) > 0.5  # 'next': no gain from 1 to 2, so stop at 1
    assert np.all(np.asarray(t_all[:3, 0]) < 0.01) and float(t_all[3, 0]) > 0.5  # 'all': continue, then stop at 4
    assert list(np.asarray(has[:, 0])) == [True] * 5 + [False]


def test_stage1_gradients_match_finite_differences():
    losses, h = RNG.uniform(0.5, 3.0, size=(L, N)), RNG.normal(size=(L, N))
    mask = np.ones(N, bool)

    def f(hh):
        return halting.stage1_loss(jnp.asarray(losses), hh, 4, jnp.asarray(mask), "ponder", 0.1, 0.3)[0]

    g = np.asarray(jax.grad(f)(jnp.asarray(h, jnp.float32)))
    eps = 1e-3
    for i, n in [(0, 0), (2, 3), (3, 1), (5, 2)]:
        hp, hm = h.copy(), h.copy()
        hp[i, n] += eps
        hm[i, n] -= eps
        fd = (
            ref_stage1(losses, hp, 4, mask, "ponder", 0.1, 0.3) - ref_stage1(losses, hm, 4, mask, "ponder", 0.1, 0.3)
        ) / (2 * eps)
        np.testing.assert_allclose(g[i, n], fd, atol=1e-5)
    assert np.all(g[4:] == 0)  # iterations past depth get no gradient


def test_depth_targets_stop_from_the_task_depth_on():
    losses = jnp.asarray(RNG.uniform(size=(6, 2)))
    target, has = halting.stage2_targets(losses, 5, "depth", task_depth=3)
    np.testing.assert_array_equal(np.asarray(target[:, 0]), [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(np.asarray(has[:, 0]), [True] * 5 + [False])
