"""The sudoku family: solutions valid and agreeing with the givens, unique (a backtracking counter written
here), rated as labelled (a serial singles solver written here), determinism from the seed, layout."""

import numpy as np
import pytest

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.tasks.lengthgen.families import sudoku

FAM = sudoku.FAMILY
ROWS = [[9 * r + c for c in range(9)] for r in range(9)]
COLS = [[9 * r + c for r in range(9)] for c in range(9)]
BOXES = [[9 * (3 * (b // 3) + i) + 3 * (b % 3) + j for i in range(3) for j in range(3)] for b in range(9)]
UNITS = ROWS + COLS + BOXES
PEERS = [sorted({p for u in UNITS if c in u for p in u} - {c}) for c in range(81)]


def _digits(row) -> list[int]:
    """Token ids -> digits 0..9 through the charset ('0' = blank)."""
    text = "".join(FAM.chars[t] for t in row)
    assert "." not in text  # padding never appears inside a puzzle
    return [int(ch) for ch in text]


def _serial_round(grid: list[int]) -> list[int]:
    """One round written out: candidates from the grid as it stands, then every naked and hidden single at once."""
    cand = {c: set(range(1, 10)) - {grid[p] for p in PEERS[c]} for c in range(81) if grid[c] == 0}
    fills = {c: next(iter(s)) for c, s in cand.items() if len(s) == 1}
    for unit in UNITS:
        for k in range(1, 10):
            cells = [c for c in unit if c in cand and k in cand[c]]
            if len(cells) == 1:
                assert fills.setdefault(cells[0], k) == k  # a consistent puzzle never forces two digits
    out = list(grid)
    for c, k in fills.items():
        out[c] = k
    return out


def _serial_rounds(grid: list[int], limit: int = 81) -> tuple[int, list[int]]:
    rounds = 0
    while 0 in grid and rounds < limit:
        new = _serial_round(grid)
        if new == grid:
            break
        grid, rounds = new, rounds + 1
    return rounds, grid


def _count_solutions(grid: list[int], cap: int = 2) -> int:
    """Backtracking over the blank with fewest candidates; stops counting at cap."""
    grid = list(grid)

    def go() -> int:
        best, best_cands = None, None
        for c in range(81):
            if grid[c] == 0:
                cands = set(range(1, 10)) - {grid[p] for p in PEERS[c]}
                if best is None or len(cands) < len(best_cands):
                    best, best_cands = c, cands
                    if not cands:
                        return 0
        if best is None:
            return 1
        found = 0
        for k in sorted(best_cands):
            grid[best] = k
            found += go()
            if found >= cap:
                break
        grid[best] = 0
        return found

    return go()


def _is_complete_sudoku(grid: list[int]) -> bool:
    return all(sorted(grid[c] for c in unit) == list(range(1, 10)) for unit in UNITS)


@pytest.mark.parametrize("d", [1, 2, 4, 9, FAM.max_difficulty])
def test_solutions_are_valid_sudokus_that_keep_the_givens(d):
    n = 40 if d <= 4 else 6
    x, y = FAM.problems(np.random.default_rng([1, d]), n, d, test=False)
    assert x.shape == y.shape == (n, 81) and x.dtype == np.uint8 and y.dtype == np.int8
    for row, target in zip(x, y, strict=True):
        puzzle, solution = _digits(row), _digits(target)
        assert _is_complete_sudoku(solution)  # every answer slot is scored, givens included
        assert all(p in (0, s) for p, s in zip(puzzle, solution, strict=True))
        assert 0 in puzzle


@pytest.mark.parametrize("d", [1, 3, 7, FAM.max_difficulty])
def test_every_puzzle_has_a_unique_solution(d):
    x, y = FAM.problems(np.random.default_rng([2, d]), 3, d, test=True)
    for row, target in zip(x, y, strict=True):
        assert _count_solutions(_digits(row)) == 1
        assert _count_solutions(_digits(target)) == 1  # the counter itself sees a full grid as one solution
    assert _count_solutions([0] * 81) == 2  # and finds more than one where there are


@pytest.mark.parametrize("d", [1, 2, 3, 4, 6, 10, FAM.max_difficulty])
def test_rating_is_the_serial_singles_solvers_round_count(d):
    n = 12 if d <= 4 else 4
    x, y = FAM.problems(np.random.default_rng([3, d]), n, d, test=False)
    for row, target in zip(x, y, strict=True):
        puzzle = _digits(row)
        rounds, final = _serial_rounds(puzzle)
        assert rounds == d and final == _digits(target)
        short_rounds, short = _serial_rounds(puzzle, limit=d - 1)
        assert short_rounds == d - 1 and 0 in short  # one round fewer leaves blanks
    rounds_N, solved_N = sudoku.rate(x)
    assert (rounds_N == d).all() and solved_N.all()


def test_rate_reports_what_singles_cannot_solve():
    empty = np.full((1, 81), FAM.stoi["0"], np.uint8)
    rounds_N, solved_N = sudoku.rate(empty)
    assert rounds_N.tolist() == [0] and not solved_N.any()
    x, y = FAM.problems(np.random.default_rng(4), 2, 2, test=False)
    rounds_N, solved_N = sudoku.rate(y.astype(np.uint8))  # a full grid: nothing to do
    assert rounds_N.tolist() == [0, 0] and solved_N.all()


def test_determinism_layout_and_charset():
    for test in (False, True):
        x1, y1 = FAM.problems(np.random.default_rng([5, 3]), 20, 3, test)
        x2, y2 = FAM.problems(np.random.default_rng([5, 3]), 20, 3, test)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    x3, y3 = FAM.problems(np.random.default_rng([6, 3]), 20, 3, False)
    assert not np.array_equal(x1, x3) and not np.array_equal(y1, y3)
    assert len({r.tobytes() for r in y1}) > 1  # the solution grids themselves vary
    assert FAM.chars == ".0123456789" and FAM.chars[0] == "." and FAM.stoi["0"] == 1
    assert FAM.name == "sudoku" and FAM.knob == "rounds" and FAM.column == "difficulty"
    assert all(FAM.seq_len(d) == 81 for d in range(1, FAM.max_difficulty + 1))
    FAM.check((1, 4), (1, FAM.max_difficulty))
    with pytest.raises(ConfigError, match=f"up to {FAM.max_difficulty} rounds"):
        FAM.check((1, 4), (FAM.max_difficulty + 1,))
