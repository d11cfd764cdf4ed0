"""Exact-match accuracy on addition per (operand digits, n_loop), by greedy KV-cache decoding.

  python -m nanoloop_jax.tools.eval_addition --out_dir=out-addition-looped --n_loops=1,2,4,8,16
  python -m nanoloop_jax.tools.eval_addition --out_dir=out-addition-baseline --n_loops=1,2 --digits=1..6 \
      --num_problems=100

Each problem of the checkpoint's dataset's test_<d>.json (both operands d digits) is prompted as `\\n a+b=`:
the newline that ends every problem in train.bin, so the question starts as it does after a previous
problem. The model decodes greedily (temperature 0) up to the longest possible answer; a problem is
solved when the tokens up to and including the first end marker are exactly the reversed sum and the
marker. Any n_loop can be asked for: for a model trained with n_loop=1 (the baseline) a larger n_loop
re-runs its recurrent blocks, which is defined but was never trained.

Prints a digits x n_loop table (* marks the trained n_loop, a rule the longest trained length) and
writes OUT_DIR/addition_eval.csv and OUT_DIR/addition_eval.png (matplotlib: uv run --extra plot ...).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from absl import flags

from nanoloop_jax import cli, cpu_defaults
from nanoloop_jax.tasks.addition import data as addition
from nanoloop_jax.tasks.addition.evaluate import (
    EvalError,
    accuracy_grid,
    format_table,
    kv_solver,
    parse_ints,
    plot_heatmap,
    write_csv,
)

# (prompt_BxP int32, max_new_tokens) -> generated token ids (B, max_new_tokens)
Solver = Callable[[np.ndarray, int], np.ndarray]


def define_flags(fv: flags.FlagValues) -> None:
    """The tool's flags, on fv (defined when the tool runs, not at import: absl flags are process-wide)."""
    flags.DEFINE_string(
        "out_dir", None, "directory with a nanoloop-jax checkpoint (results go here too)", flag_values=fv
    )
    flags.mark_flag_as_required("out_dir", flag_values=fv)
    flags.DEFINE_list(
        "n_loops", ["1", "2", "4", "8", "16"], "test-time iterations, e.g. 1,2,4,8,16 or 1..8", flag_values=fv
    )
    flags.DEFINE_list("digits", [], "operand lengths, e.g. 1..16 (default: every test_<d>.json)", flag_values=fv)
    flags.DEFINE_integer("num_problems", 0, "first N problems of each test set (0 = all)", flag_values=fv)
    flags.DEFINE_integer("batch_size", 100, "problems decoded together", flag_values=fv)
    flags.DEFINE_string("data_dir", None, "dataset dir with test_<d>.json (default: the checkpoint's)", flag_values=fv)
    flags.DEFINE_boolean("plot", True, "write the heat-map PNG", flag_values=fv)


def evaluate_and_report(fv: flags.FlagValues) -> np.ndarray:
    """Load, evaluate, print and write; returns the grid."""
    from nanoloop_jax.ckpt import loading
    from nanoloop_jax.data.batches import load_meta

    n_loops = parse_ints(fv.n_loops)
    if fv.batch_size < 1 or fv.num_problems < 0:
        raise EvalError("--batch_size must be >= 1 and --num_problems >= 0")
    loaded = loading.load_model(fv.out_dir)
    data_dir = fv.data_dir or loaded.data_dir
    if data_dir is None:
        raise EvalError("the checkpoint does not name its dataset; pass --data_dir=data/addition")
    meta = load_meta(data_dir)
    if not meta or meta.get("task") != "addition":
        raise EvalError(f"{data_dir} is not an addition dataset; run: python data/addition/prepare.py")
    digits = parse_ints(fv.digits) if fv.digits else list(range(1, int(meta["max_test_digits"]) + 1))
    tests = {}
    for d in digits:
        a, b = addition.load_test_set(data_dir, d)
        n = fv.num_problems or len(a)
        tests[d] = (a[:n], b[:n])
    cfg = loaded.model_config
    grid = accuracy_grid(
        lambda n: kv_solver(cfg, loaded.params, int(meta["vocab_size"]), n),
        meta["stoi"],
        tests,
        n_loops,
        fv.batch_size,
    )
    max_train = int(meta["max_train_digits"])
    sizes = sorted({len(a) for a, _ in tests.values()})
    print(
        f"{loaded.description}: exact-match accuracy, {'/'.join(map(str, sizes))} problems per "
        f"length, trained on 1..{max_train} digits with n_loop={cfg.n_loop}"
    )
    print(format_table(digits, n_loops, grid, cfg.n_loop, max_train))
    csv_path = os.path.join(fv.out_dir, "addition_eval.csv")
    write_csv(csv_path, digits, n_loops, grid)
    written = [csv_path]
    if fv.plot:
        png_path = os.path.join(fv.out_dir, "addition_eval.png")
        title = f"{loaded.description}: addition accuracy"
        plot_heatmap(png_path, digits, n_loops, grid, cfg.n_loop, max_train, title)
        written.append(png_path)
    print("wrote " + ", ".join(written))
    return grid


def run(fv: flags.FlagValues, args: list[str]) -> int:
    """Evaluate the checkpoint of the flags; 1 after one `error:` line for a bad flag or a missing input."""
    del args
    cpu_defaults.apply_if_cpu()

    def evaluate() -> None:
        evaluate_and_report(fv)

    return cli.report_errors(evaluate)


if __name__ == "__main__":
    cli.run_tool(define_flags, run)
