"""The maze family: perfect mazes decoded from the tokens, the answer is the BFS path between the two uppercase
cells, the canvas layout (stride 16, '#' outside), determinism from the seed, and fill_rounds against a
written-out serial dead-end filling. Every expected value is computed here, not by the code under test."""

from collections import deque

import numpy as np
import pytest

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.tasks.lengthgen.families.maze import FAMILY, fill_rounds

LOWER, UPPER = "abcdefghijklmnop", "ABCDEFGHIJKLMNOP"
STEPS = {1: (-1, 0), 2: (0, 1), 4: (1, 0), 8: (0, -1)}  # N E S W
OPPOSITE = {1: 4, 2: 8, 4: 1, 8: 2}


def _decode(row, s):
    """(passage masks {cell: mask}, the uppercase cells) of one x row, checking the layout on the way."""
    text = "".join(FAMILY.chars[t] for t in row)
    assert len(text) == 16 * s
    masks, ends = {}, []
    for i, ch in enumerate(text):
        r, c = divmod(i, 16)
        if c >= s:
            assert ch == "#", (i, ch)
            continue
        assert ch in LOWER + UPPER, (i, ch)
        masks[r, c] = (LOWER + UPPER).index(ch) % 16
        if ch in UPPER:
            ends.append((r, c))
    return masks, ends


def _graph(masks, s):
    """Adjacency from the masks; asserts symmetric passages and a closed border."""
    adj = {cell: [] for cell in masks}
    for (r, c), m in masks.items():
        for bit, (dr, dc) in STEPS.items():
            if m & bit:
                nr, nc = r + dr, c + dc
                assert 0 <= nr < s and 0 <= nc < s, f"open border at {(r, c)}"
                assert masks[nr, nc] & OPPOSITE[bit], f"one-way passage {(r, c)} -> {(nr, nc)}"
                adj[r, c].append((nr, nc))
    return adj


def _bfs_path(adj, a, b):
    prev, todo = {a: None}, deque([a])
    while todo:
        u = todo.popleft()
        for v in adj[u]:
            if v not in prev:
                prev[v] = u
                todo.append(v)
    path, u = [], b
    while u is not None:
        path.append(u)
        u = prev[u]
    return set(path), prev


@pytest.mark.parametrize("s", [2, 3, 6, 15])
def test_mazes_are_perfect_and_y_is_the_bfs_path(s):
    for test in (False, True):
        x, y = FAMILY.problems(np.random.default_rng([3, s]), 40, s, test)
        assert x.dtype == np.uint8 and y.dtype == np.int8
        assert x.shape == y.shape == (40, FAMILY.seq_len(s)) == (40, 16 * s)
        for row, target in zip(x, y, strict=True):
            masks, ends = _decode(row, s)
            assert len(masks) == s * s
            adj = _graph(masks, s)
            assert sum(len(v) for v in adj.values()) == 2 * (s * s - 1)  # a tree's edge count, each seen twice
            assert len(ends) == 2 and ends[0] != ends[1]
            path, reached = _bfs_path(adj, *ends)
            assert len(reached) == s * s  # connected
            for i, t in enumerate(target):
                r, c = divmod(i, 16)
                if c >= s:
                    assert t == -1
                else:
                    assert FAMILY.chars[t] == ("1" if (r, c) in path else "0")


def test_determinism_and_seeds_differ():
    x1, y1 = FAMILY.problems(np.random.default_rng(7), 20, 5, False)
    x2, y2 = FAMILY.problems(np.random.default_rng(7), 20, 5, False)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, _ = FAMILY.problems(np.random.default_rng(8), 20, 5, False)
    assert not np.array_equal(x1, x3)
    assert len({r.tobytes() for r in x1}) == 20  # different mazes within a batch too


def _serial_fill(masks, ends, s, rounds):
    """The cells left after `rounds` rounds of dead-end filling, each round decided on the cells before it."""
    adj = _graph(masks, s)
    alive = set(masks)
    for _ in range(rounds):
        drop = {u for u in alive if u not in ends and sum(v in alive for v in adj[u]) <= 1}
        alive -= drop
    return alive


@pytest.mark.parametrize("s", [2, 4, 9])
def test_fill_rounds_against_a_serial_fill(s):
    x, _ = FAMILY.problems(np.random.default_rng([11, s]), 15, s, False)
    k_N = fill_rounds(x)
    assert k_N.shape == (15,)
    wide = np.zeros((15, 16 * 15), np.uint8)  # padded to a wider canvas: same answer
    wide[:, : x.shape[1]] = x
    np.testing.assert_array_equal(fill_rounds(wide), k_N)
    for row, k in zip(x, k_N, strict=True):
        masks, ends = _decode(row, s)
        path, _ = _bfs_path(_graph(masks, s), *ends)
        assert _serial_fill(masks, ends, s, k) == path
        if k > 0:
            assert _serial_fill(masks, ends, s, k - 1) != path
        else:
            assert path == set(masks)


def test_check_rejects_sides_below_2_and_above_15():
    FAMILY.check((2, 5), (7, 15))
    with pytest.raises(ConfigError, match=r"maze difficulties \(side\) start at 2: got train"):
        FAMILY.check((1, 5), (7,))
    with pytest.raises(ConfigError, match=r"maze difficulties \(side\) start at 2: got train"):
        FAMILY.check((2, 5), (1,))
    with pytest.raises(ConfigError, match="up to 15 side"):
        FAMILY.check((2, 5), (16,))
