"""Length-generalization tasks (parity, decimal addition): one input length per batch, answers at fixed slots.

Following Fan et al. 2025 ("Looped Transformers for Length Generalization"), the model reads the whole
problem and writes the whole answer in one forward pass (no autoregressive decoding): answer slots are
input positions whose *output* is scored (y >= 0 there, -1 elsewhere), so the loss is taken only at the
last loop iteration, on the answer.

  parity    `^b1b2..bn=` -> the '=' slot outputs the parity bit (0/1). seq_len = n + 2.
  addition  both operands exactly n digits (n = 1 includes 0), least significant digit first and padded
            with one 0 to n+1 digits, interleaved with an answer slot: `^ a0 b0 _ a1 b1 _ .. an bn _`;
            slot j outputs digit j of the sum (least significant first, n+1 digits, so a missing
            carry-out is a 0). seq_len = 3n + 4.

In addition's layout digit j of the sum depends on the two tokens just before its slot and on the carry
from the slot three positions back, the same offsets at every length: a ripple carry that moves one slot
per loop iteration, so T(n) = n + 1 iterations suffice at any n. Training rows are right-padded with '.'
to one width (causal attention: padding after the answer changes nothing before it), so every batch has
one shape and the training step compiles once.

Files (data/<task>/prepare.py): `lengthgen.npz` with `x_<split>_<n>` (uint8 token ids, rows of seq_len(n))
and `y_<split>_<n>` (int8 targets, -1 off the answer), plus meta.json. Everything is a pure function of
the seed.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from nanoloop_jax.errors import ConfigError, UserError
from nanoloop_jax.fileio import write_atomic
from nanoloop_jax.tasks.addition.data import fixed_problems, random_operands

TASKS = ("parity", "addition")
DEPTH_RULES = ("linear", "fixed")
PAD = "."
CHARS = ".0123456789=^_"  # one vocabulary for both tasks
STOI = {ch: i for i, ch in enumerate(CHARS)}
FILE = "lengthgen.npz"
TRAIN_STREAM, TEST_STREAM = 0, 100


def seq_len(task: str, n: int) -> int:
    """Tokens of a length-n problem."""
    return n + 2 if task == "parity" else 3 * n + 4


def _ids(text_rows: np.ndarray) -> np.ndarray:
    """(N, L) array of single characters -> uint8 ids."""
    lut = np.zeros(128, np.uint8)
    lut[[ord(c) for c in CHARS]] = range(len(CHARS))
    return lut[np.vectorize(ord)(text_rows)]


def parity_problems(rng: np.random.Generator, count: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) for `count` uniform random n-bit strings: x = `^bits=`, y = parity bit at the '=' slot."""
    bits = rng.integers(0, 2, size=(count, n))
    x = np.empty((count, n + 2), np.uint8)
    x[:, 0], x[:, 1:-1], x[:, -1] = STOI["^"], bits + STOI["0"], STOI["="]
    y = np.full(x.shape, -1, np.int8)
    y[:, -1] = bits.sum(axis=1) % 2 + STOI["0"]
    return x, y


