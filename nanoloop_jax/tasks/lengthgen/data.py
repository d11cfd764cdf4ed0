"""Difficulty-graded problem tasks: one difficulty per batch, answers at fixed slots, every file from a seed.

Following Fan et al. 2025 ("Looped Transformers for Length Generalization"), the model reads the whole
problem and writes the whole answer in one forward pass (no autoregressive decoding): answer slots are
input positions whose *output* is scored (y >= 0 there, -1 elsewhere), so the loss is taken only at the
last loop iteration, on the answer. Each family (families/: parity and addition by input length, phop by
hops, multiadd by operands, maze by side, sudoku by rating) has its own vocabulary, layout and generator;
its difficulty d plays the role of the length n: train on easy d, test on harder ones, T(d) iterations.
Training rows are right-padded with the family's padding token (id 0) to one width, so every batch has one
shape and the training step compiles once (causal attention: padding after the answer changes nothing
before it; the non-causal families pad with a token their problems already contain, see theirs).

Files (made by train.py when missing; parity's and addition's also by data/<task>/prepare.py):
`lengthgen.npz` with `x_<split>_<n>` (uint8 token ids, rows of seq_len(n)) and `y_<split>_<n>` (int8
targets, -1 off the answer), plus meta.json. Everything is a pure function of the seed.
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np

from nanoloop_jax.errors import ConfigError, UserError
from nanoloop_jax.fileio import write_atomic
from nanoloop_jax.tasks.lengthgen.families import FAMILIES, family

TASKS = tuple(FAMILIES)
DEPTH_RULES = ("linear", "fixed")
LENGTH_WEIGHTINGS = ("uniform", "linear")
PAD_ID = 0  # every family's chars[0]
FILE = "lengthgen.npz"
TRAIN_STREAM, TEST_STREAM = 0, 100


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

    fam = family(task)
    fam.check(tuple(train_lengths), tuple(test_lengths))
    lo, hi = train_lengths
    jobs = [("train", n) for n in range(lo, hi + 1)] + [("test", n) for n in test_lengths]
    arrays = {}
    for split, n in bar(jobs, desc=f"{task} problems", disable=not progress):
        stream = (TRAIN_STREAM if split == "train" else TEST_STREAM) + n
        count = num_train if split == "train" else num_test
        x, y = fam.problems(np.random.default_rng([seed, stream]), count, n, split == "test")
        arrays[f"x_{split}_{n}"], arrays[f"y_{split}_{n}"] = x, y
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "task": task,
        "lengthgen": True,
        "vocab_size": len(fam.chars),
        "itos": {str(i): c for i, c in enumerate(fam.chars)},
        "stoi": fam.stoi,
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

    In some families a problem's answer slot sits at the same index in every problem that extends it, so the
    prefix up to that position is itself a problem of the task (parity's position j >= 1 is the '=' slot of
    a (j - 1)-bit problem; families/ say theirs). T of that prefix problem is when its answer can be ready,
    the depth train.halting_lookahead='prefix' trains the gate to stop at there."""
    if lg.depth_rule != "linear":
        raise ConfigError(
            "train.halting_lookahead='prefix' stops each position at T of the problem ending there: it needs "
            f"lengthgen.depth_rule='linear', got {lg.depth_rule!r}"
        )
    prefix = family(lg.task).prefix_lengths(width)
    if prefix is None:
        raise ConfigError(
            f"train.halting_lookahead='prefix' needs a family whose positions end shorter problems; "
            f"lengthgen.task={lg.task!r} has none: use 'depth'"
        )
    n, has = prefix
    return np.where(has, np.maximum(1, lg.depth_scale * n + lg.depth_offset), 0).astype(np.int32)


def prefix_answers(lg, x_BxT, y_BxT) -> jax.Array:
    """(B, T) answer of the problem ending at each position, -1 exactly where none does (so >= 0 marks the
    positions prefix_depths gives a depth, padding excluded): the family's prefix_answers."""
    return family(lg.task).prefix_answers(x_BxT, y_BxT)


class LengthBatches:
    """Training batches: step s draws one length n in train_lengths and batch_size rows of that length, padded.

    With curriculum_steps > 0 the longest length drawn grows linearly from the shortest to the longest
    over the first curriculum_steps steps (Fan et al. train with a length curriculum too). weighting: how a
    length is drawn among those allowed, 'uniform' or 'linear' (probability proportional to n).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        task: str,
        train_lengths,
        batch_size: int,
        seed: int,
        curriculum_steps: int = 0,
        weighting: str = "uniform",
    ) -> None:
        if weighting not in LENGTH_WEIGHTINGS:
            raise ConfigError(f"lengthgen.length_weighting must be one of {LENGTH_WEIGHTINGS}, got {weighting!r}")
        self.curriculum_steps, self.weighting = curriculum_steps, weighting
        with np.load(pathlib.Path(data_dir) / FILE) as f:
            lo, hi = train_lengths
            self.pools = {n: (f[f"x_train_{n}"], f[f"y_train_{n}"]) for n in range(lo, hi + 1)}
        self.lengths = sorted(self.pools)
        self.width = family(task).seq_len(self.lengths[-1])
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
        allowed = self.lengths[: self.longest(step) - self.lengths[0] + 1]
        if self.weighting == "linear":
            w = np.asarray(allowed, np.float64)
            return int(rng.choice(allowed, p=w / w.sum())), rng
        return int(rng.choice(allowed)), rng

    def length(self, step: int) -> int:
        """The input length n of the batch of `step` (so the loop knows its depth T(n) before the batch)."""
        return self._draw_length(step)[0]

    def get(self, step: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(n, x, y) for `step`: a pure function of (seed, step); x padded with PAD_ID, y with -1, to self.width."""
        n, rng = self._draw_length(step)
        xs, ys = self.pools[n]
        rows = rng.integers(0, len(xs), self.batch_size)
        return n, *pad_rows(xs[rows], ys[rows], self.width)


def pad_rows(x: np.ndarray, y: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad (B, L) ids with PAD_ID and targets with -1 to (B, width), as int32."""
    b, length = x.shape
    xp = np.full((b, width), PAD_ID, np.int32)
    yp = np.full((b, width), -1, np.int32)
    xp[:, :length], yp[:, :length] = x, y
    return xp, yp


def load_test(data_dir: str | os.PathLike, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of the length-n test set."""
    with np.load(pathlib.Path(data_dir) / FILE) as f:
        if f"x_test_{n}" not in f:
            raise UserError(f"no length-{n} test set in {data_dir}; add it to lengthgen.test_lengths")
        return f[f"x_test_{n}"], f[f"y_test_{n}"]
