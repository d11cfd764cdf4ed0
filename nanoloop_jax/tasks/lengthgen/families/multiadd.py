"""Multi-operand addition (after Saunshi et al. 2025): the sum of m three-digit numbers. Difficulty: m operands.

Layout: long addition as written on paper, a canvas of rows of stride 6 with the digit columns aligned:

  + a1_0 a1_1 a1_2 0 0      operand row i: '+', then its digits least significant first, 5 columns
  + a2_0 a2_1 a2_2 0 0      (3-digit operands, leading zeros written; columns 3 and 4 are '0')
  ..
  + am_0 am_1 am_2 0 0
  = _    _    _    _ _      the answer row: 5 slots '_' output the sum's digits, least significant first

Every digit cell outputs the running sum: operand row i's five cells the digits of a1 + .. + ai (so rows 1..i are
an i-operand problem of their own), and the answer row's slots the digits of the whole sum. Exact match: every
running sum right, the whole sum included. seq_len(m) = 6 (m + 1); m <= 100 keeps the sum below 100,000.

Column j of every row sits at the same offset, so the cell above is always 6 positions back and the column
before 1 back, at every m. A loop attending causally through a window of 7 (model.attn_window=7: offsets
0..-6) can run long addition one row per iteration: a cell's running-sum digit is the digit above it plus
its own, plus the carry out of the column before; the state per cell (a digit and a carry) is bounded
whatever m is, and the last row's last column settles after about m + 5 iterations. A one-pass model must add
up to m numbers, carries included, at every row in its fixed depth.
"""

from __future__ import annotations

import numpy as np

from nanoloop_jax.tasks.lengthgen.families.base import Family, decimal_digits

DIGITS, SUM_DIGITS = 3, 5  # operand digits; sum digits = columns per row
STRIDE = SUM_DIGITS + 1  # a row: its sign ('+' or '=') and 5 columns


class MultiAdd(Family):
    name, knob = "multiadd", "operands"
    min_difficulty = 2  # one operand is a copy, not a sum
    chars = ".0123456789+=_"  # '.' pads
    max_difficulty = 100  # sums below 10^5

    def seq_len(self, d: int) -> int:
        return STRIDE * (d + 1)

    def problems(self, rng, count, d, test):
        stoi = self.stoi
        a_NxM = rng.integers(0, 10**DIGITS, size=(count, d))
        canvas_NxRxW = np.empty((count, d + 1, STRIDE), np.uint8)
        canvas_NxRxW[:, :d, 0] = stoi["+"]
        canvas_NxRxW[:, :d, 1:] = decimal_digits(a_NxM, SUM_DIGITS) + stoi["0"]  # columns 3, 4: 0
        canvas_NxRxW[:, d, 0], canvas_NxRxW[:, d, 1:] = stoi["="], stoi["_"]
        running_NxM = np.cumsum(a_NxM, axis=1)
        sums_NxR = np.concatenate([running_NxM, running_NxM[:, -1:]], axis=1)  # the answer row: the whole sum
        y_NxRxW = np.full(canvas_NxRxW.shape, -1, np.int8)
        y_NxRxW[:, :, 1:] = decimal_digits(sums_NxR, SUM_DIGITS) + stoi["0"]
        return canvas_NxRxW.reshape(count, -1), y_NxRxW.reshape(count, -1)


FAMILY = MultiAdd()
