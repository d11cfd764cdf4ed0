"""Randomized recurrence depth for training (Geiping et al. 2025, "Scaling up Test-Time Compute with Latent
Reasoning"): the depth of step t is r = k + n with k = bptt_k gradient iterations and n gradient-free ones,
n ~ Poisson(exp(tau)), tau ~ Normal(log(mean - k) - sigma^2 / 2, sigma), so E[r] = n_loop_mean; r <= n_loop_max.
"""

from __future__ import annotations

import numpy as np

from nanoloop_jax.model.config import ModelConfig

SIGMA = 0.5  # the paper's log-normal spread
_STREAM = 0xD3E7  # keeps depth draws independent of the batch streams that share the seed


def sample_depth(config: ModelConfig, seed: int, step: int) -> int:
    """The recurrence depth of training step `step`: a pure function of (seed, step), the same on every host."""
    if config.loop_sampling == "fixed":
        return config.n_loop
    k = config.bptt_k
    mean_extra = config.n_loop_mean - k
    if mean_extra <= 0:
        return k
    rng = np.random.default_rng([seed, _STREAM, step])
    tau = rng.normal(np.log(mean_extra) - SIGMA**2 / 2, SIGMA)
    return int(min(k + rng.poisson(np.exp(tau)), config.n_loop_max))
