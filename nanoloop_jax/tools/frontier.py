"""Compute/quality frontier of test-time compute: val loss vs loop iterations per token, as the decoder computes it.

  python -m nanoloop_jax.tools.frontier --out_dir=out-shakespeare-char-looped-cpu --n_loops=8,16 \
      --exits=none,latent_diff:0.01,kl:0.001,entropy:0.01,argmax:2 --val_windows=32
  python -m nanoloop_jax.tools.frontier --out_dir=... --n_loops=32 --kv_share=0,4,8 --exits=none
  python -m nanoloop_jax.tools.frontier --out_dir=... --n_loops=16 --exits=latent_diff:0.05 --warm_start=false,true
  python -m nanoloop_jax.tools.frontier --ckpt=nanoloop/ckpt.pt --data_dir=data/shakespeare_char

Every position of the first --val_windows non-overlapping block_size windows of val.bin predicts the next
character through the KV-cache decoder (KVDecoder.window_logits): per-token exit, shared cache slots and
warm start exactly as sampling runs them. `--exits` entries are CRITERION:THRESHOLD (`none` alone; for
argmax the number is the patience; gate:q stops once the learned gate's halting probability
reaches q). Writes OUT_DIR/frontier.csv with columns
n_loop,exit,threshold,kv_share,warm_start,val_loss,mean_iters,kv_cache_mib (the cache of one sequence
of block_size tokens) and OUT_DIR/frontier.png (val loss vs mean iterations, one curve per criterion).
"""

from __future__ import annotations

import csv
import itertools
import os

import jax
import numpy as np
from absl import flags

from nanoloop_jax import cli
from nanoloop_jax.ckpt import loading
from nanoloop_jax.data.batches import DataError
from nanoloop_jax.decode.recurrence import EXIT_CRITERIA, DecodeConfig
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig
from nanoloop_jax.errors import UserError
from nanoloop_jax.plotting import pyplot, save_loss_plot
from nanoloop_jax.train.steps import cross_entropy

COLUMNS = ("n_loop", "exit", "threshold", "kv_share", "warm_start", "val_loss", "mean_iters", "kv_cache_mib")


def define_flags(fv: flags.FlagValues) -> None:
    """The tool's flags, on fv (defined when the tool runs, not at import: absl flags are process-wide)."""
    flags.DEFINE_string(
        "out_dir", None, "Checkpoint dir (an orbax run or a dir with a nanoLOOP ckpt.pt).", flag_values=fv
    )
    flags.DEFINE_string("ckpt", None, "A nanoLOOP ckpt.pt instead of --out_dir.", flag_values=fv)
    flags.DEFINE_string(
        "data_dir", None, "Dataset dir with val.bin (default: the one the checkpoint names).", flag_values=fv
    )
    flags.DEFINE_list("n_loops", ["8", "16"], "Recurrence depths.", flag_values=fv)
    flags.DEFINE_list("exits", ["none"], "Exit rules, CRITERION:THRESHOLD (argmax:PATIENCE; none).", flag_values=fv)
    flags.DEFINE_list("kv_share", ["0"], "KV-cache slots per recurrent layer (0 = one per iteration).", flag_values=fv)
    flags.DEFINE_list("warm_start", ["false"], "false, true, or both.", flag_values=fv)
    flags.DEFINE_integer("min_loops", 1, "Iterations every token computes before it may exit.", flag_values=fv)
    flags.DEFINE_integer("val_windows", 32, "Non-overlapping block_size windows of val.bin evaluated.", flag_values=fv)
    flags.DEFINE_integer("batch_size", 16, "Windows per decoder call.", flag_values=fv)
    flags.DEFINE_integer("seed", 1337, "Noise key seed (inject_random).", flag_values=fv)
    flags.DEFINE_string("plot", None, "PNG path (default: OUT_DIR/frontier.png).", flag_values=fv)


def parse_exit(entry: str) -> tuple[str, float]:
    """'kl:0.001' -> ('kl', 0.001); 'none' -> ('none', 0.0)."""
    name, _, value = entry.partition(":")
    if name not in EXIT_CRITERIA:
        raise UserError(f"unknown exit criterion {name!r} in --exits; choose one of {', '.join(EXIT_CRITERIA)}")
    if name == "none":
        return name, 0.0
    try:
        number = float(value)
    except ValueError:
        raise UserError(f"--exits entry {entry!r} needs a number: {name}:THRESHOLD") from None
    if number < 0 or (name == "argmax" and (number < 1 or number != int(number))):
        raise UserError(f"--exits entry {entry!r}: the threshold must be >= 0 (argmax: a patience >= 1)")
    return name, number


def exit_rule(name: str, value: float, n_loop: int, **kw) -> tuple[DecodeConfig, float]:
    """(DecodeConfig, exit threshold) of a parse_exit entry: argmax's number is its patience, not a threshold."""
    patience = int(value) if name == "argmax" else 2
    return DecodeConfig(n_loop, name, exit_patience=patience, **kw), 0.0 if name == "argmax" else value


