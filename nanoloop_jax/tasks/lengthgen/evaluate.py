"""Per-length accuracy of a length-generalization model: every n_loop up to max_depth and the confidence stop.

Every test length n runs the loop once up to max_depth iterations and reads the answer after each, so the
table has every n_loop 1..max_depth; its columns are T(n) (the trained depth rule), `adaptive` (per
problem, the iteration whose greedy answer is most probable) and a few fixed depths. `report` writes
OUT_DIR/accuracy.csv (difficulty,n_loop,accuracy: one row per difficulty and n_loop 1..max_depth, then one
with n_loop=adaptive; parity's and addition's first column is named `length`) and OUT_DIR/accuracy.png
(heat map, matplotlib: uv run --extra plot ...). Training (the lengthgen task, task.py) ends with it;
`python -m nanoloop_jax.tools.eval_lengthgen` re-runs it on a checkpoint.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import jax
import numpy as np

from nanoloop_jax import log
from nanoloop_jax.errors import UserError
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.plotting import pyplot
from nanoloop_jax.tasks.lengthgen import data as lengthgen_data
from nanoloop_jax.tasks.lengthgen.families import family
from nanoloop_jax.tasks.lengthgen.forward import accuracies, answers_per_iteration

logger = log.get(__name__)


class Result(dict):
    """difficulty -> (accuracy at n_loop 1..max_depth, adaptive accuracy, T(n))."""


def evaluate(
    model: LoopedGPT, params, data_dir: str, lg, lengths: Sequence[int], max_depth: int, batch_size: int
) -> Result:
    """Accuracy at every n_loop in 1..max_depth and at the model's own stop (the gate where it has one, else
    the confidence stop: forward.own_stop), per test length."""
    fn = jax.jit(lambda p, x, y: answers_per_iteration(model, p, x, y, max_depth))
    out = Result()
    for n in lengths:
        x, y = lengthgen_data.load_test(data_dir, n)
        parts = []
        for start in range(0, len(x), batch_size):
            xb, yb = x[start : start + batch_size].astype(np.int32), y[start : start + batch_size].astype(np.int32)
            parts.append(jax.device_get(fn(params, xb, yb)))
        correct, conf, halted = (np.concatenate(a, axis=1) for a in zip(*parts, strict=True))
        per_depth, adaptive, stop_iters = accuracies(correct, conf, halted if model.config.exit_gate else None)
        depth = lengthgen_data.depth_for_length(lg, model.config.n_loop, n)
        out[n] = (per_depth, adaptive, depth)
        at_t = f"{per_depth[depth - 1]:.3f}" if depth <= max_depth else "n/a"
        stop = "gate" if model.config.exit_gate else "confidence"
        logger.info(
            f"{family(lg.task).knob} {n}: T(n)={depth} acc {at_t}, adaptive ({stop} stop, {stop_iters:.1f} iterations) "
            f"{adaptive:.3f}, best n_loop {int(np.argmax(per_depth)) + 1}"
        )
    return out


def write_csv(path: str, result: Result, column: str = "difficulty") -> None:
    """<column>,n_loop,accuracy: n_loop 1..max_depth as numbers, then `adaptive` (column: the family's)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([column, "n_loop", "accuracy"])
        for n, (per_depth, adaptive, _) in sorted(result.items()):
            for d, acc in enumerate(per_depth, start=1):
                w.writerow([n, d, f"{acc:.4f}"])
            w.writerow([n, "adaptive", f"{adaptive:.4f}"])


def read_csv(path: str) -> dict[int, dict[str, float]]:
    """accuracy.csv -> {difficulty: {n_loop (as written): accuracy}} (first column `difficulty` or `length`)."""
    out: dict[int, dict[str, float]] = {}
    with open(path) as f:
        reader = csv.DictReader(f)
        column = reader.fieldnames[0]
        for row in reader:
            out.setdefault(int(row[column]), {})[row["n_loop"]] = float(row["accuracy"])
    return out


def format_table(
    result: Result, fixed: Sequence[int], train_max: int, baseline: dict | None = None, knob: str = "length"
) -> str:
    """Rows: difficulties; columns: T(n), the accuracy there, adaptive, fixed n_loops, and a baseline run's n_loop 1."""
    base_head = f" {'base@1':>6}" if baseline else ""
    w = max(6, len(knob))  # the first column fits the knob's name ('operands')
    head = f"{knob:>{w}} {'T(n)':>5} {'acc@T':>6} {'adapt':>6} " + " ".join(f"{'n=' + str(d):>6}" for d in fixed)
    lines = [head + base_head]
    for n, (per_depth, adaptive, depth) in sorted(result.items()):
        at_t = f"{per_depth[depth - 1]:6.3f}" if depth <= len(per_depth) else f"{'n/a':>6}"
        cells = " ".join(f"{per_depth[d - 1]:6.3f}" if d <= len(per_depth) else f"{'':>6}" for d in fixed)
        base = f" {baseline[n]['1']:6.3f}" if baseline and n in baseline else (f" {'':>6}" if baseline else "")
        mark = " " if n <= train_max else "*"
        lines.append(f"{n:>{w - 1}}{mark} {depth:>5} {at_t} {adaptive:6.3f} {cells}{base}")
    lines.append(
        "(* = harder than any training input" + ("; base@1 = the baseline run at n_loop 1)" if baseline else ")")
    )
    return "\n".join(lines)


def plot_heatmap(path: str, result: Result, train_max: int, title: str, knob: str = "input length") -> None:
    """Difficulty x n_loop accuracy, a white dot on T(n), the adaptive stop as the last column."""
    plt = pyplot()

    lengths = sorted(result)
    depth_max = max(len(result[n][0]) for n in lengths)
    grid = np.full((len(lengths), depth_max + 1), np.nan)
    for i, n in enumerate(lengths):
        per_depth, adaptive, _ = result[n]
        grid[i, : len(per_depth)] = per_depth
        grid[i, -1] = adaptive
    fig, ax = plt.subplots(figsize=(min(0.22 * depth_max + 3, 20), 0.35 * len(lengths) + 1.8))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    for i, n in enumerate(lengths):
        if result[n][2] <= depth_max:
            ax.plot(result[n][2] - 1, i, "o", color="w", markersize=3)
    ticks = [t for t in range(0, depth_max, max(1, depth_max // 12)) if t == 0 or t < depth_max - 2]  # room for 'adapt'
    ax.set_xticks(ticks + [depth_max], [str(t + 1) for t in ticks] + ["adapt"])
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    if train_max in lengths and lengths.index(train_max) + 1 < len(lengths):
        ax.axhline(lengths.index(train_max) + 0.5, color="r", linewidth=2)
    ax.axvline(depth_max - 0.5, color="k", linewidth=2)
    ax.set_xlabel("n_loop at test time (white dot: T(n))")
    ax.set_ylabel(f"{knob} (below the red line: harder than trained)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="exact-match accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out_dir: str, result: Result, lg, step: int, plot: bool = True, baseline: dict | None = None) -> list[str]:
    """Print the table, write accuracy.csv (and the heat map); returns the paths written."""
    train_max, fam = int(lg.train_lengths[1]), family(lg.task)
    depth_max = max(len(v[0]) for v in result.values())
    fixed = sorted({1, *(d for d in (5, 10, 20, 30, 40, 50, 60) if d <= depth_max), depth_max})
    logger.info(
        f"{out_dir} (step {step}): {lg.task} exact-match accuracy, "
        f"trained on {fam.knob} {lg.train_lengths[0]}..{train_max}"
    )
    logger.info(format_table(result, fixed, train_max, baseline, fam.knob))
    paths = [os.path.join(out_dir, "accuracy.csv")]
    write_csv(paths[0], result, fam.column)
    if plot:
        try:
            plot_heatmap(
                os.path.join(out_dir, "accuracy.png"),
                result,
                train_max,
                f"{os.path.basename(os.path.abspath(out_dir))} (step {step}): {lg.task}",
                fam.knob,
            )
            paths.append(os.path.join(out_dir, "accuracy.png"))
        except UserError as err:  # matplotlib missing: the table and CSV are what matter
            logger.info(f"no heat map: {err}")
    logger.info("wrote " + ", ".join(paths))
    return paths


def default_max_depth(lg, n_loop: int) -> int:
    """The largest T(n) over the test lengths plus lg.eval_extra_depth (the adaptive stop's search range)."""
    return max(lengthgen_data.depth_for_length(lg, n_loop, n) for n in lg.test_lengths) + lg.eval_extra_depth
