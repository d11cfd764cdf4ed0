"""Sudoku graded by rounds of parallel singles deduction. Difficulty: d rounds; seq_len 81 for every d.

  x: the 81 cells row-major, a digit '1'..'9' (a given) or '0' (blank); '.' only pads, never in a puzzle.
  y: the solution digit at every one of the 81 cells (givens too: copying them is trivial), so exact match
     is the whole grid right.

Rating: a round computes every blank cell's candidates (digits absent from its row, column and box) from the
grid as it stands and then fills, all at once, every naked single (a cell with one candidate) and every
hidden single (a digit with one candidate cell in a row, column or box). d = rounds until the grid is full.
Only puzzles this solver completes are made; every fill is forced by the givens, so such a puzzle has exactly
one solution. Why: the family runs with non-causal attention over the 81 cells, and a looped model iterates
one weight-shared block, so one round of parallel deduction per iteration is the natural unit of work:
a rating-d puzzle needs about d iterations, and longer puzzles test depth extrapolation.

Generation (vectorized over a batch, deterministic from rng): (1) full grids from a canonical one under
random validity-preserving transforms (digit relabelling, rows within bands, bands, columns within stacks,
stacks, transpose); (2) visit the 81 cells in a random order per puzzle and blank each one if the puzzle
stays singles-solvable within d rounds (undo otherwise); (3) keep the puzzles rated exactly d; repeat with
fresh grids until `count` are made. The test split is drawn the same way (the caller's rng differs).
The share of dug puzzles rated exactly d is ~100% for d <= 6, 55% at 10, 10% at 14, 3% at 16, 0.5% at 18:
2000 puzzles take ~2-7 s at d <= 10 and ~2 min at 16, so max_difficulty = 16 (500 test puzzles: ~35 s).
"""

from __future__ import annotations

import numpy as np

from nanoloop_jax.tasks.lengthgen.families.base import Family

