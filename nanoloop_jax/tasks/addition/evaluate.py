"""Exact-match accuracy of an addition model (tasks/addition/data.py) per (operand digits, n_loop), by greedy
KV-cache decoding: the evaluation behind `python -m nanoloop_jax.tools.eval_addition` (see that tool's docstring
for the prompt format and what counts as solved).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence

import numpy as np

from nanoloop_jax import progress
from nanoloop_jax.errors import UserError
from nanoloop_jax.plotting import pyplot
from nanoloop_jax.tasks.addition import data as addition

# (prompt_BxP int32, max_new_tokens) -> generated token ids (B, max_new_tokens)
Solver = Callable[[np.ndarray, int], np.ndarray]


class EvalError(UserError):
    """A bad flag or missing input, reported as one line."""


def parse_ints(items: str | Sequence[str]) -> list[int]:
    """['1', '2', '4'] or ['1..16'] or ['1..8', '12'] (or the same comma-separated) -> sorted distinct positive ints."""
    text = items if isinstance(items, str) else ",".join(items)
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, sep, hi = part.partition("..")
        try:
            values = range(int(lo), int(hi) + 1) if sep else [int(lo)]
        except ValueError:
            raise EvalError(f"cannot read {part!r} in {text!r}; use e.g. 1,2,4 or 1..16") from None
        out.update(values)
    if not out or min(out) < 1:
        raise EvalError(f"need positive integers, got {text!r}")
    return sorted(out)


def prompts(stoi: dict[str, int], a: Sequence[int], b: Sequence[int]) -> list[list[int]]:
    """Token ids of END + `a+b=` per problem."""
    return [[stoi[c] for c in addition.END + addition.question(x, y)] for x, y in zip(a, b, strict=True)]


def solved(itos: dict[int, str], tokens: Sequence[int], a: int, b: int) -> bool:
    """Whether generated tokens, up to and including the first end marker, are exactly the answer."""
    head, end, _ = "".join(itos.get(int(t), "?") for t in tokens).partition(addition.END)
    return bool(end) and head + end == addition.answer(a, b)


def accuracy(
    solver: Solver, stoi: dict[str, int], a: Sequence[int], b: Sequence[int], batch_size: int
) -> tuple[float, list[bool]]:
    """Fraction of the problems solved, and which; batches are padded to batch_size (one compile per shape)."""
    itos = {i: ch for ch, i in stoi.items()}
    ids = prompts(stoi, a, b)
    ok = [False] * len(ids)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(ids):
        by_length.setdefault(len(p), []).append(i)  # the decoder takes one prompt length per batch
    for rows in by_length.values():
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            padded = chunk + [chunk[0]] * (batch_size - len(chunk))
            max_new = max(len(addition.answer(a[i], b[i])) for i in chunk)
            out = solver(np.asarray([ids[i] for i in padded], np.int32), max_new)
            for i, tokens in zip(chunk, out, strict=False):
                ok[i] = solved(itos, tokens, a[i], b[i])
    return float(np.mean(ok)), ok


def kv_solver(config, params, vocab_limit: int, n_loop: int) -> Solver:
    """Greedy decoding with sampling.KVDecoder at n_loop iterations (one decoder, so one set of compiles)."""
    import jax

    from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig

    sc = SampleConfig(temperature=0.0, top_k=None, vocab_limit=vocab_limit)
    decoder = KVDecoder(config, sc, n_loop=n_loop)
    key = jax.random.PRNGKey(0)  # unused at temperature 0, but the API takes one

    def solve(prompt_BxP: np.ndarray, max_new_tokens: int) -> np.ndarray:
        # the last new token is never fed back, so P + N - 1 positions must fit without sliding the window
        if prompt_BxP.shape[1] + max_new_tokens - 1 > config.block_size:
            raise EvalError(
                f"a {prompt_BxP.shape[1]}-token prompt plus a {max_new_tokens}-token answer does not fit "
                f"block_size {config.block_size}; evaluate fewer --digits"
            )
        return decoder.generate(params, prompt_BxP, max_new_tokens, key).tokens_BxN

    return solve


def accuracy_grid(
    solver_for: Callable[[int], Solver],
    stoi: dict[str, int],
    tests: dict[int, tuple[list[int], list[int]]],
    n_loops: Sequence[int],
    batch_size: int,
) -> np.ndarray:
    """Accuracy (len(tests), len(n_loops)): rows in the order of tests' keys (digit counts); a progress bar on
    stderr when it is slow."""
    grid = np.zeros((len(tests), len(n_loops)))
    with progress.bar(total=grid.size, desc="eval", unit="cell", delay=3.0, leave=False) as bar:
        for j, n_loop in enumerate(n_loops):
            solver = solver_for(n_loop)
            for i, (a, b) in enumerate(tests.values()):
                grid[i, j] = accuracy(solver, stoi, a, b, batch_size)[0]
                bar.update()
    return grid


def format_table(digits: Sequence[int], n_loops: Sequence[int], grid: np.ndarray, trained_loop: int, max_train: int):
    """The grid as text: one row per digit count, a rule after the longest trained length."""
    head = "digits " + "".join(f"{f'n={n}' + ('*' if n == trained_loop else ''):>8}" for n in n_loops)
    lines = [head]
    for i, d in enumerate(digits):
        lines.append(f"{d:6d} " + "".join(f"{v:8.3f}" for v in grid[i]))
        if d == max_train and i + 1 < len(digits):
            lines.append("-" * len(head))
    return "\n".join(lines)


def write_csv(path: str, digits: Sequence[int], n_loops: Sequence[int], grid: np.ndarray) -> None:
    """Wide CSV: `digits,n_loop_1,...`, one row per digit count, accuracies in [0, 1]."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["digits"] + [f"n_loop_{n}" for n in n_loops])
        for d, row in zip(digits, grid, strict=True):
            writer.writerow([d] + [f"{v:.4f}" for v in row])


def plot_heatmap(path: str, digits, n_loops, grid: np.ndarray, trained_loop: int, max_train: int, title: str):
    """Heat map PNG of the grid (digits down, n_loop across), values written in the cells."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(n_loops) + 2.5, 0.38 * len(digits) + 1.8))
    im = ax.imshow(grid, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(n_loops)), [f"{n}*" if n == trained_loop else str(n) for n in n_loops])
    ax.set_yticks(range(len(digits)), [str(d) for d in digits])
    ax.set_xlabel("n_loop at test time (* = trained)")
    ax.set_ylabel("operand digits")
    for i in range(len(digits)):
        for j in range(len(n_loops)):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", color="w" if grid[i, j] < 0.6 else "k")
    if max_train in digits and digits.index(max_train) + 1 < len(digits):
        ax.axhline(digits.index(max_train) + 0.5, color="r", linewidth=2)  # below: longer than any training problem
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="exact-match accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
