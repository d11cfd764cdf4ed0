"""One command for the day a device is lent: correctness checks, then the figures BENCHMARKS.md wants.

  scripts/device_check.sh                      # = python bench.py --config=configs/gpt2_owt_looped.py --suite=device

On one GPU or TPU host, in a few minutes:
  1. fp32 loss on the device equals the CPU's (tiny model, float32 matmuls at full precision);
  2. bf16 loss on the device is within BF16_RTOL of the fp32 CPU loss;
  3. the fused attention kernel (cuDNN on GPU, Pallas flash on TPU) equals xla attention, forward and gradient;
  4. the train step of the config (gpt2_owt_looped: bf16, attention 'auto') at a batch that fits one device:
     compile time, ms/step, tokens/s, loop-aware MFU against the goal (>= 50% on one H100) and the roofline;
  5. KV-cache decode tokens/s (batch 1 and 8) and its compile time.
It writes one JSON and prints (and writes beside the JSON) a markdown table for BENCHMARKS.md.
On a CPU-only machine it runs end to end: the checks compare the CPU with itself (the Pallas kernel in
interpret mode) and the figures that need an accelerator read "no accelerator".
"""

from __future__ import annotations

import dataclasses
import json
import platform as host_platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig
from nanoloop_jax.model import kernels
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.tools import benchmark
from nanoloop_jax.train.steps import cross_entropy

NO_ACCELERATOR = "no accelerator"
MFU_GOAL = 0.50  # loop-aware MFU on one H100 (llm.c reaches ~40% on GPT-2 124M)
FP32_RTOL = 1e-4
BF16_RTOL = 2e-2
ATTN_ATOL = {"float32": 1e-4, "bfloat16": 3e-2}
DEVICE_BATCHES = (16, 8, 4, 2, 1)  # train batch tried on one device, largest first (halved when out of memory)
DECODE_TOKENS = 256
# A tiny looped model for the equality checks: T = 128 so that the TPU flash kernel applies.
TINY = ModelConfig(
    block_size=128, vocab_size=256, n_prelude=1, n_block=1, n_coda=1, n_loop=3, n_head=4, n_embd=128, bptt_k=2
)
CHIP_OF_KIND = (("h200", "h200"), ("h100", "h100"), ("a100", "a100"), ("v5p", "v5p"), ("v5 lite", "v5e"))
CHIP_OF_KIND += (("v5e", "v5e"), ("v4", "v4"))


def chip_of(device) -> str | None:
    """The roofline chip name of a device (None: not in the table)."""
    kind = device.device_kind.lower()
    return next((chip for key, chip in CHIP_OF_KIND if key in kind), None)


