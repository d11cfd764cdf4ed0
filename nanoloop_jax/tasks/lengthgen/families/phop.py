"""p-hop induction over a lookup table (after Sanford et al. 2024; Saunshi et al. 2025). Difficulty: p hops.

  `^ k1 v1 ^ k2 v2 .. ^ kA vA | s > > .. >`      (A = 16 symbols, p answer slots '>')

The table lists a random cyclic permutation f of the A symbols as (key, value) pairs in random order, each
after a '^'; s is a random start symbol and answer slot k outputs f^k(s). Each hop is one induction-head step:
find the occurrence of the current symbol as a key and copy the token after it. Slot k's answer is slot k-1's
answer hopped once, so a loop that hops once per iteration needs about p iterations, while a one-pass model
must compose p lookups within its fixed depth. One cycle through every symbol keeps f^k(s) != s for k < A, so
no answer repeats an earlier one by a short cycle. Exact match: all p slots right. seq_len = 3A + 2 + p.

The '^' marks keys: without it (`k1 v1 k2 v2 ..`) a symbol's previous token is a symbol both for a value (its
key) and for a key (the value before it), so with relative positions nothing told keys from values but the
parity of the distance to the start, and every run stayed at chance (ln 16). Training rows also ask every value
whose key comes earlier in the table for its own next hop f(v) (about half the values, causal): A/2 lookups
per row instead of p. Test rows score the p slots alone, so exact match and the val loss are the slots'.
Every prefix ending at slot k is itself a k-hop problem (train.halting_lookahead='prefix' applies).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from nanoloop_jax.tasks.lengthgen.families.base import Family

SYMBOLS = "abcdefghijklmnop"  # A = 16
A = len(SYMBOLS)


class PHop(Family):
    name, knob = "phop", "hops"
    chars = "." + SYMBOLS + "^|>"  # '.' pads
    max_difficulty = A - 1  # f^A(s) = s: longer chains only repeat

    def seq_len(self, d: int) -> int:
        return 3 * A + 2 + d

    def problems(self, rng, count, d, test):
        stoi = self.stoi
        sym0 = stoi[SYMBOLS[0]]
        rows = np.arange(count)
        order_NxA = np.argsort(rng.random((count, A)), axis=1)  # each row: a random cycle order of the symbols
        f_NxA = np.empty_like(order_NxA)  # f[order[i]] = order[i + 1]
        np.put_along_axis(f_NxA, order_NxA, np.roll(order_NxA, -1, axis=1), axis=1)
        keys_NxA = np.argsort(rng.random((count, A)), axis=1)  # the table's key order
        values_NxA = np.take_along_axis(f_NxA, keys_NxA, axis=1)
        start_N = rng.integers(0, A, count)
        x = np.empty((count, self.seq_len(d)), np.uint8)
        x[:, 0 : 3 * A : 3] = stoi["^"]
        x[:, 1 : 3 * A : 3] = keys_NxA + sym0
        x[:, 2 : 3 * A : 3] = values_NxA + sym0
        x[:, 3 * A], x[:, 3 * A + 1], x[:, 3 * A + 2 :] = stoi["|"], start_N + sym0, stoi[">"]
        y = np.full(x.shape, -1, np.int8)
        v_N = start_N
        for k in range(d):
            v_N = f_NxA[rows, v_N]
            y[:, 3 * A + 2 + k] = v_N + sym0
        if not test:  # value i hopped once, where its own key came earlier in the table (pair index < i)
            pair_of_key_NxA = np.argsort(keys_NxA, axis=1)
            for i in range(A):
                v = values_NxA[:, i]
                y[:, 2 + 3 * i] = np.where(pair_of_key_NxA[rows, v] < i, f_NxA[rows, v] + sym0, -1)
        return x, y

    def prefix_lengths(self, width: int):
        """Slot k (index 3A + 1 + k) ends a k-hop problem."""
        k = np.arange(width) - (3 * A + 1)
        return k, k >= 1

    def prefix_answers(self, x_BxT, y_BxT):
        """y's own slots: slot k's answer is the same in every longer problem (prefix_lengths masks the rest)."""
        return jnp.asarray(y_BxT)


FAMILY = PHop()
