"""Speculative acceptance rules without a model: hand-written cases, and the sampled rule's output distribution
against an exact numpy enumeration of Leviathan et al.'s rule (which itself is checked to give the target)."""

import collections
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from nanoloop_jax.decode.speculation import accept_greedy, accept_sampled, emitted_tokens

V = 5


def _logits(argmax_BxT) -> jnp.ndarray:
    """Logits whose argmax at each position is the given token."""
    return 5.0 * jax.nn.one_hot(jnp.asarray(argmax_BxT), V)


def test_greedy_keeps_the_agreeing_prefix_then_the_targets_token():
    draft = jnp.array([[3, 1, 2]])
    acc = accept_greedy(draft, _logits([[3, 1, 0, 4]]))
    assert int(acc.n) == 2 and acc.next_B.tolist() == [0]
    assert emitted_tokens(draft, acc)[0, :3].tolist() == [3, 1, 0]
    acc = accept_greedy(draft, _logits([[3, 1, 2, 4]]))  # every draft agrees: the target's token after them
    assert int(acc.n) == 3 and acc.next_B.tolist() == [4]
    assert emitted_tokens(draft, acc)[0].tolist() == [3, 1, 2, 4]
    acc = accept_greedy(draft, _logits([[0, 1, 2, 4]]))  # the first draft is wrong: nothing kept
    assert int(acc.n) == 0 and acc.next_B.tolist() == [0]


def test_greedy_batch_keeps_the_prefix_every_row_accepts():
    draft = jnp.array([[3, 1, 2], [2, 2, 2]])
    acc = accept_greedy(draft, _logits([[3, 1, 0, 4], [2, 0, 2, 1]]))  # rows accept 2 and 1
    assert int(acc.n) == 1
    assert acc.next_B.tolist() == [1, 0]  # each row's target token at index 1 (row 0's is its own draft)
    assert emitted_tokens(draft, acc)[:, :2].tolist() == [[3, 1], [2, 0]]


def _dist(*rows) -> jnp.ndarray:
    return jnp.asarray(rows, jnp.float32)


def test_sampled_hand_cases():
    key = jax.random.PRNGKey(0)
    q = _dist([0.2, 0.2, 0.2, 0.2, 0.2], [0.1, 0.3, 0.2, 0.2, 0.2])
    # q == p: every draft is kept (ratio 1); the next token comes from p_L, here a point mass on 2
    p = jnp.concatenate([q, _dist([0, 0, 1, 0, 0])])
    for k in range(5):
        acc = accept_sampled(jnp.array([[4, 1]]), q[None], p[None], jax.random.fold_in(key, k))
        assert int(acc.n) == 2 and acc.next_B.tolist() == [2]
    # p_0(d_0) = 0: rejected at once; the residual max(0, p_0 - q_0) is a point mass on 1
    q0 = _dist([1, 0, 0, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.2])
    p0 = _dist([0, 1, 0, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.2, 0.2])
    acc = accept_sampled(jnp.array([[0, 3]]), q0[None], p0[None], key)
    assert int(acc.n) == 0 and acc.next_B.tolist() == [1]
    # a batch: row 0 keeps everything, row 1 is rejected at index 1 (p_1(3) = 0, residual on 0)
    p1 = _dist([0.2, 0.2, 0.2, 0.2, 0.2], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0])
    q1 = _dist([0.2, 0.2, 0.2, 0.2, 0.2], [0, 0, 0, 1, 0])
    acc = accept_sampled(jnp.array([[4, 1], [2, 3]]), jnp.stack([q, q1]), jnp.stack([p, p1]), key)
    assert int(acc.n) == 1
    assert acc.next_B.tolist() == [1, 0]  # row 0: its kept draft at index 1; row 1: its residual draw