def addition_problems(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of n-digit operand pairs in the interleaved layout (module docstring)."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    powers = 10 ** np.arange(n + 1, dtype=np.int64)  # digit j of v is v // 10^j % 10, j = 0..n
    da, db, ds = ((v[:, None] // powers) % 10 for v in (a, b, a + b))
    x = np.empty((len(a), 3 * (n + 1) + 1), np.uint8)
    x[:, 0] = STOI["^"]
    x[:, 1::3], x[:, 2::3], x[:, 3::3] = da + STOI["0"], db + STOI["0"], STOI["_"]
    y = np.full(x.shape, -1, np.int8)
    y[:, 3::3] = ds + STOI["0"]
    return x, y


def make_problems(task: str, rng: np.random.Generator, count: int, n: int, test: bool) -> tuple[np.ndarray, ...]:
    """`count` length-n problems of a task (addition test sets enumerate 1 digit: 100 problems)."""
    if task == "parity":
        return parity_problems(rng, count, n)
    if test:
        a, b = fixed_problems(rng, count, n)
    else:
        a, b = random_operands(rng, np.full(count, n), np.full(count, n))
    return addition_problems(np.asarray(a), np.asarray(b), n)


def prepare_lengthgen(
    out_dir: str | os.PathLike,
    task: str,
    train_lengths: tuple[int, int],
    test_lengths: tuple[int, ...],
    num_train: int,
    num_test: int,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write lengthgen.npz (train rows for every length in the range, test rows per test length) and meta.json."""
    from nanoloop_jax.progress import bar

    if task not in TASKS:
        raise ConfigError(f"lengthgen.task must be one of {TASKS}, got {task!r}")
    lo, hi = train_lengths
    if not 1 <= lo <= hi or min(test_lengths) < 1 or (task == "addition" and max(hi, *test_lengths) > 17):
        raise ConfigError(f"bad lengths: train {train_lengths}, test {test_lengths} (addition: at most 17 digits)")
    jobs = [("train", n) for n in range(lo, hi + 1)] + [("test", n) for n in test_lengths]
    arrays = {}
    for split, n in bar(jobs, desc=f"{task} problems", disable=not progress):
        stream = (TRAIN_STREAM if split == "train" else TEST_STREAM) + n
        count = num_train if split == "train" else num_test
        x, y = make_problems(task, np.random.default_rng([seed, stream]), count, n, split == "test")
        arrays[f"x_{split}_{n}"], arrays[f"y_{split}_{n}"] = x, y
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "task": task,
        "lengthgen": True,
        "vocab_size": len(CHARS),
        "itos": {str(i): c for i, c in enumerate(CHARS)},
        "stoi": STOI,
        "train_lengths": [lo, hi],
        "test_lengths": sorted(test_lengths),
        "num_train": num_train,
        "num_test": num_test,
        "seed": seed,
    }
    tmp = out_dir / f"{FILE}.{os.getpid()}.tmp.npz"  # per process: two runs may prepare at once
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out_dir / FILE)
    write_atomic(out_dir / "meta.json", json.dumps(meta).encode())  # last: its presence marks the data complete
    return meta


def ensure_lengthgen_data(data_dir: str | os.PathLike, lg) -> dict:
    """meta.json of data_dir; prepared from config.lengthgen first if missing or made for other settings."""
    path = pathlib.Path(data_dir) / "meta.json"
    if path.exists():
        meta = json.loads(path.read_text())
        same_train = [meta.get(k) for k in ("task", "train_lengths", "num_train", "num_test", "seed")] == [
            lg.task,
            list(lg.train_lengths),
            lg.num_train,
            lg.num_test,
            lg.data_seed,
        ]
        if same_train and set(lg.test_lengths) <= set(meta.get("test_lengths", ())):
            return meta
    print(f"preparing {lg.task} length-generalization data in {data_dir}")
    return prepare_lengthgen(
        data_dir, lg.task, tuple(lg.train_lengths), tuple(lg.test_lengths), lg.num_train, lg.num_test, lg.data_seed
    )


def depth_for_length(lg, n_loop: int, n: int) -> int:
    """T(n): the loop iterations for a length-n problem (depth_rule 'linear': scale·n + offset; 'fixed': n_loop)."""
    if lg.depth_rule == "fixed":
        return n_loop
    if lg.depth_rule == "linear":
        return max(1, lg.depth_scale * n + lg.depth_offset)
    raise ConfigError(f"lengthgen.depth_rule must be one of {DEPTH_RULES}, got {lg.depth_rule!r}")


def prefix_depths(lg, width: int) -> np.ndarray:
    """(width,) int32: at each position, T of the problem that ends there (0 where none does).

    A problem's answer slot sits at the same index in every problem that extends it, so the prefix up to a
    position is itself a problem of the task: parity's position j (1..) is the '=' slot of a (j - 1)-bit
    problem, addition's slot k (index 3(k + 1)) the last slot of a k-digit one. T of that prefix problem is
    when its answer can be ready, the depth train.halting_lookahead='prefix' trains the gate to stop at there."""
    if lg.depth_rule != "linear":
        raise ConfigError(
            "train.halting_lookahead='prefix' stops each position at T of the problem ending there: it needs "
            f"lengthgen.depth_rule='linear', got {lg.depth_rule!r}"
        )
    j = np.arange(width)
    if lg.task == "parity":
        n, has = j - 1, j >= 1
    else:
        n, has = j // 3 - 1, (j % 3 == 0) & (j >= 3)
    return np.where(has, np.maximum(1, lg.depth_scale * n + lg.depth_offset), 0).astype(np.int32)


def prefix_answers(lg, x_BxT, y_BxT) -> jax.Array:
    """(B, T) answer of the problem ending at each position, -1 exactly where none does (so >= 0 marks the
    positions prefix_depths gives a depth, padding excluded): parity's position j holds the parity of the bits
    before it (the '=' slot's is y's), addition's slots are y's own digits (a sum's low digits are the sum of
    the operands' low digits)."""
    if lg.task != "parity":
        return jnp.asarray(y_BxT)
    bit_BxT = (jnp.asarray(x_BxT) == STOI["1"]).astype(jnp.int32)
    before_BxT = jnp.cumsum(bit_BxT, axis=1) - bit_BxT  # bits strictly before each position
    has_BxT = (jnp.arange(x_BxT.shape[1]) >= 1)[None] & (jnp.asarray(x_BxT) != STOI[PAD])
    return jnp.where(has_BxT, STOI["0"] + before_BxT % 2, -1)


class LengthBatches:
    """Training batches: step s draws one length n in train_lengths and batch_size rows of that length, padded.

    With curriculum_steps > 0 the longest length drawn grows linearly from the shortest to the longest
    over the first curriculum_steps steps (Fan et al. train with a length curriculum too).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        task: str,
        train_lengths,
        batch_size: int,
        seed: int,
        curriculum_steps: int = 0,
    ) -> None:
        self.curriculum_steps = curriculum_steps
        with np.load(pathlib.Path(data_dir) / FILE) as f:
            lo, hi = train_lengths
            self.pools = {n: (f[f"x_train_{n}"], f[f"y_train_{n}"]) for n in range(lo, hi + 1)}
        self.lengths = sorted(self.pools)
        self.width = seq_len(task, self.lengths[-1])
        self.batch_size, self.seed = batch_size, seed

    def longest(self, step: int) -> int:
        """The longest length step `step` may draw."""
        lo, hi = self.lengths[0], self.lengths[-1]
        if self.curriculum_steps <= 0:
            return hi
        return min(hi, lo + int(np.ceil((hi - lo) * step / self.curriculum_steps)))

    def _draw_length(self, step: int) -> tuple[int, np.random.Generator]:
        """The length of `step` and the generator that then draws its rows."""
        rng = np.random.default_rng([self.seed, 0x1E96, step])
        return int(rng.choice(self.lengths[: self.longest(step) - self.lengths[0] + 1])), rng

    def length(self, step: int) -> int:
        """The input length n of the batch of `step` (so the loop knows its depth T(n) before the batch)."""
        return self._draw_length(step)[0]

    def get(self, step: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, x, y) for `step`: a pure function of (seed, step); x padded with PAD, y with -1, to self.width."""
        n, rng = self._draw_length(step)
        xs, ys = self.pools[n]
        rows = rng.integers(0, len(xs), self.batch_size)
        return n, *pad_rows(xs[rows], ys[rows], self.width)


def pad_rows(x: np.ndarray, y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (B, L) ids with PAD and targets with -1 to (B, width), as int32."""
    b, length = x.shape
    xp = np.full((b, width), STOI[PAD], np.int32)
    yp = np.full((b, width), -1, np.int32)
    xp[:, :length], yp[:, :length] = x, y
    return xp, yp


def load_test(data_dir: str | os.PathLike, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the length-n test set."""
    with np.load(pathlib.Path(data_dir) / FILE) as f:
        if f"x_test_{n}" not in f:
            raise UserError(f"no length-{n} test set in {data_dir}; add it to lengthgen.test_lengths")
        return f[f"x_test_{n}"], f[f"y_test_{n}"]
