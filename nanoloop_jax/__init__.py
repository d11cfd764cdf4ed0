"""nanoloop-jax: looped transformers in JAX/Flax."""

from nanoloop_jax import cpu_defaults  # noqa: F401  (malloc and dispatch settings for XLA:CPU; see there)
