"""p-hop lookup over a table (after Sanford et al. 2024; Saunshi et al. 2025). Difficulty: p hops.

  `^ P1 P2 .. PA | s > > .. >`      (A = 12 symbols, A table tokens, p answer slots '>')

The table lists a random cyclic permutation f of the A symbols, one token per entry: P = (k, f(k)) is one of
A^2 pair tokens, in random order. s is a random start symbol and answer slot k outputs f^k(s). A hop is one
associative recall (attend to the entry whose key is the current symbol, read its value), so slot k's
answer is slot k-1's answer hopped once: a loop that reads slot k-1 in one iteration and looks it up in the
next needs about 2p iterations, while a one-pass model must compose p lookups within its fixed depth. One
cycle through every symbol keeps f^k(s) != s for k < A, so no answer repeats an earlier one by a short
cycle. Exact match: all p slots right. seq_len = A + 3 + p. Every prefix ending at slot k is itself a k-hop
problem (train.halting_lookahead='prefix' applies).

Why pair tokens: with the key and its value as two tokens (`k v`, the textbook induction layout) a 64-wide
looped block stayed at chance (loss ln A) in every run of up to 3,000 steps (README "Reasoning tasks"); one
token per entry leaves the lookup itself, and the hops, to learn.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from nanoloop_jax.tasks.lengthgen.families.base import Family

SYMBOLS = "abcdefghijkl"  # A = 12: with the A^2 pair tokens the vocabulary (160) fits uint8 ids
A = len(SYMBOLS)
PAIRS = "".join(chr(0x100 + i) for i in range(A * A))  # pair (k, v) is PAIRS[k * A + v]
SLOT0 = A + 2  # slot k (1-based) is at index SLOT0 + k


class PHop(Family):
    name, knob = "phop", "hops"
    chars = "." + SYMBOLS + "^|>" + PAIRS  # '.' pads
    max_difficulty = A - 1  # f^A(s) = s: longer chains only repeat

    def seq_len(self, d: int) -> int:
        return A + 3 + d

    def problems(self, rng, count, d, test):
        stoi = self.stoi
        sym0, pair0 = stoi[SYMBOLS[0]], stoi[PAIRS[0]]
        order_NxA = np.argsort(rng.random((count, A)), axis=1)  # each row: a random cycle order of the symbols
        f_NxA = np.empty_like(order_NxA)  # f[order[i]] = order[i + 1]
        np.put_along_axis(f_NxA, order_NxA, np.roll(order_NxA, -1, axis=1), axis=1)
        keys_NxA = np.argsort(rng.random((count, A)), axis=1)  # the table's entry order
        start_N = rng.integers(0, A, count)
        x = np.empty((count, self.seq_len(d)), np.uint8)
        x[:, 0] = stoi["^"]
        x[:, 1 : A + 1] = pair0 + keys_NxA * A + np.take_along_axis(f_NxA, keys_NxA, axis=1)
        x[:, A + 1], x[:, A + 2], x[:, A + 3 :] = stoi["|"], start_N + sym0, stoi[">"]
        y = np.full(x.shape, -1, np.int8)
        v_N = start_N
        for k in range(1, d + 1):
            v_N = f_NxA[np.arange(count), v_N]
            y[:, SLOT0 + k] = v_N + sym0
        return x, y

    def prefix_lengths(self, width: int):
        """Slot k (index A + 2 + k) ends a k-hop problem."""
        k = np.arange(width) - SLOT0
        return k, k >= 1

    def prefix_answers(self, x_BxT, y_BxT):
        """y's own slots: slot k's answer is the same in every longer problem."""
        return jnp.asarray(y_BxT)


FAMILY = PHop()