def _oracle(p_TxV: np.ndarray, q_LxV: np.ndarray) -> dict[tuple[int, ...], float]:
    """Exact probability of every emitted sequence for one row: enumerate the drafts (drawn from q), keep draft
    j with probability min(1, p_j/q_j), on the first rejection draw from max(0, p_j - q_j) renormalised, after
    L kept drafts draw from p_L."""
    n_draft, v = q_LxV.shape
    out: dict[tuple[int, ...], float] = collections.defaultdict(float)
    for drafts in itertools.product(range(v), repeat=n_draft):
        reach = float(np.prod([q_LxV[j, d] for j, d in enumerate(drafts)]))  # P(these drafts)
        if reach == 0.0:
            continue
        for j, d in enumerate(drafts):
            keep = min(1.0, p_TxV[j, d] / q_LxV[j, d])
            resid = np.maximum(p_TxV[j] - q_LxV[j], 0.0)
            if keep < 1.0:
                for x in range(v):
                    out[drafts[:j] + (x,)] += reach * (1.0 - keep) * resid[x] / resid.sum()
            reach *= keep
        for x in range(v):
            out[drafts + (x,)] += reach * p_TxV[n_draft, x]
    return out


def test_sampled_rule_has_the_target_distribution():
    rng = np.random.default_rng(0)
    n_draft, v, n = 2, 3, 200_000
    p_TxV = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4]])
    q_LxV = np.array([[0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])  # far from p: accepting drafts blindly would show
    exact = _oracle(p_TxV, q_LxV)
    # the oracle is the target: the first token is p_0; the second, where one is emitted, is p_1
    first = np.array([sum(pr for s, pr in exact.items() if s[0] == x) for x in range(v)])
    np.testing.assert_allclose(first, p_TxV[0], atol=1e-12)
    second = np.array([sum(pr for s, pr in exact.items() if len(s) > 1 and s[1] == x) for x in range(v)])
    np.testing.assert_allclose(second / second.sum(), p_TxV[1], atol=1e-12)
    assert abs(sum(exact.values()) - 1.0) < 1e-12

    drafts_NxL = np.stack([rng.choice(v, size=n, p=q_LxV[j]) for j in range(n_draft)], 1).astype(np.int32)
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    p, q = jnp.asarray(p_TxV[None], jnp.float32), jnp.asarray(q_LxV[None], jnp.float32)
    acc = jax.jit(jax.vmap(lambda d, k: accept_sampled(d[None], q, p, k)))(drafts_NxL, keys)
    n_kept, nxt = np.asarray(acc.n), np.asarray(acc.next_B)[:, 0]
    seen = collections.Counter(tuple(drafts_NxL[i, : n_kept[i]]) + (int(nxt[i]),) for i in range(n))
    worst = max(abs(seen[s] / n - exact.get(s, 0.0)) for s in set(seen) | set(exact))
    assert worst < 0.005  # ~4.5 standard errors of the largest cell
    assert abs(np.mean(n_kept) - sum(pr * (len(s) - 1) for s, pr in exact.items())) < 0.01


def test_sampled_rule_in_a_batch_keeps_each_rows_distribution():
    """The batch keeps the prefix every row accepts; each row's first token still has its own p_0."""
    rng = np.random.default_rng(1)
    n, v = 100_000, 3
    p_BxTxV = np.array([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], [[0.1, 0.1, 0.8], [0.5, 0.25, 0.25]]])
    q_BxLxV = np.array([[[0.2, 0.3, 0.5]], [[0.4, 0.4, 0.2]]])
    drafts_NxB = np.stack([rng.choice(v, size=n, p=q_BxLxV[b, 0]) for b in range(2)], 1).astype(np.int32)
    keys = jax.random.split(jax.random.PRNGKey(2), n)
    p, q = jnp.asarray(p_BxTxV, jnp.float32), jnp.asarray(q_BxLxV, jnp.float32)
    acc = jax.jit(jax.vmap(lambda d, k: accept_sampled(d[:, None], q, p, k)))(drafts_NxB, keys)
    n_kept, nxt = np.asarray(acc.n), np.asarray(acc.next_B)
    first_NxB = np.where(n_kept[:, None] > 0, drafts_NxB, nxt)
    for b in range(2):
        freq = np.bincount(first_NxB[:, b], minlength=v) / n
        np.testing.assert_allclose(freq, p_BxTxV[b, 0], atol=0.006)