_R = np.arange(81) // 9
_C = np.arange(81) % 9
_B = (_R // 3) * 3 + _C // 3
UNITS_27x9 = np.concatenate(  # the cells of rows 0-8, columns 9-17, boxes 18-26
    [np.arange(81).reshape(9, 9), np.arange(81).reshape(9, 9).T, np.argsort(_B, kind="stable").reshape(9, 9)]
)
CELL_UNITS_81x3 = np.stack([_R, 9 + _C, 18 + _B], axis=1)  # the three units of each cell
CANON_9x9 = (np.arange(9)[:, None] * 3 + np.arange(9)[:, None] // 3 + np.arange(9)[None]) % 9 + 1
POPCOUNT_512 = np.array([bin(m).count("1") for m in range(512)], np.int8)
LOWEST_DIGIT_512 = np.array([(m & -m).bit_length() for m in range(512)], np.int8)  # 0 for the empty mask


def singles_round(grid_Nx81: np.ndarray) -> np.ndarray:
    """One round of the parallel singles solver: a copy of grid (digits, 0 = blank) with every naked and
    hidden single of the current grid filled at once. Digit sets are 9-bit masks (bit k-1: digit k)."""
    bit_Nx81 = np.left_shift(1, grid_Nx81.astype(np.int16)) >> 1  # a blank is the empty set
    present_Nx27 = np.bitwise_or.reduce(bit_Nx81[:, UNITS_27x9], axis=2)
    seen_Nx81 = np.bitwise_or.reduce(present_Nx27[:, CELL_UNITS_81x3], axis=2)
    cand_Nx81 = np.where(grid_Nx81 == 0, ~seen_Nx81 & 511, 0)
    cand_Nx27x9 = cand_Nx81[:, UNITS_27x9]
    once_Nx27 = np.zeros(present_Nx27.shape, np.int16)
    many_Nx27 = np.zeros(present_Nx27.shape, np.int16)
    for j in range(9):  # digits with exactly one candidate cell in the unit
        many_Nx27 |= once_Nx27 & cand_Nx27x9[:, :, j]
        once_Nx27 |= cand_Nx27x9[:, :, j]
    single_Nx27 = once_Nx27 & ~many_Nx27
    hidden_Nx81 = cand_Nx81 & np.bitwise_or.reduce(single_Nx27[:, CELL_UNITS_81x3], axis=2)
    naked_Nx81 = POPCOUNT_512[cand_Nx81] == 1
    digit_Nx81 = LOWEST_DIGIT_512[np.where(naked_Nx81, cand_Nx81, hidden_Nx81)]
    return np.where(digit_Nx81 > 0, digit_Nx81, grid_Nx81).astype(np.int8)


def _valid(grid_Nx81: np.ndarray) -> np.ndarray:
    """Whether each grid is a complete sudoku: every unit holds 1..9."""
    return (np.sort(grid_Nx81[:, UNITS_27x9], axis=2) == np.arange(1, 10)).all(axis=(1, 2))


def solve(grid_Nx81: np.ndarray, max_rounds: int = 81) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(final grid, rounds int, solved bool) of the singles solver run until no cell changes (or max_rounds);
    solved = the final grid is a complete valid sudoku; rounds counts the rounds that filled a cell."""
    grid_Nx81 = np.asarray(grid_Nx81, np.int8)
    rounds_N = np.zeros(len(grid_Nx81), np.int64)
    for _ in range(max_rounds):
        new_Nx81 = singles_round(grid_Nx81)
        moved_N = (new_Nx81 != grid_Nx81).any(axis=1)
        if not moved_N.any():
            break
        rounds_N += moved_N
        grid_Nx81 = new_Nx81
    return grid_Nx81, rounds_N, (grid_Nx81 != 0).all(axis=1) & _valid(grid_Nx81)


def rate(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rounds int, solved bool) of the singles solver on puzzles x: token ids (N, 81) in Sudoku.chars
    ('0', id 1, blank; '1'..'9', ids 2..10)."""
    grid_Nx81 = np.asarray(x, np.int16).reshape(len(x), 81) - 1
    _, rounds_N, solved_N = solve(grid_Nx81.astype(np.int8))
    return rounds_N, solved_N


def random_grids(rng: np.random.Generator, n: int) -> np.ndarray:
    """n complete grids (n, 81), digits 1..9: the canonical grid under random validity-preserving transforms."""

    def lines_Nx9() -> np.ndarray:  # a random band order, and a random line order within each band
        band_Nx3 = np.argsort(rng.random((n, 3)), axis=1)
        within_Nx3x3 = np.argsort(rng.random((n, 3, 3)), axis=2)
        return (band_Nx3[:, :, None] * 3 + within_Nx3x3).reshape(n, 9)

    rows_Nx9, cols_Nx9 = lines_Nx9(), lines_Nx9()
    grid_Nx9x9 = CANON_9x9[rows_Nx9[:, :, None], cols_Nx9[:, None, :]]
    flip_N = rng.random(n) < 0.5
    grid_Nx9x9 = np.where(flip_N[:, None, None], grid_Nx9x9.transpose(0, 2, 1), grid_Nx9x9)
    relabel_Nx10 = np.concatenate([np.zeros((n, 1), int), 1 + np.argsort(rng.random((n, 9)), axis=1)], axis=1)
    return np.take_along_axis(relabel_Nx10, grid_Nx9x9.reshape(n, 81), axis=1).astype(np.int8)


def dig(rng: np.random.Generator, solution_Nx81: np.ndarray, d: int) -> np.ndarray:
    """Blank the cells of each solution in a random order, keeping each blank that leaves the puzzle solved by
    singles within d rounds: puzzles (n, 81) rated <= d, minimal for that bound."""
    n = len(solution_Nx81)
    order_Nx81 = np.argsort(rng.random((n, 81)), axis=1)
    puzzle_Nx81 = solution_Nx81.copy()
    rows_N = np.arange(n)
    for i in range(81):
        cell_N = order_Nx81[:, i]
        trial_Nx81 = puzzle_Nx81.copy()
        trial_Nx81[rows_N, cell_N] = 0
        ok_N = np.zeros(n, bool)
        live_L, grid_Lx81 = rows_N, trial_Nx81
        for _ in range(d):  # run only the puzzles not yet full
            grid_Lx81 = singles_round(grid_Lx81)
            full_L = (grid_Lx81 != 0).all(axis=1)
            ok_N[live_L[full_L]] = True
            live_L, grid_Lx81 = live_L[~full_L], grid_Lx81[~full_L]
        puzzle_Nx81 = np.where(ok_N[:, None], trial_Nx81, puzzle_Nx81)
    return puzzle_Nx81


class Sudoku(Family):
    name, chars, knob = "sudoku", ".0123456789", "rounds"  # '.' pads; '0' is a blank cell
    max_difficulty = 16  # beyond, exact-d puzzles get too rare (module docstring)

    def seq_len(self, d: int) -> int:
        return 81

    def problems(self, rng, count, d, test):
        self.check((d, d), (d,))  # past max_difficulty, exact-d puzzles are too rare to finish
        xs, ys, made, tried = [], [], 0, 0
        while made < count:
            yield_est = (made + 1) / (tried + 1) if tried else 0.5
            n = int(min(max(64, 1.3 * (count - made) / yield_est), 4096))
            solution_Nx81 = random_grids(rng, n)
            puzzle_Nx81 = dig(rng, solution_Nx81, d)
            _, rounds_N, solved_N = solve(puzzle_Nx81, max_rounds=d + 1)
            keep_N = solved_N & (rounds_N == d)
            xs.append(puzzle_Nx81[keep_N])
            ys.append(solution_Nx81[keep_N])
            made, tried = made + int(keep_N.sum()), tried + n
        x = np.concatenate(xs)[:count].astype(np.uint8) + 1  # digit k -> id of '<k>'
        y = np.concatenate(ys)[:count].astype(np.int8) + 1
        return x, y


FAMILY = Sudoku()
