"""Multi-operand addition (after Saunshi et al. 2025): the sum of m three-digit numbers. Difficulty: m operands.

  `^ a1 + a2 + .. + am = _ _ _ _ _`

Every operand is 3 digits (000-999, leading zeros written), least significant digit first like the sum, so
digit j sits at the same offset in every operand; the 5 answer slots '_' output the sum's digits, least
significant first (m <= 100 keeps it below 100,000). Causal attention: the slots follow every operand. A
loop can add one operand per iteration (a running sum), so the depth grows with m; a one-pass model must add
m numbers, carries included, in its fixed depth. Exact match: all 5 digits right. seq_len = 4m + 6.
"""

from __future__ import annotations

import numpy as np

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.tasks.lengthgen.families.base import Family

DIGITS, SUM_DIGITS = 3, 5


class MultiAdd(Family):
    name, knob = "multiadd", "operands"
    chars = ".0123456789+=^_"  # '.' pads
    max_difficulty = 100  # sums below 10^5

    def seq_len(self, d: int) -> int:
        return 4 * d + 6

    def check(self, train, test) -> None:
        super().check(train, test)
        if train[0] < 2:
            raise ConfigError(f"multiadd sums at least 2 operands: lengthgen.train_lengths starts at {train[0]}")

    def problems(self, rng, count, d, test):
        stoi = self.stoi
        a_NxM = rng.integers(0, 10**DIGITS, size=(count, d))
        digits_NxMx3 = (a_NxM[..., None] // 10 ** np.arange(DIGITS)) % 10
        x = np.full((count, self.seq_len(d)), stoi["+"], np.uint8)  # operand m at 1 + 4m .. 3 + 4m, '+' after
        x[:, 0] = stoi["^"]
        for m in range(d):
            x[:, 1 + 4 * m : 1 + 4 * m + DIGITS] = digits_NxMx3[:, m] + stoi["0"]
        x[:, 4 * d], x[:, 4 * d + 1 :] = stoi["="], stoi["_"]
        sum_digits_NxS = (a_NxM.sum(axis=1)[:, None] // 10 ** np.arange(SUM_DIGITS)) % 10
        y = np.full(x.shape, -1, np.int8)
        y[:, 4 * d + 1 :] = sum_digits_NxS + stoi["0"]
        return x, y


FAMILY = MultiAdd()
