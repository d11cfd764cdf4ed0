"""Speed as a measured property: the real jitted train step on random tokens, timed, with loop-aware FLOPs;
and the KV-cache decoder against naive full recomputation (nanoLOOP's generate), in one run.

`bench.py` is the command line; this module builds the step, times it and returns a flat dict of figures
(compile time, ms/step, tokens/s, FLOPs per token, FLOP/s, MFU, compiled memory) for printing or JSON.
On CPU there is no peak FLOP/s to divide by, so the same run also times a large fp32 numpy matmul: the
"matmul-peak fraction" (model FLOP/s / numpy FLOP/s) says how close the step is to what this CPU can do.

Sample mode (`bench.py --mode=sample`; BENCHMARKS.md's table: configs/shakespeare_char_looped.py,
`--sample_batch_size=1,8 --max_new_tokens=500`): compilation is excluded, each decoder runs once to warm
up and is then timed (median of `repeats` runs). The naive decoder does one full forward per token, so
timing all 500 tokens at batch 8 would take many minutes on a CPU; it is timed instead on `naive_steps`
of the same context windows, evenly spaced, and its rate is batch / mean seconds per step. Its windows
are right-padded to a multiple of 32 so a handful of compilations cover every length.
"""

from __future__ import annotations

import functools
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nanoloop_jax.config import model_config
from nanoloop_jax.data.batches import data_dir_of, load_meta
from nanoloop_jax.data.prepare import prepare_command
from nanoloop_jax.decode.recompute import naive_step_fn, naive_windows
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig, padded_length
from nanoloop_jax.errors import UserError
from nanoloop_jax.model import flops
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT, init_params
from nanoloop_jax.tasks.lm import lm_train_step
from nanoloop_jax.tools import roofline
from nanoloop_jax.train.optim import make_optimizer
from nanoloop_jax.train.steps import init_train_state

MATMUL_SHAPE = (2048, 2048, 2048)  # (M, K, N) of the numpy reference product: ~17 GFLOP, at BLAS peak
REFERENCE_GAP_S = 0.2  # idle seconds after the reference products, before the steps
REFERENCE_REPEATS = 3  # reference products per round (median)
REFERENCE_ROUNDS = 5  # blocks of timed steps, each after its own reference products
NAIVE_PAD = 32  # the naive decoder's windows are right-padded to a multiple of this: few compilations


class NumpyMatmul:
    """Times one fp32 numpy (BLAS) matmul of (M, K) x (K, N) per call; the reference for the matmul-peak fraction."""

    def __init__(self, shape: tuple[int, int, int] = MATMUL_SHAPE) -> None:
        m, k, n = shape
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((m, k), dtype=np.float32)
        self.b = rng.standard_normal((k, n), dtype=np.float32)
        self.out = np.empty((m, n), np.float32)
        self.flops = 2.0 * m * k * n
        np.matmul(self.a, self.b, out=self.out)  # warm-up: BLAS threads started, pages touched

    def __call__(self) -> float:
        """FLOP/s of one product."""
        t0 = time.perf_counter()
        np.matmul(self.a, self.b, out=self.out)
        return self.flops / (time.perf_counter() - t0)


def numpy_matmul_flops(shape: tuple[int, int, int] = MATMUL_SHAPE, repeats: int = 5) -> float:
    """Median FLOP/s of `repeats` fp32 numpy matmuls of shape (M, K, N)."""
    mm = NumpyMatmul(shape)
    return statistics.median(mm() for _ in range(repeats))


def bench_model_config(config) -> ModelConfig:
    """config.model as a ModelConfig, with vocab_size from the dataset's meta.json when it is prepared (as train.py)."""
    meta = load_meta(data_dir_of(config.data))
    overrides = {"vocab_size": int(meta["vocab_size"])} if meta and "stoi" in meta else {}
    return model_config(config.model, **overrides)


def vocab_note(config) -> str:
    """Which vocab_size bench_model_config picks and why: an unprepared char dataset silently means GPT-2's 50304."""
    data_dir = data_dir_of(config.data)
    meta, vocab = load_meta(data_dir), bench_model_config(config).vocab_size
    if meta and "stoi" in meta:
        return f"vocab_size {vocab}: the character vocabulary of {data_dir}/meta.json"
    if meta is None:
        return (
            f"vocab_size {vocab}: config.model.vocab_size, because {data_dir}/meta.json does not exist "
            "(a char-level dataset sets its own, smaller vocabulary: prepare it with "
            f"{prepare_command(config.data.dataset, data_dir)}, or pass --config.model.vocab_size)"
        )
    return f"vocab_size {vocab}: config.model.vocab_size ({data_dir} is not a char-level dataset)"


