"""nanoloop-jax: looped transformers in JAX/Flax."""