def _tiny_loss(cfg: ModelConfig, device, params_cpu) -> float:
    """Loss of a fixed batch under cfg on one device (params copied there)."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (2, cfg.block_size), dtype=np.int32)
    y = np.roll(x, -1, axis=1)

    def loss(params, x, y):
        return cross_entropy(LoopedGPT(cfg).apply({"params": params}, x, n_loop=cfg.n_loop), y)

    params, x, y = jax.device_put((params_cpu, x, y), device)
    with jax.default_matmul_precision("float32"):  # TF32 (GPU) and bf16 passes (TPU) are the defaults otherwise
        return float(jax.jit(loss)(params, x, y))


def check_losses(device, cpu) -> dict[str, Any]:
    """fp32 device loss == CPU loss, bf16 device loss ~= CPU loss, on the tiny model."""
    on_device = kernels.resolve_platform(None) if device.platform != "cpu" else "cpu"
    cpu_cfg = dataclasses.replace(TINY, platform="cpu")
    with jax.default_device(cpu):
        params = jax.jit(LoopedGPT(cpu_cfg).init)(jax.random.PRNGKey(0), np.zeros((1, 1), np.int32))["params"]
    ref = _tiny_loss(cpu_cfg, cpu, params)
    fp32 = _tiny_loss(dataclasses.replace(TINY, platform=on_device), device, params)
    bf16 = _tiny_loss(dataclasses.replace(TINY, platform=on_device, dtype="bfloat16"), device, params)
    status = "ok" if device.platform != "cpu" else f"{NO_ACCELERATOR} (CPU against itself)"
    return {
        "cpu_fp32_loss": ref,
        "device_fp32_loss": fp32,
        "device_bf16_loss": bf16,
        "fp32_rel_diff": abs(fp32 - ref) / abs(ref),
        "bf16_rel_diff": abs(bf16 - ref) / abs(ref),
        "fp32_equal": abs(fp32 - ref) <= FP32_RTOL * abs(ref),
        "bf16_within_tolerance": abs(bf16 - ref) <= BF16_RTOL * abs(ref),
        "status": status,
    }


def check_attention(device) -> dict[str, Any]:
    """The platform's fused kernel against xla attention (forward and gradient) on one device."""
    platform = kernels.resolve_platform(None) if device.platform != "cpu" else "cpu"
    kernel, dtype, note = None, "bfloat16", "ok"
    if platform == "cuda":
        kernel = kernels.cudnn_causal_attention
    elif platform == "tpu":
        kernel, dtype = kernels.pallas_causal_attention, "float32"
    else:  # no accelerator: the Pallas TPU kernel, interpreted on CPU
        kernel, dtype, note = kernels.pallas_causal_attention, "float32", f"{NO_ACCELERATOR} (Pallas interpret mode)"
    shape = (2, 256, 4, 64) if platform != "cpu" else (1, 128, 2, 32)
    q, k, v = (jax.device_put(jax.random.normal(jax.random.PRNGKey(i), shape).astype(dtype), device) for i in range(3))
    w = jax.device_put(jax.random.normal(jax.random.PRNGKey(9), shape), device)

    def value_and_grads(attn):
        def f(q, k, v):
            return jnp.sum(attn(q, k, v).astype(jnp.float32) * w)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(q, k, v)

    if platform == "cpu":
        from jax.experimental.pallas import tpu as pltpu

        with pltpu.force_tpu_interpret_mode():
            out, grads = value_and_grads(kernel)
    else:
        out, grads = value_and_grads(kernel)
    ref, ref_grads = value_and_grads(kernels.full_attention)
    atol = ATTN_ATOL[dtype]
    grad_err = max(
        float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32))))
        for g, r in zip(grads, ref_grads, strict=True)
    )
    out_err = abs(float(out) - float(ref)) / max(abs(float(ref)), 1.0)
    return {
        "kernel": kernel.__name__,
        "dtype": dtype,
        "shape_BxTxHxK": list(shape),
        "value_rel_diff": out_err,
        "grad_max_abs_diff": grad_err,
        "equal": out_err <= atol and grad_err <= atol * 10,
        "status": note,
    }


def _train_config(config: ConfigDict, batch: int) -> ConfigDict:
    c = ConfigDict(config.to_dict())
    c.data.batch_size = batch
    c.data.gradient_accumulation_steps = 1
    return c


def measure_train(config: ConfigDict, device, steps: int = 10) -> dict[str, Any]:
    """The config's train step at the largest of DEVICE_BATCHES that fits one device."""
    if device.platform == "cpu":
        return {"status": NO_ACCELERATOR}
    for batch in DEVICE_BATCHES:
        try:
            r = benchmark.run_train_benchmark(_train_config(config, batch), steps=steps, warmup=2)
        except Exception as err:  # XlaRuntimeError RESOURCE_EXHAUSTED: try half the batch
            if "RESOURCE_EXHAUSTED" not in str(err) and "out of memory" not in str(err).lower():
                raise
            continue
        chip = chip_of(device)
        out = {
            k: r[k] for k in ("batch_shape", "compile_s", "ms_per_step", "tokens_per_s", "mfu", "loss", "peak_bytes")
        }
        out["flops_per_token"] = r["flops_per_token"]
        out["mfu_goal"] = MFU_GOAL
        out["meets_goal"] = r["mfu"] is not None and r["mfu"] >= MFU_GOAL
        if chip is not None:
            bound = benchmark.train_roofline(r, chip)
            out["roofline"] = bound.line()
            out["roofline_mfu_ceiling"] = bound.mfu_ceiling
        out["status"] = "ok"
        return out
    return {"status": f"out of memory at every batch in {DEVICE_BATCHES}"}


def measure_decode(config: ConfigDict, device, batches=(1, 8), new_tokens: int = DECODE_TOKENS) -> dict[str, Any]:
    """KV-cache decoder tokens/s for the config's model at random init (compile timed separately)."""
    if device.platform == "cpu":
        return {"status": NO_ACCELERATOR}
    mcfg = benchmark.bench_model_config(config)
    params = jax.jit(LoopedGPT(mcfg).init)(jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))["params"]
    out: dict[str, Any] = {"new_tokens": new_tokens, "status": "ok"}
    for b in batches:
        decoder = KVDecoder(mcfg, SampleConfig(temperature=0.8, top_k=200))
        prompt = np.zeros((b, 1), np.int32)
        t0 = time.perf_counter()
        decoder.generate(params, prompt, new_tokens, jax.random.PRNGKey(1))
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        decoder.generate(params, prompt, new_tokens, jax.random.PRNGKey(2))
        steady = time.perf_counter() - t0
        out[f"batch_{b}_tokens_per_s"] = b * new_tokens / steady
        out[f"batch_{b}_compile_s"] = max(first - steady, 0.0)
    return out