def memory_stats(compiled) -> dict[str, int | None]:
    """Argument / output / temporary / peak bytes of a compiled executable (None where the backend has none)."""
    mem = compiled.memory_analysis()
    if mem is None:
        return {"argument_bytes": None, "output_bytes": None, "temp_bytes": None, "peak_bytes": None}
    # XLA:CPU's peak_memory_in_bytes counts only the arguments; live at once are arguments, the outputs not
    # aliased to a donated argument, and the temporaries.
    live = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    peak = max(getattr(mem, "peak_memory_in_bytes", 0), live)
    return {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
        "peak_bytes": int(peak),
    }


def compile_train_step(config, mcfg: ModelConfig | None = None):
    """(compiled step, state, batch, (key, depth), compile seconds) for config's model, optimizer, batch shape
    and training objective (the language-modelling task's step, halting included), at depth n_loop."""
    mcfg = mcfg or bench_model_config(config)
    model = LoopedGPT(mcfg)
    tx = make_optimizer(config.opt)
    key = jax.random.PRNGKey(config.seed)
    state = jax.jit(lambda k: init_train_state(model, tx, k))(key)
    accum, b, t = config.data.gradient_accumulation_steps, config.data.batch_size, mcfg.block_size
    kx, ky = jax.random.split(jax.random.fold_in(key, 1))
    batch = {
        "x": jax.random.randint(kx, (accum, b, t), 0, mcfg.vocab_size, jnp.int32),
        "y": jax.random.randint(ky, (accum, b, t), 0, mcfg.vocab_size, jnp.int32),
    }
    step = jax.jit(lm_train_step(model, tx, None, config.train), donate_argnums=0)
    args = (key, np.int32(mcfg.n_loop))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, *args).compile()
    return compiled, state, batch, args, time.perf_counter() - t0


