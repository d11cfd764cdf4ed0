"""nanoloop-jax: looped transformers in JAX/Flax.

Importing the package sets nothing process-wide; the entry points apply nanoloop_jax.cpu_defaults on CPU.
"""
