"""Self-speculative decoding's acceptance rules: pure functions of the drafts and the full model's verdict.

A round drafts L tokens and verifies all L + 1 positions (the pending token and the drafts) with the full
model in one pass; these rules decide how many drafts to keep and which token follows them.

  greedy   a draft is kept while it is the target's argmax; the next token is the target's argmax there,
           so the text is the plain greedy decoder's.
  sampled  draft d at index j (drawn from q_j) is kept with probability min(1, p_j(d) / q_j(d)); the token
           after the kept prefix is drawn from max(0, p_j − q_j) renormalised, or from p_L when every draft
           was kept (Leviathan et al. 2023), so every token has the target's distribution p.

In a batch the round keeps the prefix length n that every row accepts: each row's token at index n is its
own accepted draft where it accepted more, else its own residual draw. The prefix a row emits is then a
prefix of what the single-row rule emits, cut at a point the other rows decide, so it keeps the target's
distribution; one position counter serves the batch.

Dimension legend: B batch, L draft tokens, T = L + 1 verified positions, V vocab.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Accepted(NamedTuple):
    """What a round keeps: the first n drafts, then next_B."""

    n: jax.Array  # int32 scalar: drafts kept (the longest prefix every row accepts)
    next_B: jax.Array  # int32: each row's token at index n


def _at(x_BxT: jax.Array, t) -> jax.Array:
    """Column t (traced) of (B, T, ...) as (B, ...)."""
    return jax.lax.dynamic_index_in_dim(x_BxT, t, axis=1, keepdims=False)


def _kept(ok_BxL: jax.Array) -> jax.Array:
    """Per row, the length of the all-True prefix."""
    return jnp.sum(jnp.cumprod(ok_BxL.astype(jnp.int32), axis=1), axis=1)


def accept_greedy(draft_BxL: jax.Array, target_logits_BxTxV: jax.Array) -> Accepted:
    """Keep drafts while they equal the target's argmax; then the target's argmax (filter logits first)."""
    n_draft = draft_BxL.shape[1]
    best_BxT = jnp.argmax(target_logits_BxTxV, axis=-1).astype(jnp.int32)
    n = jnp.min(_kept(draft_BxL == best_BxT[:, :n_draft]))
    return Accepted(n, _at(best_BxT, n))


def accept_sampled(draft_BxL: jax.Array, q_BxLxV: jax.Array, p_BxTxV: jax.Array, key: jax.Array) -> Accepted:
    """Leviathan et al.'s rule for drafts drawn from q (probabilities) against the target's p.

    key: the round's key. The draft drew token j with fold_in(key, 2j), so the acceptance coins use
    fold_in(key, 2L + 1) and the residual draw fold_in(key, 2L + 3): no two draws of a round share a key."""
    b, n_draft = draft_BxL.shape
    take = lambda pr, d: jnp.take_along_axis(pr, d[..., None], axis=-1)[..., 0]  # noqa: E731
    ratio_BxL = take(p_BxTxV[:, :n_draft], draft_BxL) / take(q_BxLxV, draft_BxL)
    u_BxL = jax.random.uniform(jax.random.fold_in(key, 2 * n_draft + 1), (b, n_draft))
    n_row_B = _kept(u_BxL < ratio_BxL)
    n = jnp.min(n_row_B)
    # the token at index n: the row's accepted draft, a residual draw, or (all accepted) a draw from p_L
    p_at_BxV = _at(p_BxTxV, n)
    q_at_BxV = _at(jnp.concatenate([q_BxLxV, jnp.zeros_like(q_BxLxV[:, :1])], 1), n)
    resid_BxV = jnp.maximum(p_at_BxV - q_at_BxV, 0.0)
    resid_BxV = jnp.where(jnp.sum(resid_BxV, -1, keepdims=True) > 0, resid_BxV, p_at_BxV)
    drawn_B = jax.random.categorical(jax.random.fold_in(key, 2 * n_draft + 3), jnp.log(resid_BxV)).astype(jnp.int32)
    draft_at_B = _at(jnp.concatenate([draft_BxL, draft_BxL[:, :1]], 1), n)
    return Accepted(n, jnp.where(n_row_B > n, draft_at_B, drawn_B))


def emitted_tokens(draft_BxL: jax.Array, acc: Accepted) -> jax.Array:
    """(B, L + 1): the kept drafts, then next_B at index n (entries past n are placeholders, never emitted)."""
    padded_BxT = jnp.concatenate([draft_BxL, draft_BxL[:, :1]], axis=1)
    return jnp.where(jnp.arange(padded_BxT.shape[1]) == acc.n, acc.next_B[:, None], padded_BxT)
