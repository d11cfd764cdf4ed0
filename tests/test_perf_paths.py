"""The performance rewrites compute what the plain formulas compute (values and gradients)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nanoloop_jax import cpu_defaults
from nanoloop_jax.model import ATTN_CHUNK, CausalSelfAttention, ModelConfig, gelu_exact


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


def test_cpu_defaults_applied_on_import():
    assert cpu_defaults.APPLIED["sync_cpu_dispatch"]
    assert not jax.config.read("jax_cpu_enable_async_dispatch")
