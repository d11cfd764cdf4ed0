"""Validation loss (and speed) of one checkpoint at many recurrence depths: how test-time compute pays off.

  python -m nanoloop_jax.tools.depth_sweep --out_dir=out-shakespeare-char-looped --n_loops=1,2,4,8,16,32
  python -m nanoloop_jax.tools.depth_sweep --out_dir=out-fixed,out-random --plot=depth_sweep.png   # curves in one plot
  python -m nanoloop_jax.tools.depth_sweep --ckpt=nanoloop/ckpt.pt --data_dir=data/shakespeare_char

Prints a table and writes OUT_DIR/depth_sweep.csv (n_loop, val_loss, tokens_per_s) for every checkpoint,
and a PNG of loss vs n_loop (log x) when matplotlib is installed (uv run --extra plot ...).
The val batches are the trainer's evaluation batches (same seed offset), so the loss at the trained
depth equals the val loss train.py printed for the same eval_iters and batch size.
"""

from __future__ import annotations

import csv
import os
import sys
import time

import jax
import numpy as np
from absl import flags

from nanoloop_jax import cli, cpu_defaults
from nanoloop_jax.ckpt import loading
from nanoloop_jax.data.batches import EVAL_SEED_OFFSET, BatchSampler, DataError
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.plotting import pyplot, save_loss_plot
from nanoloop_jax.train.steps import make_eval_step


def define_flags(fv: flags.FlagValues) -> None:
    """The tool's flags, on fv (defined when the tool runs, not at import: absl flags are process-wide)."""
    flags.DEFINE_list(
        "out_dir", None, "Checkpoint dir(s), comma-separated to compare runs in one plot.", flag_values=fv
    )
    flags.DEFINE_string("ckpt", None, "A nanoLOOP ckpt.pt instead of --out_dir (read without PyTorch).", flag_values=fv)
    flags.DEFINE_list("n_loops", ["1", "2", "4", "8", "16", "32"], "Recurrence depths.", flag_values=fv)
    flags.DEFINE_string(
        "data_dir", None, "Dataset dir with val.bin (default: the one the checkpoint names).", flag_values=fv
    )
    flags.DEFINE_integer("eval_iters", 20, "Validation batches per depth.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 12, "Sequences per batch.", flag_values=fv)
    flags.DEFINE_integer(
        "seed", 1337, "The training seed (eval batches use seed + the trainer's offset).", flag_values=fv
    )
    flags.DEFINE_string("plot", None, "PNG path (default: OUT_DIR/depth_sweep.png for one run).", flag_values=fv)
    flags.DEFINE_list("labels", None, "Legend labels, one per --out_dir (default: the dirs).", flag_values=fv)


def sweep(
    model: loading.InferenceModel, data_dir: str, n_loops: list[int], eval_iters: int, batch_size: int, seed: int
) -> list[dict]:
    """[{n_loop, val_loss, tokens_per_s}] over the same val batches for every depth."""
    cfg = model.model_config
    sampler = BatchSampler(data_dir, "val", batch_size, cfg.block_size, seed=seed + EVAL_SEED_OFFSET)
    batches = [dict(zip(("x", "y", "mask"), sampler.get(i), strict=False)) for i in range(eval_iters)]
    key = jax.random.fold_in(jax.random.PRNGKey(seed), 2**30)  # the trainer's eval noise key
    rows = []
    for n_loop in n_loops:
        step = jax.jit(make_eval_step(LoopedGPT(cfg), n_loop))
        jax.block_until_ready(step(model.params, batches[0], jax.random.fold_in(key, 0)))  # compile
        start = time.perf_counter()
        losses = [step(model.params, b, jax.random.fold_in(key, i)) for i, b in enumerate(batches)]
        losses = jax.device_get(losses)
        elapsed = time.perf_counter() - start
        tokens = eval_iters * batch_size * cfg.block_size
        rows.append({"n_loop": n_loop, "val_loss": float(np.mean(losses)), "tokens_per_s": tokens / elapsed})
    return rows


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["n_loop", "val_loss", "tokens_per_s"])
        writer.writeheader()
        writer.writerows(rows)


def plot(path: str, curves: dict[str, list[dict]], trained: dict[str, int]) -> None:
    """Loss vs n_loop (log x), one line per run, the trained depth marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for label, rows in curves.items():
        xs, ys = [r["n_loop"] for r in rows], [r["val_loss"] for r in rows]
        (line,) = ax.plot(xs, ys, marker="o", label=label)
        if trained[label] in xs:
            ax.axvline(trained[label], color=line.get_color(), ls=":", lw=1)
    ax.set_xscale("log", base=2)
    save_loss_plot(plt, fig, ax, path, "recurrence depth n_loop at test time")


def run(fv: flags.FlagValues, args: list[str]) -> int:
    """Sweep every checkpoint of the flags, print the tables, write the CSVs and the plot."""
    del args
    cpu_defaults.apply_if_cpu()
    try:
        n_loops = [int(s) for s in fv.n_loops]
        if not n_loops or min(n_loops) < 1:
            raise ValueError
    except ValueError:
        print(
            f"error: --n_loops must be positive integers separated by commas, got {','.join(fv.n_loops)!r}",
            file=sys.stderr,
        )
        return 1
    sources = fv.out_dir or [None]
    if fv.out_dir is None and fv.ckpt is None:
        print("error: pass --out_dir=DIR (or --ckpt=ckpt.pt)", file=sys.stderr)
        return 1
    labels = fv.labels or [s or fv.ckpt for s in sources]
    if len(labels) != len(sources):
        print(f"error: --labels has {len(labels)} entries for {len(sources)} runs", file=sys.stderr)
        return 1

    def sweep_all() -> None:
        curves, trained = {}, {}
        for out_dir, label in zip(sources, labels, strict=True):
            model = loading.load_model(out_dir, fv.ckpt)
            data_dir = fv.data_dir or model.data_dir
            if data_dir is None:
                raise DataError("the checkpoint names no dataset; pass --data_dir=DIR")
            rows = sweep(model, data_dir, n_loops, fv.eval_iters, fv.batch_size, fv.seed)
            print(
                f"{model.description} (trained n_loop {model.model_config.n_loop}, {model.model_config.loop_sampling})"
            )
            print(f"{'n_loop':>7} {'val loss':>9} {'tokens/s':>10}")
            for r in rows:
                print(f"{r['n_loop']:>7} {r['val_loss']:>9.4f} {r['tokens_per_s']:>10,.0f}")
            csv_path = os.path.join(out_dir or os.path.dirname(os.path.abspath(fv.ckpt)), "depth_sweep.csv")
            write_csv(csv_path, rows)
            print(f"wrote {csv_path}")
            curves[label], trained[label] = rows, model.model_config.n_loop
        png = fv.plot or os.path.join(sources[0] or os.path.dirname(os.path.abspath(fv.ckpt)), "depth_sweep.png")
        plot(png, curves, trained)
        print(f"wrote {png}")

    return cli.report_errors(sweep_all)


if __name__ == "__main__":
    cli.run_tool(define_flags, run)
