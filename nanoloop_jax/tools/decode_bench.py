"""Decode speed of the test-time rules, as one table: batch × {no exit, each exit rule, each speculative
draft} → tokens/s, iterations/token and the ratio to no exit (bench.py --mode=sample --exits=... --draft=...).

Every decoder of a batch size runs in one process on the same params and prompt: each is compiled and run
once untimed, then the timed runs alternate (decoder 1, 2, ..., 1, 2, ...) so a change of machine load hits
them alike; the median of `repeats` runs is reported, with the ratio of medians. The model should be a
trained one (--out_dir / --ckpt): a random-init model's exits say little about a trained one's.

Tokens/s counts every sequence's tokens; iterations/token is the mean loop iterations a token computed
(speculative rows: the verifying pass's, which is the full depth or the exit rule's).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import jax
import numpy as np

from nanoloop_jax.ckpt import loading
from nanoloop_jax.data.batches import data_dir_of
from nanoloop_jax.data.tokenizer import model_tokenizer
from nanoloop_jax.decode.recurrence import DecodeConfig
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig
from nanoloop_jax.errors import ConfigError, UserError
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.tools.benchmark import init_bench_params
from nanoloop_jax.tools.frontier import exit_rule, parse_exit


@dataclasses.dataclass
class BenchModel:
    """What the table times: a model, its params and the prompt (the tokenizer's newline, as sample.py's default)."""

    config: ModelConfig
    params: Any
    description: str
    vocab_limit: int | None  # the tokenizer's vocabulary (ids past it are padding, never drawn)
    prompt: np.ndarray

    def sample_config(self, temperature: float) -> SampleConfig:
        """Greedy at 0, else nanoLOOP's sampling (top_k 200 where the vocabulary is larger)."""
        top_k = 200 if temperature > 0 and (self.vocab_limit or self.config.vocab_size) > 200 else None
        return SampleConfig(temperature, top_k, vocab_limit=self.vocab_limit)


def _bench_model(config: ModelConfig, params: Any, description: str, data_dir) -> BenchModel:
    try:
        tok = model_tokenizer(data_dir, config.vocab_size)
    except UserError:  # no tokenizer files here: the whole vocabulary, and token 0 as the prompt
        return BenchModel(config, params, description, None, np.zeros(1, np.int32))
    return BenchModel(config, params, description, tok.vocab_size, np.asarray(tok.encode("\n"), np.int32))


def load_trained(out_dir: str | None, ckpt: str | None) -> BenchModel:
    """A trained run's (or nanoLOOP ckpt.pt's) params only, as sample.py loads them."""
    loaded = loading.load_model(out_dir, ckpt)
    return _bench_model(loaded.model_config, loaded.params, f"loaded {loaded.description}", loaded.data_dir)


def init_model(config) -> BenchModel:
    """config's model at random init (params only): timing needs no training, exits do (see above)."""
    mcfg, params = init_bench_params(config)
    return _bench_model(
        mcfg, params, "random init (exit rules on an untrained model say little)", data_dir_of(config.data)
    )


@dataclasses.dataclass(frozen=True)
class Variant:
    """One column of the table: a decode config and the exit threshold it runs at."""

    name: str
    dc: DecodeConfig
    threshold: float | None


def parse_draft(entry: str, n_loop: int) -> tuple[int, int, str, float]:
    """'4:8' -> (draft_n_loop 4, draft_tokens 8, no draft exit rule); '16:8:kl:0.001' -> drafts of up to 16
    iterations each stopped by kl at 0.001 (frontier.parse_exit's CRITERION:THRESHOLD), checked against n_loop."""
    d, _, rest = entry.partition(":")
    tokens, _, rule = rest.partition(":")
    try:
        d_loop, n_tok = int(d), int(tokens or 4)
    except ValueError:
        raise UserError(
            f"--draft entry {entry!r} must be DRAFT_N_LOOP:DRAFT_TOKENS[:CRITERION:THRESHOLD], e.g. 4:8"
        ) from None
    try:
        crit, eps = parse_exit(rule) if rule else ("none", 0.0)
    except UserError:
        raise UserError(
            f"--draft entry {entry!r}: its exit rule {rule!r} must be CRITERION:THRESHOLD, e.g. kl:0.001"
        ) from None
    try:  # the bounds are DecodeConfig's (an exit rule may draft at the full depth)
        DecodeConfig(n_loop, draft_n_loop=d_loop, draft_tokens=n_tok, draft_exit=crit, draft_threshold=eps).validate()
    except ConfigError as err:
        raise UserError(f"--draft entry {entry!r}: {err}") from None
    return d_loop, n_tok, crit, eps


def variants(
    n_loop: int,
    exits: list[tuple[str, float]],
    drafts: list[tuple[int, int, str, float]],
    min_loops: int = 1,
    compacted_too: bool = False,
) -> list[Variant]:
    """No exit first (the reference of the ratios), then each exit rule (compacted_too: also with row compaction,
    each iteration run on the rows still active alone: "... compacted"), then each speculative draft."""
    out = [Variant("no exit", DecodeConfig(n_loop), None)]
    for crit, eps in exits:
        if crit != "none":
            for compact in (False, True) if compacted_too else (False,):
                dc, threshold = exit_rule(crit, eps, n_loop, min_loops=min_loops, compact_rows=compact)
                out.append(Variant(f"{crit}:{eps:g}" + (" compacted" if compact else ""), dc, threshold))
    for d_loop, n_tok, crit, eps in drafts:
        rule = f" {crit}:{eps:g}" if crit != "none" else ""
        dc = DecodeConfig(n_loop, draft_n_loop=d_loop, draft_tokens=n_tok, draft_exit=crit, draft_threshold=eps)
        out.append(Variant(f"spec D{d_loop} L{n_tok}{rule}", dc, None))
    return out