def run_train_benchmark(
    config, steps: int = 20, warmup: int = 3, numpy_reference: bool | None = None, rounds: int = REFERENCE_ROUNDS
) -> dict[str, Any]:
    """Compile and time the train step; figures as a flat dict (see module docstring).

    With the numpy reference (default on CPU) the timed steps run in `rounds` back-to-back blocks, each
    after its own reference products, and the matmul-peak fraction is the median over blocks of (median
    step FLOP/s / reference FLOP/s): on a CPU shared with other jobs, load that comes and goes then slows
    both sides of each ratio alike. (Interleaving single steps with the product measures cold steps:
    BLAS threads spinning down, caches and frequency after the pause.) Over 60 lines: the timing protocol
    (warm-up, reference rounds, memory figures) reads best in the order it runs.
    """
    mcfg = bench_model_config(config)
    compiled, state, batch, args, compile_s = compile_train_step(config, mcfg)
    platform = jax.devices()[0].platform
    if numpy_reference is None:
        numpy_reference = platform == "cpu"
    reference = NumpyMatmul() if numpy_reference else None
    for _ in range(warmup):
        state, _ = compiled(state, batch, *args)
    jax.block_until_ready(state)
    n_rounds = max(1, min(rounds, steps)) if reference is not None else 1
    times, cpu_times, ref_flops, round_times = [], [], [], []
    for r in range(n_rounds):
        if reference is not None:
            ref_flops.append(statistics.median(reference() for _ in range(REFERENCE_REPEATS)))
            time.sleep(REFERENCE_GAP_S)  # BLAS threads spin for a while after a product
        block = []
        for _ in range(steps // n_rounds + (r < steps % n_rounds)):
            t0, c0 = time.perf_counter(), time.process_time()
            state, metrics = compiled(state, batch, *args)
            jax.block_until_ready((state, metrics))
            block.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        times += block
        round_times.append(statistics.median(block))
    step_s = statistics.median(times)
    tokens = int(np.prod(batch["x"].shape))
    flops_tok = flops.flops_per_token(mcfg)
    result: dict[str, Any] = {
        "mode": "train",
        "device": jax.devices()[0].device_kind,
        "platform": platform,
        "n_loop": mcfg.n_loop,
        "bptt_k": mcfg.bptt_k,
        "n_embd": mcfg.n_embd,
        "vocab_size": mcfg.vocab_size,
        "batch_shape": list(batch["x"].shape),
        "tokens_per_step": tokens,
        "compile_s": compile_s,
        "steps": steps,
        "ms_per_step": 1000 * step_s,
        "ms_per_step_min": 1000 * min(times),
        # process CPU seconds per step (all threads): ≈ n_cores × wall on an idle machine; ≈ wall when the
        # step got one core's worth (contended, or serial)
        "cpu_ms_per_step": 1000 * statistics.median(cpu_times),
        "tokens_per_s": tokens / step_s,
        "flops_per_token": flops_tok,
        "model_flops_per_s": flops_tok * tokens / step_s,
        "mfu": flops.mfu(mcfg, tokens / step_s, n_devices=1),
        "loss": float(metrics["loss"]),
        **memory_stats(compiled),
    }
    result["hlo_flops"], result["hlo_bytes_accessed"] = roofline.cost_of(compiled)
    if reference is not None:
        result["numpy_matmul_flops_per_s"] = statistics.median(ref_flops)
        result["matmul_peak_fraction"] = statistics.median(
            flops_tok * tokens / t / ref for t, ref in zip(round_times, ref_flops, strict=True)
        )
    return result


def train_roofline(result: dict[str, Any], chip_name: str) -> roofline.Roofline:
    """The roofline of a run_train_benchmark result's compiled step on a chip ('cpu': this CPU, measured)."""
    if chip_name == "cpu":
        if "numpy_matmul_flops_per_s" not in result:
            raise UserError("--roofline=cpu needs the CPU's measured matmul peak: run the benchmark on CPU")
        chip = roofline.cpu_chip(result["numpy_matmul_flops_per_s"])
    else:
        chip = roofline.CHIPS[chip_name]
    model_flops = result["flops_per_token"] * result["tokens_per_step"]
    return roofline.roofline(chip_name, chip, result["hlo_flops"], result["hlo_bytes_accessed"], model_flops)


def lowered_roofline(lowered, mcfg: ModelConfig, tokens: int, chip_name: str) -> roofline.Roofline:
    """The roofline of a lowered train step (nanoloop_jax.tools.lowering) for `tokens` tokens per step on a chip."""
    hlo_flops, _ = roofline.cost_of(lowered)
    hlo_bytes = roofline.unfusable_bytes(lowered)  # XLA's count for an unfused program is far too high
    model_flops = flops.flops_per_token(mcfg) * tokens
    return roofline.roofline(chip_name, roofline.CHIPS[chip_name], hlo_flops, hlo_bytes, model_flops)


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_decoders(
    model_config: ModelConfig,
    params,
    *,
    batch_size: int,
    max_new_tokens: int = 500,
    prompt_len: int = 1,
    n_loop: int | None = None,
    naive_steps: int = 20,
    repeats: int = 3,
    chunk_size: int = 32,
    window: str = "slide",
) -> dict:
    """Tokens/s (all sequences together) of the KV-cache and naive decoders over the same context windows
    (`window` past block_size, as sample.py --window), and the speed-up.

    Over 60 lines: both decoders' timing protocols side by side, so they visibly time the same thing."""
    sc = SampleConfig(temperature=0.8, top_k=200)  # nanoLOOP sample.py's defaults
    rng = np.random.default_rng(0)
    prompt_BxP = rng.integers(0, model_config.vocab_size, (batch_size, prompt_len), dtype=np.int32)
    key = jax.random.PRNGKey(1337)

    decoder = KVDecoder(model_config, sc, n_loop=n_loop, chunk_size=chunk_size, window=window)
    decoder.generate(params, prompt_BxP, max_new_tokens, key)  # compile
    kv_s = _median_seconds(lambda: decoder.generate(params, prompt_BxP, max_new_tokens, key), repeats)

    step = naive_step_fn(model_config, sc, n_loop=n_loop)
    windows = naive_windows(prompt_len, max_new_tokens, model_config.block_size, window)
    picked = [windows[i] for i in np.linspace(0, len(windows) - 1, min(naive_steps, len(windows))).astype(int)]
    inputs = []
    for start, end in picked:
        n = end - start
        window_BxT = rng.integers(
            0, model_config.vocab_size, (batch_size, padded_length(n, NAIVE_PAD, model_config.block_size))
        )
        inputs.append((window_BxT.astype(np.int32), n))
    noise_key = jax.random.PRNGKey(0)
    for window_BxT, n in {w.shape[1]: (w, n) for w, n in inputs}.values():  # compile each padded length once
        jax.block_until_ready(step(params, window_BxT, n, key, noise_key))

    def naive_run():
        for i, (window_BxT, n) in enumerate(inputs):
            jax.block_until_ready(step(params, window_BxT, n, jax.random.fold_in(key, i), noise_key))

    naive_step_s = _median_seconds(naive_run, repeats) / len(inputs)

    result = {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "prompt_len": prompt_len,
        "n_loop": decoder.n_loop,
        "window": window,
        "block_size": model_config.block_size,
        "kv_seconds": kv_s,
        "kv_tokens_per_s": batch_size * max_new_tokens / kv_s,
        "naive_steps_timed": len(inputs),
        "naive_seconds_per_step": naive_step_s,
        "naive_tokens_per_s": batch_size / naive_step_s,
    }
    result["speedup"] = result["kv_tokens_per_s"] / result["naive_tokens_per_s"]
    return result


def format_sample_result(r: dict[str, Any]) -> str:
    """The one line of a sample-mode result: both decoders' tokens/s, the speed-up and the window they used."""
    past = r["prompt_len"] + r["max_new_tokens"] > r["block_size"]
    window = f"window {r['window']}" + (
        f" (past block_size {r['block_size']}: slide, sample.py's default, re-prefills every token; "
        "--window=restart keeps KV-cache speed)"
        if past
        else f" (all within block_size {r['block_size']})"
    )
    return (
        f"batch {r['batch_size']}, {r['max_new_tokens']} new tokens, n_loop {r['n_loop']}, {window}: "
        f"KV cache {r['kv_tokens_per_s']:,.1f} tok/s ({r['kv_seconds']:.2f} s), "
        f"naive {r['naive_tokens_per_s']:,.1f} tok/s ({r['naive_seconds_per_step'] * 1e3:.0f} ms/step over "
        f"{r['naive_steps_timed']} of the {r['max_new_tokens']} windows), speed-up {r['speedup']:.1f}x"
    )


def init_bench_params(config) -> tuple[ModelConfig, Any]:
    """(model config, params at config.seed's init): params only, no optimizer state (decoding needs none)."""
    mcfg = bench_model_config(config)
    return mcfg, jax.jit(functools.partial(init_params, mcfg))(jax.random.PRNGKey(config.seed))


def run_sample_benchmark(
    config, batch_size: int, max_new_tokens: int, naive_steps: int = 20, repeats: int = 3, window: str = "slide"
) -> dict[str, Any]:
    """Decode speed of the sampler (time_decoders) for config's model at fresh init: speed needs no training."""
    mcfg, params = init_bench_params(config)
    result = time_decoders(
        mcfg,
        params,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        prompt_len=1,
        naive_steps=naive_steps,
        repeats=repeats,
        window=window,
    )
    return {"mode": "sample", "device": jax.devices()[0].device_kind, **dict(result)}


def format_result(r: dict[str, Any]) -> str:
    """Human-readable lines of a result dict (train mode gets units, sample mode one line; others key: value)."""
    if r.get("mode") == "sample":
        return f"{r['device']}: {format_sample_result(r)}"
    if r.get("mode") != "train":
        return "\n".join(f"{k}: {v}" for k, v in r.items())

    def mib(x: int | None) -> str:
        return "n/a" if x is None else f"{x / 2**20:,.1f} MiB"

    lines = [
        f"device: {r['device']} ({r['platform']}); batch {tuple(r['batch_shape'])} = {r['tokens_per_step']:,} tokens",
        f"compile: {r['compile_s']:.2f} s",
        f"step: {r['ms_per_step']:.2f} ms (median of {r['steps']}; min {r['ms_per_step_min']:.2f} ms; "
        f"CPU time {r['cpu_ms_per_step']:.2f} ms)",
        f"tokens/s: {r['tokens_per_s']:,.0f}",
        f"model FLOPs/token: {r['flops_per_token']:,.0f} (loop-aware: n_loop {r['n_loop']}, bptt_k {r['bptt_k']})",
        f"achieved: {r['model_flops_per_s'] / 1e9:,.2f} GFLOP/s",
        "MFU: " + ("None (no peak for this device)" if r["mfu"] is None else f"{100 * r['mfu']:.2f}%"),
        f"memory: peak {mib(r['peak_bytes'])}, temp {mib(r['temp_bytes'])}, arguments {mib(r['argument_bytes'])}",
    ]
    if "matmul_peak_fraction" in r:
        lines.append(f"numpy fp32 matmul: {r['numpy_matmul_flops_per_s'] / 1e9:,.2f} GFLOP/s")
        lines.append(f"matmul-peak fraction: {r['matmul_peak_fraction']:.3f}")
    return "\n".join(lines)
