"""Maze path finding on a 2-D canvas. Difficulty: the side s of an s x s perfect maze (2 <= s <= 15).

Layout: a canvas of row stride 16 (W = 16), seq_len(s) = 16 s; cell (r, c) is token 16 r + c and the
tokens with c >= s are outside ('#', chars[0], the padding), so padding a small maze to a wider row just
adds outside tokens. The four neighbours of a cell are always at offsets -16 (N), +1 (E), +16 (S), -1 (W),
whatever the side: with non-causal attention and 1-D RoPE positions, one relative-position rule finds a
cell's neighbours at every size, and a loop can apply one cell-local step per iteration.

Tokens: a cell's token is its open passages as a 4-bit mask N=1 E=2 S=4 W=8, written as
"abcdefghijklmnop"[mask] for an ordinary cell and "ABCDEFGHIJKLMNOP"[mask] for the start and the goal
(walls are implied by the masks; the outer border is always closed). y: at every cell '1' if the cell is
on the unique start-goal path (both ends included), else '0'; -1 outside. Exact match: every cell right.

The maze is a random spanning tree of the s x s grid graph drawn by randomized Kruskal (random
edge order, join two cells whenever they are not yet connected), so there is exactly one path between any
two cells. Kruskal, unlike a depth-first carver, makes many short dead ends: parallel dead-end filling
(every round removes each non-endpoint cell with at most one open passage to a remaining cell) then needs
a moderate number of rounds, fill_rounds(x), which says how many loop iterations a cell-local solver needs.
The start and goal are two distinct uniform random cells; the test split is drawn the same way.
"""

from __future__ import annotations

import numpy as np

from nanoloop_jax.tasks.lengthgen.families.base import Family

STRIDE = 16  # the canvas row stride: neighbours at +-1 and +-16 at every side
LOWER, UPPER = "abcdefghijklmnop", "ABCDEFGHIJKLMNOP"  # [mask]: ordinary cell, start/goal cell
CHARS = "#" + LOWER + UPPER + "01"  # '#' (id 0): outside the maze and padding
N_, E_, S_, W_ = 1, 2, 4, 8  # passage bits


def _kruskal(rng: np.random.Generator, count: int, s: int) -> np.ndarray:
    """(count, s, s) passage masks of `count` perfect mazes (randomized Kruskal, all mazes at once)."""
    cell_SxS = np.arange(s * s).reshape(s, s)
    a_E = np.concatenate([cell_SxS[:, :-1].ravel(), cell_SxS[:-1, :].ravel()])  # horizontal, then vertical
    b_E = np.concatenate([cell_SxS[:, 1:].ravel(), cell_SxS[1:, :].ravel()])
    order_NxE = np.argsort(rng.random((count, len(a_E))), axis=1)
    label_NxC = np.tile(np.arange(s * s), (count, 1))  # each cell's component: merged by relabelling
    open_NxE = np.zeros((count, len(a_E)), bool)
    rows_N = np.arange(count)
    for k in range(len(a_E)):
        e_N = order_NxE[:, k]
        la_N, lb_N = label_NxC[rows_N, a_E[e_N]], label_NxC[rows_N, b_E[e_N]]
        join_N = la_N != lb_N
        open_NxE[rows_N, e_N] = join_N
        merge_NxC = join_N[:, None] & (label_NxC == lb_N[:, None])
        label_NxC = np.where(merge_NxC, la_N[:, None], label_NxC)
    h = s * (s - 1)
    horiz_NxSxS1 = open_NxE[:, :h].reshape(count, s, s - 1)  # (r, c) - (r, c + 1)
    vert_NxS1xS = open_NxE[:, h:].reshape(count, s - 1, s)  # (r, c) - (r + 1, c)
    mask_NxSxS = np.zeros((count, s, s), np.int64)
    mask_NxSxS[:, :, :-1] |= E_ * horiz_NxSxS1
    mask_NxSxS[:, :, 1:] |= W_ * horiz_NxSxS1
    mask_NxSxS[:, :-1, :] |= S_ * vert_NxS1xS
    mask_NxSxS[:, 1:, :] |= N_ * vert_NxS1xS
    return mask_NxSxS


def _fill(mask_NxHxW: np.ndarray, cell_NxHxW: np.ndarray, end_NxHxW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parallel dead-end filling to its fixed point: (cells left, rounds in which each maze lost a cell).
    Masks must keep the canvas border closed (they do: the maze's outer walls)."""
    alive = cell_NxHxW.copy()
    rounds_N = np.zeros(len(alive), np.int64)
    opens = [(mask_NxHxW & bit) != 0 for bit in (N_, E_, S_, W_)]
    while True:
        p = np.pad(alive, ((0, 0), (1, 1), (1, 1)))  # p[:, 1 + r, 1 + c] = alive[:, r, c]
        nbr = [p[:, :-2, 1:-1], p[:, 1:-1, 2:], p[:, 2:, 1:-1], p[:, 1:-1, :-2]]  # alive N, E, S, W neighbour
        degree = sum((o & n).astype(np.int64) for o, n in zip(opens, nbr, strict=True))
        drop = alive & ~end_NxHxW & (degree <= 1)
        lost_N = drop.any(axis=(1, 2))
        if not lost_N.any():
            return alive, rounds_N
        rounds_N += lost_N
        alive &= ~drop


def fill_rounds(x: np.ndarray) -> np.ndarray:
    """(N,) rounds of parallel dead-end filling that solve each maze row of x (uint8 (N, 16 k), any padding):
    each round removes every cell that is not the start/goal and has at most one open passage to a cell not
    yet removed; after that many rounds only the start-goal path is left. A loop that does one round per
    iteration needs this many iterations (plus whatever it takes to read the path off)."""
    x = np.asarray(x)
    canvas_NxHxW = x.reshape(len(x), -1, STRIDE).astype(np.int64)
    cell = (canvas_NxHxW >= 1) & (canvas_NxHxW <= 2 * len(LOWER))
    end = cell & (canvas_NxHxW > len(LOWER))
    mask = np.where(cell, (canvas_NxHxW - 1) % len(LOWER), 0)
    return _fill(mask, cell, end)[1]


class Maze(Family):
    name, chars, knob = "maze", CHARS, "side"
    min_difficulty = 2  # a 1x1 maze has no two distinct ends
    max_difficulty = 15  # the side must fit the stride with an outside column left

    def seq_len(self, d: int) -> int:
        return STRIDE * d

    def problems(self, rng, count, d, test):
        s = d
        mask_NxSxS = _kruskal(rng, count, s)
        first_N = rng.integers(0, s * s, count)
        second_N = rng.integers(0, s * s - 1, count)
        second_N += second_N >= first_N  # distinct from first
        end_NxC = np.zeros((count, s * s), bool)
        end_NxC[np.arange(count), first_N] = end_NxC[np.arange(count), second_N] = True
        end_NxSxS = end_NxC.reshape(count, s, s)
        path_NxSxS, _ = _fill(mask_NxSxS, np.ones_like(end_NxSxS), end_NxSxS)  # a tree's leaves peel to the path
        stoi = self.stoi
        x = np.zeros((count, s, STRIDE), np.uint8)  # '#' outside
        x[:, :, :s] = np.where(end_NxSxS, stoi[UPPER[0]], stoi[LOWER[0]]) + mask_NxSxS
        y = np.full((count, s, STRIDE), -1, np.int8)
        y[:, :, :s] = np.where(path_NxSxS, stoi["1"], stoi["0"])
        return x.reshape(count, -1), y.reshape(count, -1)


FAMILY = Maze()