def time_table(
    config: ModelConfig,
    params: Any,
    sc: SampleConfig,
    vs: list[Variant],
    batch_sizes: list[int],
    *,
    prompt: np.ndarray,
    max_new_tokens: int,
    repeats: int,
    window: str,
) -> list[dict]:
    """One row per (batch, variant): median seconds, tokens/s, iterations/token, ratio to the batch's no exit."""
    rows = []
    key = jax.random.PRNGKey(1337)
    for b in batch_sizes:
        prompt_BxP = np.tile(prompt[None], (b, 1)).astype(np.int32)
        decs = [KVDecoder(config, sc, v.dc, chunk_size=32, window=window) for v in vs]

        def run(i: int, decs=decs, prompt_BxP=prompt_BxP):
            return decs[i].generate(params, prompt_BxP, max_new_tokens, key, exit_threshold=vs[i].threshold)

        gens = [run(i) for i in range(len(vs))]  # compile (and the iteration counts: the same every run)
        seconds: list[list[float]] = [[] for _ in vs]
        for _ in range(repeats):
            for i in range(len(vs)):
                t0 = time.perf_counter()
                run(i)
                seconds[i].append(time.perf_counter() - t0)
        base = statistics.median(seconds[0])
        for v, gen, secs in zip(vs, gens, seconds, strict=True):
            med = statistics.median(secs)
            rows.append(
                {
                    "batch_size": b,
                    "variant": v.name,
                    "seconds": med,
                    "tokens_per_s": b * max_new_tokens / med,
                    "iterations_per_token": float(np.mean(gen.iters_BxN)),
                    "ratio": base / med,
                    "runs_tokens_per_s": [b * max_new_tokens / s for s in secs],
                }
            )
    return rows


def format_table(rows: list[dict], n_loop: int) -> str:
    """The printed table: one line per batch, one column group per variant."""
    names = list(dict.fromkeys(r["variant"] for r in rows))
    head = f"{'batch':>5}  " + "  ".join(f"{n:>26}" for n in names)
    lines = [f"tokens/s (iterations/token of n_loop {n_loop}) ratio to no exit; median of the timed runs", head]
    for b in dict.fromkeys(r["batch_size"] for r in rows):
        cells = []
        for n in names:
            r = next(r for r in rows if r["batch_size"] == b and r["variant"] == n)
            cells.append(f"{r['tokens_per_s']:>10,.1f} ({r['iterations_per_token']:5.2f}) {r['ratio']:5.2f}x")
        lines.append(f"{b:>5}  " + "  ".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def profile(model: BenchModel, batch_sizes: list[int], n_loop: int, *, max_new_tokens: int, repeats: int, window: str):
    """Where a decode step's time goes, by differences of timed decoders (one process, alternating):
    n_loop 1 and n_loop without exit give the fixed part (embed, prelude, coda, head, sampling, dispatch) and
    the cost of one iteration; the entropy rule at threshold 0 (|dH| < 0 never holds) adds an exit test to every
    iteration (ln_f + head over the tokenizer's vocabulary + log-softmax, as kl's, and the per-row masking)."""
    vs = [
        Variant("n_loop 1", DecodeConfig(1), None),
        Variant(f"n_loop {n_loop}", DecodeConfig(n_loop), None),
        Variant("test never fires", DecodeConfig(n_loop, "entropy"), 0.0),
    ]
    rows = time_table(
        model.config, model.params, model.sample_config(0.0), vs, batch_sizes,
        prompt=model.prompt, max_new_tokens=max_new_tokens, repeats=repeats, window=window,
    )  # fmt: skip
    out = []
    for b in batch_sizes:
        ms = {r["variant"]: 1e3 * r["seconds"] / max_new_tokens for r in rows if r["batch_size"] == b}
        one, full, kl = ms["n_loop 1"], ms[f"n_loop {n_loop}"], ms["test never fires"]
        per_iter = (full - one) / (n_loop - 1)
        out.append(
            {"batch_size": b, "step_ms": full, "fixed_ms": one - per_iter, "iteration_ms": per_iter,
             "exit_test_ms": (kl - full) / n_loop}
        )  # fmt: skip
    return out


def format_profile(prof: list[dict], n_loop: int) -> str:
    lines = [
        f"decode step profile (ms per token step, all rows together), n_loop {n_loop}:",
        f"{'batch':>5} {'step':>8} {'fixed':>14} {'per iteration':>14} {'loop share':>10} {'exit test/iter':>15}",
    ]
    for p in prof:
        loop = p["iteration_ms"] * n_loop
        lines.append(
            f"{p['batch_size']:>5} {p['step_ms']:8.3f} {p['fixed_ms']:8.3f} ({p['fixed_ms'] / p['step_ms']:4.0%})"
            f" {p['iteration_ms']:14.3f} {loop / p['step_ms']:10.0%} {p['exit_test_ms']:15.3f}"
        )
    return "\n".join(lines)
