"""Decimal addition laid out for length generalization (Fan et al. 2025). Difficulty: n operand digits.

Both operands exactly n digits (n = 1 includes 0), least significant digit first and padded with one 0 to
n+1 digits, interleaved with an answer slot: `^ a0 b0 _ a1 b1 _ .. an bn _`; slot j outputs digit j of the
sum (least significant first, n+1 digits, so a missing carry-out is a 0). seq_len = 3n + 4. Digit j of the
sum depends on the two tokens just before its slot and on the carry from the slot three positions back, the
same offsets at every length: a ripple carry that moves one slot per loop iteration, so T(n) = n + 1
iterations suffice at any n. Test sets of 1 digit enumerate all 100 problems.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from nanoloop_jax.tasks.addition.data import fixed_problems, random_operands
from nanoloop_jax.tasks.lengthgen.families.base import Family, decimal_digits
from nanoloop_jax.tasks.lengthgen.families.parity import CHARS


class Addition(Family):
    name, chars, knob = "addition", CHARS, "digits"
    column = "length"  # accuracy.csv's first column since the length-generalization issue
    max_difficulty = 17  # sums below 2^63: numpy int64 holds them exactly

    def seq_len(self, d: int) -> int:
        return 3 * d + 4

    def problems(self, rng, count, d, test):
        if test:
            a, b = fixed_problems(rng, count, d)
        else:
            a, b = random_operands(rng, np.full(count, d), np.full(count, d))
        return self.layout(np.asarray(a), np.asarray(b), d)

    def layout(self, a: np.ndarray, b: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of d-digit operand pairs in the interleaved layout (module docstring)."""
        stoi = self.stoi
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        da, db, ds = (decimal_digits(v, d + 1) for v in (a, b, a + b))
        x = np.empty((len(a), 3 * (d + 1) + 1), np.uint8)
        x[:, 0] = stoi["^"]
        x[:, 1::3], x[:, 2::3], x[:, 3::3] = da + stoi["0"], db + stoi["0"], stoi["_"]
        y = np.full(x.shape, -1, np.int8)
        y[:, 3::3] = ds + stoi["0"]
        return x, y

    def prefix_lengths(self, width: int):
        """Slot k (index 3(k + 1)) is the last slot of a k-digit problem."""
        j = np.arange(width)
        return j // 3 - 1, (j % 3 == 0) & (j >= 3)

    def prefix_answers(self, x_BxT, y_BxT):
        """y's own slots: a sum's low digits are the sum of the operands' low digits."""
        return jnp.asarray(y_BxT)


FAMILY = Addition()
