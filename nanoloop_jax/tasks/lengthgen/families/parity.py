"""Parity (Fan et al. 2025): `^b1b2..bn=`; the '=' slot outputs the parity bit. Difficulty: n bits, seq_len n + 2."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from nanoloop_jax.tasks.lengthgen.families.base import Family

CHARS = ".0123456789=^_"  # parity's and addition's one vocabulary ('.' pads)


class Parity(Family):
    name, chars, knob = "parity", CHARS, "bits"
    column = "length"  # accuracy.csv's first column since the length-generalization issue

    def seq_len(self, d: int) -> int:
        return d + 2

    def problems(self, rng, count, d, test):
        """`count` uniform random d-bit strings: x = `^bits=`, y = the parity bit at the '=' slot."""
        stoi = self.stoi
        bits = rng.integers(0, 2, size=(count, d))
        x = np.empty((count, d + 2), np.uint8)
        x[:, 0], x[:, 1:-1], x[:, -1] = stoi["^"], bits + stoi["0"], stoi["="]
        y = np.full(x.shape, -1, np.int8)
        y[:, -1] = bits.sum(axis=1) % 2 + stoi["0"]
        return x, y

    def prefix_lengths(self, width: int):
        """Position j >= 1 is the '=' slot of a (j - 1)-bit problem: the bits before it."""
        j = np.arange(width)
        return j - 1, j >= 1

    def prefix_answers(self, x_BxT, y_BxT):
        """The parity of the bits before each position j >= 1 (the '=' slot's is y's); -1 at 0 and on padding."""
        stoi = self.stoi
        bit_BxT = (jnp.asarray(x_BxT) == stoi["1"]).astype(jnp.int32)
        before_BxT = jnp.cumsum(bit_BxT, axis=1) - bit_BxT  # bits strictly before each position
        has_BxT = (jnp.arange(x_BxT.shape[1]) >= 1)[None] & (jnp.asarray(x_BxT) != stoi[CHARS[0]])
        return jnp.where(has_BxT, stoi["0"] + before_BxT % 2, -1)


FAMILY = Parity()
