"""Defaults of a length-generalization run's `lengthgen` config section (parity, as configs/parity_lengthgen.py)."""

from __future__ import annotations

from ml_collections import ConfigDict


def defaults() -> ConfigDict:
    """Every field of config.lengthgen, commented; configs/*_lengthgen.py change what their task needs."""
    c = ConfigDict()
    c.task = "parity"  # the problem family: nanoloop_jax/tasks/lengthgen/families/ (parity, addition, phop, ...)
    c.train_lengths = (1, 20)  # min, max difficulty in training (bits; addition: digits; phop: hops; ...)
    c.test_lengths = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50)  # evaluated difficulties (at least one trained)
    c.curriculum_steps = 1200  # the longest training length grows from the shortest over these steps (0: off)
    c.length_weighting = "uniform"  # 'uniform': every drawable length alike | 'linear': p(n) ∝ n (long inputs
    # more often; with the prefix loss a length-n batch also trains every shorter prefix)
    c.num_train = 20_000  # training problems per length (sampled with replacement)
    c.num_test = 500  # test problems per length
    c.data_seed = 0  # every data file is a pure function of this
    c.depth_rule = "linear"  # 'linear': T(n) = depth_scale·n + depth_offset | 'fixed': model.n_loop
    c.depth_scale = 1  # T(n) = depth_scale·n + depth_offset
    c.depth_offset = 1  # parity's '+ 1': the '=' slot after the last bit
    c.eval_extra_depth = 10  # evaluate n_loop up to max T(n) + this (the range of the model's own stop)
    c.eval_batch_size = 250  # test problems per evaluation batch
    return c
