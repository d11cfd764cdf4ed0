"""Per-platform kernels: the choice table, and the Pallas TPU kernel's numerics on CPU (interpret mode)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from nanoloop_jax.model import kernels
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT


def choose(requested, platform, t=256, k=64, dtype="bfloat16", dropout=False, masked=False):
    return kernels.attention_impl(
        requested, platform, seq_len=t, head_dim=k, dtype=dtype, dropout=dropout, masked=masked
    )


def test_auto_attention_per_platform():
    assert choose("auto", "cpu") == "xla"
    assert choose("auto", "cuda") == "cudnn"
    assert choose("auto", "rocm") == "xla"
    assert choose("auto", "tpu") == "pallas"
    # where the fused kernel does not apply, auto falls back silently to the platform's xla path
    assert choose("auto", "cuda", dtype="float32") == "xla"
    assert choose("auto", "cuda", dropout=True) == "xla"
    assert choose("auto", "cuda", k=160) == "xla"
    assert choose("auto", "tpu", t=192) == "xla"
    assert choose("auto", "tpu", dropout=True) == "xla"
    assert choose("auto", "tpu", masked=True) == "xla"  # the KV-cache decoder's windows


def test_explicit_kernel_off_its_platform_warns_and_falls_back():
    with pytest.warns(UserWarning, match="falling back to xla attention"):
        assert choose("pallas", "cpu", t=128 + 1) == "xla"
    assert choose("xla", "cpu") == "xla"
    assert choose("cudnn", "cuda") == "cudnn"


def test_layout_per_platform():
    assert kernels.layout("cpu") == kernels.Layout("cpu", kernels.CPU_MAX_UNROLL, True, row_blocked_attention=True)
    for platform in ("cuda", "rocm", "tpu"):
        assert kernels.layout(platform) == kernels.Layout(platform, 0, False, row_blocked_attention=False)
    assert kernels.layout(None).platform == "cpu"  # the tests run on CPU


def qkv(b=2, t=128, h=2, k=32, dtype=jnp.float32):
    return tuple(jax.random.normal(jax.random.PRNGKey(i), (b, t, h, k)).astype(dtype) for i in range(3))


def loss_and_grads(attn, q, k, v):
    w = jax.random.normal(jax.random.PRNGKey(9), q.shape)
    return jax.value_and_grad(lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32) * w), argnums=(0, 1, 2))(
        q, k, v
    )


def test_pallas_flash_attention_equals_xla_forward_and_gradient():
    """The TPU flash kernel, interpreted on CPU, against the plain (T, T) XLA attention."""
    q, k, v = qkv()
    with pltpu.force_tpu_interpret_mode():
        out = jax.jit(kernels.pallas_causal_attention)(q, k, v)
        loss, grads = jax.jit(lambda *a: loss_and_grads(kernels.pallas_causal_attention, *a))(q, k, v)
    np.testing.assert_allclose(out, kernels.full_attention(q, k, v), atol=2e-5)
    ref_loss, ref_grads = loss_and_grads(kernels.full_attention, q, k, v)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(grads, ref_grads, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-4)


def test_model_lowered_for_tpu_computes_the_cpu_models_logits_and_gradients():
    """platform='tpu' traces the Pallas kernel and plain scans; interpreted on CPU it matches platform='cpu'."""
    cfg = ModelConfig(
        block_size=128, vocab_size=32, n_prelude=0, n_block=1, n_coda=0, n_loop=2, n_head=2, n_embd=32, bptt_k=1
    )
    idx = jax.random.randint(jax.random.PRNGKey(0), (1, 128), 0, 32)
    params = jax.jit(LoopedGPT(cfg).init)(jax.random.PRNGKey(1), idx[:, :1])["params"]

    def loss(cfg, params):
        return jnp.mean(LoopedGPT(cfg).apply({"params": params}, idx) ** 2)

    tpu_cfg = dataclasses.replace(cfg, platform="tpu")
    lowered = jax.jit(loss, static_argnums=0).trace(tpu_cfg, params).lower(lowering_platforms=("tpu",))
    assert "tpu_custom_call" in lowered.as_text()
    with pltpu.force_tpu_interpret_mode():
        tpu = jax.jit(jax.value_and_grad(loss, argnums=1), static_argnums=0)(tpu_cfg, params)
    cpu = jax.value_and_grad(loss, argnums=1)(dataclasses.replace(cfg, platform="cpu"), params)
    np.testing.assert_allclose(tpu[0], cpu[0], rtol=1e-5)
    for g, r in zip(jax.tree_util.tree_leaves(tpu[1]), jax.tree_util.tree_leaves(cpu[1]), strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-4)
