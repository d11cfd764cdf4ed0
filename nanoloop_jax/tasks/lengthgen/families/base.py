"""What a problem family gives the difficulty-graded (lengthgen) task: a vocabulary, a layout and a generator.

A family makes problems of one integer difficulty d (parity: bits; addition: operand digits; phop: hops;
multiadd: operands; maze: side; sudoku: rating bucket). A problem is one row of token ids x whose *outputs*
at the answer slots are scored: y holds the target id there and -1 elsewhere, and a problem is solved when
every answer slot is right (exact match). The model reads the whole problem and writes the whole answer in
one forward pass (no decoding): with causal attention (model.causal=True) the answer slots must come after
everything they depend on; the whole-problem families (maze, sudoku) answer at their own cells and need
model.causal=False. Rows of one difficulty have one length, seq_len(d); training rows of several difficulties are
right-padded with chars[0] (the padding token, id 0) to one width.
"""

from __future__ import annotations

import numpy as np

from nanoloop_jax.errors import ConfigError


class Family:
    """Base class of the families in families/__init__.py's FAMILIES; one instance per family."""

    name: str  # lengthgen.task
    chars: str  # the vocabulary: id i is chars[i]; chars[0] is the padding
    knob: str  # what the difficulty counts, for log lines ('bits', 'hops', 'side', ...)
    column: str = "difficulty"  # accuracy.csv's first column
    min_difficulty: int = 1  # the smallest difficulty the generator makes (a maze side, multiadd's operands: 2)
    max_difficulty: int | None = None  # the largest difficulty the generator makes (None: no bound)

    @property
    def stoi(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.chars)}

    def seq_len(self, d: int) -> int:
        """Tokens of a difficulty-d problem."""
        raise NotImplementedError

    def problems(self, rng: np.random.Generator, count: int, d: int, test: bool) -> tuple[np.ndarray, np.ndarray]:
        """(x uint8 (count, seq_len(d)), y int8 (count, seq_len(d)), -1 off the answer slots): `count`
        difficulty-d problems drawn with rng (test: the held-out split, which a family may draw differently)."""
        raise NotImplementedError

    def check(self, train: tuple[int, int], test: tuple[int, ...]) -> None:
        """A one-line ConfigError for difficulties this family cannot make."""
        lo, hi = train
        if lo > hi:
            raise ConfigError(f"bad {self.name} difficulties: train {train} must be (easiest, hardest), easiest first")
        if min(lo, *test) < self.min_difficulty:
            raise ConfigError(
                f"{self.name} difficulties ({self.knob}) start at {self.min_difficulty}: got train {train}, test "
                f"{test}; raise lengthgen.train_lengths / test_lengths"
            )
        top = max(hi, *test)
        if self.max_difficulty is not None and top > self.max_difficulty:
            raise ConfigError(
                f"{self.name} makes difficulties up to {self.max_difficulty} {self.knob}, asked for {top}: "
                "lower lengthgen.train_lengths / test_lengths"
            )

    # train.halting_lookahead='prefix': families whose every position ends a shorter problem of theirs
    def prefix_lengths(self, width: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(difficulty of the problem ending at each position, whether one does), or None if the family has no
        such structure (then 'prefix' is a ConfigError)."""
        return None

    def prefix_answers(self, x_BxT, y_BxT):
        """(B, T) jnp answer of the problem ending at each position, -1 where none does."""
        raise NotImplementedError


def decimal_digits(v: np.ndarray, n: int) -> np.ndarray:
    """The n lowest decimal digits of each integer in v, least significant first, on a new last axis (int64):
    digit j of v is v // 10^j % 10."""
    return (np.asarray(v, np.int64)[..., None] // 10 ** np.arange(n, dtype=np.int64)) % 10
