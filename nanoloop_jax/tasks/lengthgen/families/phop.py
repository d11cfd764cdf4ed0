"""p-hop induction over a lookup table (after Sanford et al. 2024; Saunshi et al. 2025). Difficulty: p hops.

  `^ k1 v1 k2 v2 .. kA vA | s > > .. >`      (A = 16 symbols, p answer slots '>')

The table lists a random cyclic permutation f of the A symbols as (key, value) pairs in random order; s is
a random start symbol and answer slot k outputs f^k(s). Each hop is one induction-head step: find the
occurrence of the current symbol as a key and copy the token after it. Slot k's answer is slot k-1's answer
hopped once, so a loop that hops once per iteration needs about p iterations, while a one-pass model must
compose p lookups within its fixed depth. One cycle through every symbol keeps f^k(s) != s for k < A, so no
answer repeats an earlier one by a short cycle. Exact match: all p slots right. seq_len = 2A + 3 + p.
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
        return 2 * A + 3 + d

    def problems(self, rng, count, d, test):
        stoi = self.stoi
        sym0 = stoi[SYMBOLS[0]]
        order_NxA = np.argsort(rng.random((count, A)), axis=1)  # each row: a random cycle order of the symbols
        f_NxA = np.empty_like(order_NxA)  # f[order[i]] = order[i + 1]
        np.put_along_axis(f_NxA, order_NxA, np.roll(order_NxA, -1, axis=1), axis=1)
        keys_NxA = np.argsort(rng.random((count, A)), axis=1)  # the table's key order
        start_N = rng.integers(0, A, count)
        x = np.empty((count, self.seq_len(d)), np.uint8)
        x[:, 0] = stoi["^"]
        x[:, 1 : 2 * A + 1 : 2] = keys_NxA + sym0
        x[:, 2 : 2 * A + 1 : 2] = np.take_along_axis(f_NxA, keys_NxA, axis=1) + sym0
        x[:, 2 * A + 1], x[:, 2 * A + 2], x[:, 2 * A + 3 :] = stoi["|"], start_N + sym0, stoi[">"]
        y = np.full(x.shape, -1, np.int8)
        v_N = start_N
        for k in range(d):
            v_N = f_NxA[np.arange(count), v_N]
            y[:, 2 * A + 3 + k] = v_N + sym0
        return x, y

    def prefix_lengths(self, width: int):
        """Slot k (index 2A + 2 + k) ends a k-hop problem."""
        k = np.arange(width) - (2 * A + 2)
        return k, k >= 1

    def prefix_answers(self, x_BxT, y_BxT):
        """y's own slots: slot k's answer is the same in every longer problem."""
        return jnp.asarray(y_BxT)


FAMILY = PHop()