def val_windows(data_dir: str, block_size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) (N, block_size): the first n non-overlapping windows of val.bin, targets shifted by one."""
    path = os.path.join(data_dir, "val.bin")
    if not os.path.exists(path):
        raise DataError(f"no {path}: prepare the dataset or pass --data_dir")
    data = np.memmap(path, dtype=np.uint16, mode="r")
    n_max = (len(data) - 1) // block_size
    if n > n_max:
        raise DataError(f"--val_windows={n} but {path} holds only {n_max} windows of {block_size} tokens")
    x = np.stack([data[i * block_size : (i + 1) * block_size] for i in range(n)]).astype(np.int32)
    y = np.stack([data[i * block_size + 1 : (i + 1) * block_size + 1] for i in range(n)]).astype(np.int32)
    return x, y


def evaluate(params, decoder: KVDecoder, x, y, threshold: float, batch_size: int, noise_key) -> tuple[float, float]:
    """(val loss, mean loop iterations per token) of every position of the windows, as the decoder computes it."""
    losses, iters = [], []
    for start in range(0, len(x), batch_size):
        logits, it = decoder.window_logits(params, x[start : start + batch_size], noise_key, threshold)
        n = len(x[start : start + batch_size])
        losses.append(float(cross_entropy(logits, y[start : start + batch_size])) * n)
        iters.append(np.asarray(it))
    return sum(losses) / len(x), float(np.concatenate(iters).mean())


def frontier(model, x, y, n_loops, exits, kv_shares, warm_starts, min_loops, batch_size, seed) -> list[dict]:
    """One row per (n_loop, exit rule, kv_share, warm start)."""
    cfg, rows = model.model_config, []
    sc = SampleConfig(temperature=0.0)
    noise_key = jax.random.PRNGKey(seed)
    for n_loop, kv_share, warm, (name, value) in itertools.product(n_loops, kv_shares, warm_starts, exits):
        dc, threshold = exit_rule(
            name, value, n_loop, min_loops=min(min_loops, n_loop), kv_share=kv_share, warm_start=warm
        )
        decoder = KVDecoder(cfg, sc, dc)
        loss, mean_iters = evaluate(model.params, decoder, x, y, threshold, batch_size, noise_key)
        row = dict(zip(COLUMNS, (n_loop, name, value, kv_share, warm, loss, mean_iters, 0.0), strict=True))
        row["kv_cache_mib"] = decoder.cache_bytes(1) / 2**20
        print(
            f"n_loop {n_loop:>3} {name + (':' + format(value, 'g') if name != 'none' else ''):>18} kv_share {kv_share}"
            f" warm {warm!s:>5}: val loss {loss:.4f}, iterations/token {mean_iters:6.2f}, "
            f"kv cache {row['kv_cache_mib']:.3f} MiB",
            flush=True,
        )
        rows.append(row)
    return rows


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot(path: str, rows: list[dict]) -> None:
    """Val loss vs mean iterations per token, one curve per exit criterion (and kv_share/warm setting)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        label = r["exit"] + (f", kv_share {r['kv_share']}" if r["kv_share"] else "")
        label += ", warm" if r["warm_start"] else ""
        groups.setdefault(label, []).append(r)
    for label, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["mean_iters"])
        ax.plot([r["mean_iters"] for r in rs], [r["val_loss"] for r in rs], marker="o", label=label)
    save_loss_plot(plt, fig, ax, path, "mean loop iterations per token")


def _bools(values: list[str]) -> list[bool]:
    table = {"false": False, "true": True, "0": False, "1": True}
    if any(v.lower() not in table for v in values):
        raise UserError(f"--warm_start takes false, true or both, got {','.join(values)}")
    return [table[v.lower()] for v in values]


def _ints(name: str, values: list[str], low: int) -> list[int]:
    try:
        out = [int(v) for v in values]
    except ValueError:
        out = []
    if not out or min(out) < low:
        raise UserError(f"--{name} takes integers >= {low}, got {','.join(values)}")
    return out


def run(fv: flags.FlagValues, args: list[str]) -> int:
    """Evaluate every setting of the flags, write the CSV and the plot."""
    del args

    def evaluate_all() -> None:
        if fv.out_dir is None and fv.ckpt is None:
            raise UserError("pass --out_dir=DIR (or --ckpt=ckpt.pt)")
        n_loops = _ints("n_loops", fv.n_loops, 1)
        kv_shares = _ints("kv_share", fv.kv_share, 0)
        exits = [parse_exit(e) for e in fv.exits]
        warm = _bools(fv.warm_start)
        for n_loop, k in itertools.product(n_loops, kv_shares):
            DecodeConfig(n_loop, kv_share=k).validate()
        model = loading.load_model(fv.out_dir, fv.ckpt)
        data_dir = fv.data_dir or model.data_dir
        if data_dir is None:
            raise DataError("the checkpoint names no dataset; pass --data_dir=DIR")
        x, y = val_windows(data_dir, model.model_config.block_size, fv.val_windows)
        print(f"{model.description}: {fv.val_windows} val windows of {model.model_config.block_size} tokens")
        rows = frontier(model, x, y, n_loops, exits, kv_shares, warm, fv.min_loops, fv.batch_size, fv.seed)
        where = fv.out_dir or os.path.dirname(os.path.abspath(fv.ckpt))
        write_csv(os.path.join(where, "frontier.csv"), rows)
        print(f"wrote {os.path.join(where, 'frontier.csv')}")
        png = fv.plot or os.path.join(where, "frontier.png")
        plot(png, rows)
        print(f"wrote {png}")

    return cli.report_errors(evaluate_all)


if __name__ == "__main__":
    cli.run_tool(define_flags, run)
