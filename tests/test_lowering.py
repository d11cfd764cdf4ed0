"""GPU and TPU programs lowered on CPU (bench.py --lower_for), and the roofline they are bounded by.

What lowering checks and what it does not: see nanoloop_jax/tools/lowering.py's docstring.
"""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from helpers import REPO_ROOT

from nanoloop_jax.config import base_config
from nanoloop_jax.model import kernels
from nanoloop_jax.tools import lowering, roofline

TINY = {
    "model.vocab_size": 64,
    "model.block_size": 128,  # a multiple of the TPU flash kernel's 128-row tile, so it is the one lowered
    "model.n_embd": 64,
    "model.n_head": 4,
    "model.n_prelude": 1,
    "model.n_block": 1,
    "model.n_coda": 1,
    "model.n_loop": 3,
    "model.bptt_k": 2,
    "data.batch_size": 8,
}


def tiny_config(**extra):
    c = base_config()
    c.data.dataset = "no_such_dataset"  # no meta.json: vocab from the config
    for path, value in {**TINY, **extra}.items():
        section, field = path.split(".")
        c[section][field] = value
    return c


def test_bench_lower_for_cuda_and_tpu_prints_one_line_per_platform():
    """The CI check: gpt2_owt_looped's programs (at tiny sizes) lower for cuda and tpu, sharded, in bf16."""
    overrides = [f"--config.{k}={v}" for k, v in TINY.items()]
    cmd = [sys.executable, "bench.py", "--config=configs/gpt2_owt_looped.py", *overrides, "--lower_for=cuda,tpu"]
    out = subprocess.run([*cmd, "--roofline=h100"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4, out.stdout
    assert lines[0].startswith("lowered for cuda: train_step ok, eval_step ok, decode_step ok")
    assert lines[2] == "lowered for tpu: train_step ok, eval_step ok, decode_step ok"
    for line in lines[1::2]:
        assert re.fullmatch(
            r"roofline \(h100\): step >= [\d.]+ ms \(compute [\d.]+ ms, memory [\d.]+ ms\), MFU ceiling [\d.]+%", line
        ), line


def test_tpu_train_step_runs_the_pallas_kernel_in_a_shard_map_in_bf16():
    res = lowering.lower_for(tiny_config(), "tpu")
    assert res.ok, res.errors
    assert res.model_config.platform == "tpu" and res.model_config.dtype == "bfloat16"
    text = res.lowered["train_step"].as_text()
    assert "tpu_custom_call" in lowering.custom_calls(res.lowered["train_step"])
    assert "manual_computation" in text  # the shard_map around the kernel
    assert '"fsdp"=2' in text.replace(" ", "") and '"tensor"=2' in text.replace(" ", "")  # the lowering mesh
    assert "bf16" in text
    assert lowering.custom_calls(res.lowered["decode_step"]) == []  # decode windows: masked xla attention


def test_cuda_lowering_says_what_it_did_not_check():
    res = lowering.lower_for(tiny_config(), "cuda")
    assert res.ok, res.errors
    if kernels.cuda_plugin_available():
        # cuDNN attention under a mesh: JAX's custom partitioning, which emits __cudnn$fmha* when partitioned
        calls = lowering.custom_calls(res.lowered["train_step"])
        assert any("cudnn" in c or c == "CustomSPMDPartitioning" for c in calls), calls
        assert res.note == ""
    else:  # cuDNN asks the CUDA plugin for its version while tracing
        assert res.model_config.attention == "xla"
        assert "not checked" in res.line()


def test_a_program_that_does_not_lower_is_reported_and_fails():
    res = lowering.lower_for(tiny_config(**{"data.batch_size": 6}), "tpu")  # 6 rows over data·fsdp = 4 devices
    assert not res.ok
    assert "train_step FAILED (" in res.line() and "eval_step FAILED (" in res.line()


def test_roofline_bound_and_line():
    chip = roofline.CHIPS["h100"]
    r = roofline.roofline("h100", chip, flops=2 * 989e12, bytes_accessed=3.35e12, model_flops=989e12)
    assert (r.compute_s, r.memory_s, r.step_s) == pytest.approx((2.0, 1.0, 2.0))
    assert r.mfu_ceiling == pytest.approx(0.5)
    assert r.line() == "roofline (h100): step >= 2000.00 ms (compute 2000.00 ms, memory 1000.00 ms), MFU ceiling 50.0%"
    # XLA counts a loop body once: FLOPs below the model's are raised to it, bytes scaled alike
    r = roofline.roofline("h100", chip, flops=1e12, bytes_accessed=1e9, model_flops=4e12)
    assert (r.flops, r.bytes_accessed) == (4e12, 4e9)
    assert set(roofline.CHIPS) == {"h100", "h200", "a100", "v4", "v5e", "v5p"}


def test_unfusable_bytes_counts_matmul_operands_results_and_io_once():
    x, w = jnp.ones((4, 8)), jnp.ones((8, 16))
    lowered = jax.jit(lambda x, w: jnp.tanh(x @ w) + 1.0).trace(x, w).lower(lowering_platforms=("tpu",))
    # the dot: 32 + 128 + 64 floats; inputs 32 + 128 and output 64 once more; tanh and + fuse away
    assert roofline.unfusable_bytes(lowered) == 4 * (2 * (32 + 128 + 64))
