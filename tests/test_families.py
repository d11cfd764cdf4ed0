"""Problem families of the difficulty-graded task (p-hop, multi-operand addition): answers checked by oracles
written here, difficulty as labelled, determinism from the seed."""

import numpy as np
import pytest

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.tasks.lengthgen.families import FAMILIES, family, multiadd, phop


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_is_deterministic_and_shaped(name):
    fam = family(name)
    d = 2 if fam.max_difficulty is None else min(3, fam.max_difficulty)
    for test in (False, True):
        x1, y1 = fam.problems(np.random.default_rng([5, d]), 12, d, test)
        x2, y2 = fam.problems(np.random.default_rng([5, d]), 12, d, test)
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert x1.dtype == np.uint8 and y1.dtype == np.int8 and x1.shape == y1.shape
        assert x1.shape[1] == fam.seq_len(d) and x1.max() < len(fam.chars)
        assert (y1 >= 0).any(axis=1).all() and y1.max() < len(fam.chars)
        assert not (x1 == 0).all(axis=1).any()  # chars[0] is padding, not a whole problem
    x3, _ = fam.problems(np.random.default_rng([6, d]), 12, d, False)
    assert not np.array_equal(x1, x3)


def _phop_parse(row):
    """(text, table, start) of a p-hop row, read from its characters: '^' before every key."""
    text = "".join(phop.FAMILY.chars[t] for t in row)
    table = dict(zip(text[1 : 3 * phop.A : 3], text[2 : 3 * phop.A : 3], strict=True))
    return text, table, text[3 * phop.A + 1]


@pytest.mark.parametrize("p", [1, 5, 15])
@pytest.mark.parametrize("test", [False, True])
def test_phop_answers_are_repeated_lookups_in_a_single_cycle(p, test):
    x, y = phop.FAMILY.problems(np.random.default_rng(p), 30, p, test=test)
    slots = 3 * phop.A + 2  # slot k (1-based) at index 3A + 1 + k
    for row, target in zip(x, y, strict=True):
        text, table, start = _phop_parse(row)
        assert text[0 : 3 * phop.A : 3] == "^" * phop.A and text[3 * phop.A] == "|" and text[slots:] == ">" * p
        assert sorted(table) == sorted(table.values()) == sorted(phop.SYMBOLS)  # a permutation
        cycle, v = [start], table[start]
        while v != start:
            cycle.append(v)
            v = table[v]
        assert len(cycle) == phop.A  # one cycle through every symbol
        want, v = "", start
        for _ in range(p):  # p hops, written out
            v = table[v]
            want += v
        assert "".join(phop.FAMILY.chars[t] for t in target[slots:]) == want
        # training rows: each value whose key is earlier in the table also answers its own next hop; test rows
        # answer the slots alone
        keys = text[1 : 3 * phop.A : 3]
        for i, value in enumerate(text[2 : 3 * phop.A : 3]):
            label = target[2 + 3 * i]
            if test or keys.index(value) > i:
                assert label == -1
            else:
                assert phop.FAMILY.chars[label] == table[value]
        others = np.delete(target[:slots], np.arange(2, 3 * phop.A, 3))
        assert (others == -1).all()


def test_phop_prefix_slot_k_ends_a_k_hop_problem():
    x, y = phop.FAMILY.problems(np.random.default_rng(0), 4, 6, test=True)
    n, has = phop.FAMILY.prefix_lengths(x.shape[1])
    for k in range(1, 4):  # the first k slots of a 6-hop problem are a k-hop problem
        xk, yk = phop.FAMILY.problems(np.random.default_rng(0), 4, k, test=True)
        np.testing.assert_array_equal(xk, x[:, : xk.shape[1]])
        np.testing.assert_array_equal(yk, y[:, : yk.shape[1]])
        assert has[xk.shape[1] - 1] and n[xk.shape[1] - 1] == k
    assert (has == (y[0] >= 0)).all()
    with pytest.raises(ConfigError, match="up to 15 hops"):
        phop.FAMILY.check((1, 8), (16,))


@pytest.mark.parametrize("m", [2, 7, 100])
def test_multiadd_rows_answer_their_running_sums(m):
    x, y = multiadd.FAMILY.problems(np.random.default_rng(m), 25, m, test=False)
    assert x.shape[1] == 6 * (m + 1)
    chars = multiadd.FAMILY.chars
    for row, target in zip(x, y, strict=True):
        text = "".join(chars[t] for t in row)
        rows = [text[i : i + 6] for i in range(0, len(text), 6)]  # long addition: one number per row of 6
        assert rows[-1] == "=_____" and all(r[0] == "+" and r[1:].isdigit() and r[4:] == "00" for r in rows[:-1])
        operands = [int(r[1:][::-1]) for r in rows[:-1]]  # least significant digit first
        assert len(operands) == m and max(operands) < 1000
        answers = target.reshape(m + 1, 6)
        assert (answers[:, 0] == -1).all() and (answers[:, 1:] >= 0).all()  # every digit cell, no sign cell
        sums = [int("".join(chars[t] for t in r[1:])[::-1]) for r in answers]
        assert sums == [sum(operands[: i + 1]) for i in range(m)] + [sum(operands)]  # running, then the whole
    with pytest.raises(ConfigError, match=r"multiadd difficulties \(operands\) start at 2"):
        multiadd.FAMILY.check((1, 8), (10,))
    with pytest.raises(ConfigError, match=r"multiadd difficulties \(operands\) start at 2"):
        multiadd.FAMILY.check((2, 8), (1,))