def run(config: ConfigDict) -> dict[str, Any]:
    """All checks and figures as one dict (see module docstring)."""
    device, cpu = jax.devices()[0], jax.devices("cpu")[0]
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "device": device.device_kind,
        "platform": kernels.resolve_platform(None),
        "jax": jax.__version__,
        "host": host_platform.node(),
        "losses": check_losses(device, cpu),
        "attention": check_attention(device),
        "train": measure_train(config, device),
        "decode": measure_decode(config, device),
    }
    result["seconds"] = time.perf_counter() - t0
    result["checks_pass"] = bool(
        result["losses"]["fp32_equal"] and result["losses"]["bf16_within_tolerance"] and result["attention"]["equal"]
    )
    return result


def _fmt(x, spec: str) -> str:
    return NO_ACCELERATOR if x is None else format(x, spec)


def markdown(r: dict[str, Any]) -> str:
    """A BENCHMARKS.md-ready table of one run."""
    lo, at, tr, de = r["losses"], r["attention"], r["train"], r["decode"]
    rows = [
        ("device", f"{r['device']} ({r['platform']}), JAX {r['jax']}"),
        (
            "fp32 loss: device vs CPU",
            f"{lo['device_fp32_loss']:.6f} vs {lo['cpu_fp32_loss']:.6f} "
            f"(rel {lo['fp32_rel_diff']:.1e}, {'equal' if lo['fp32_equal'] else 'DIFFERENT'}); {lo['status']}",
        ),
        (
            "bf16 loss vs fp32 CPU",
            f"{lo['device_bf16_loss']:.6f} (rel {lo['bf16_rel_diff']:.1e}, "
            f"{'within' if lo['bf16_within_tolerance'] else 'OUTSIDE'} {BF16_RTOL}); {lo['status']}",
        ),
        (
            f"{at['kernel']} vs xla attention ({at['dtype']})",
            f"value rel {at['value_rel_diff']:.1e}, grad max abs "
            f"{at['grad_max_abs_diff']:.1e} ({'equal' if at['equal'] else 'DIFFERENT'}); {at['status']}",
        ),
    ]
    if tr["status"] == "ok":
        rows += [
            (
                "train step (gpt2_owt_looped)",
                f"batch {tuple(tr['batch_shape'])}: {tr['ms_per_step']:.1f} ms/step, "
                f"{tr['tokens_per_s']:,.0f} tokens/s, compile {tr['compile_s']:.1f} s",
            ),
            (
                "loop-aware MFU",
                f"{100 * tr['mfu']:.1f}% (goal >= {100 * MFU_GOAL:.0f}% on one H100: "
                f"{'met' if tr['meets_goal'] else 'not met'})"
                if tr["mfu"] is not None
                else "no peak for this device",
            ),
            ("roofline", tr.get("roofline", "chip not in the table")),
        ]
    else:
        rows += [("train step, MFU, roofline", tr["status"])]
    if de["status"] == "ok":
        rows += [
            (
                f"decode tokens/s ({de['new_tokens']} new)",
                ", ".join(f"batch {k.split('_')[1]}: {v:,.0f}" for k, v in de.items() if k.endswith("tokens_per_s")),
            ),
            (
                "decode compile",
                ", ".join(f"batch {k.split('_')[1]}: {v:.1f} s" for k, v in de.items() if k.endswith("compile_s")),
            ),
        ]
    else:
        rows += [("decode tokens/s", de["status"])]
    rows.append(("whole check", f"{r['seconds']:.0f} s; checks {'pass' if r['checks_pass'] else 'FAIL'}"))
    return "\n".join(["| check | result |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main(config: ConfigDict, json_path: str | None = None) -> int:
    """Run, print the table, write JSON (+ .md beside it); 0 when the correctness checks pass."""
    result = run(config)
    table = markdown(result)
    print(table)
    path = json_path or "device_check.json"
    with open(path, "w") as f:
        json.dump(result, f, indent=2, default=float)
    with open(path.rsplit(".", 1)[0] + ".md", "w") as f:
        f.write(table + "\n")
    print(f"wrote {path} and {path.rsplit('.', 1)[0]}.md")
    return 0 if result["checks_pass"] else 1
