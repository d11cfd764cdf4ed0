"""The performance rewrites compute what the plain formulas compute (values and gradients)."""

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanoloop_jax import cpu_defaults
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.kernels import ATTN_CHUNK
from nanoloop_jax.model.layers import CausalSelfAttention, gelu_exact


def test_gelu_exact_equals_jax_gelu_and_its_gradient():
    x = jnp.linspace(-8.0, 8.0, 4001)
    np.testing.assert_allclose(gelu_exact(x), jax.nn.gelu(x, approximate=False), atol=1e-6)
    grad = jax.vmap(jax.grad(gelu_exact))(x)
    ref = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x)
    np.testing.assert_allclose(grad, ref, atol=1e-6)


def reference_attention(q, k, v):
    """softmax(q kᵀ / √K + causal mask) v over the whole (T, T) matrix."""
    t = q.shape[1]
    att = jnp.einsum("bthk,bshk->bhts", q, k) / math.sqrt(q.shape[-1])
    att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, -jnp.inf)
    return jnp.einsum("bhts,bshk->bthk", jax.nn.softmax(att, axis=-1), v)


@pytest.mark.parametrize("t", [ATTN_CHUNK, 2 * ATTN_CHUNK + ATTN_CHUNK // 2])
def test_blocked_causal_attention_equals_full_attention(t):
    """T >= 2 blocks takes the row-blocked path (here with a short last block); T < 2 blocks the plain one."""
    attn = CausalSelfAttention(ModelConfig(n_embd=16, n_head=2, block_size=t))
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, t, 2, 8)) for i in range(3))

    def blocked(q, k, v):
        return attn.apply({}, q, k, v, method="attend")

    np.testing.assert_allclose(blocked(q, k, v), reference_attention(q, k, v), atol=1e-5)
    w = jax.random.normal(jax.random.PRNGKey(3), (2, t, 2, 8))
    grads = jax.grad(lambda *a: jnp.sum(blocked(*a) * w), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(lambda *a: jnp.sum(reference_attention(*a) * w), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref, strict=True):
        np.testing.assert_allclose(g, r, atol=1e-5)


def test_cpu_defaults_applied_by_conftest_as_by_the_entry_points():
    assert cpu_defaults.APPLIED["sync_cpu_dispatch"]
    assert not jax.config.read("jax_cpu_enable_async_dispatch")


def test_import_changes_nothing_and_apply_if_cpu_applies_on_cpu():
    code = (
        "import jax, nanoloop_jax.model.looped, nanoloop_jax.cpu_defaults as c; "
        "print(jax.config.read('jax_cpu_enable_async_dispatch'), c.APPLIED); "
        "print(c.will_run_on_cpu(), c.apply_if_cpu())"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    first, second = out.splitlines()[:2]
    assert first == "True None"  # async dispatch still JAX's default after the import
    assert second.startswith("True {") and "'sync_cpu_dispatch': True" in second
