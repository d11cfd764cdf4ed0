"""Decimal addition with loops that generalize to longer operands: configs/parity_lengthgen.py's recipe on addition.

  python train.py --config=configs/addition_lengthgen.py

prepares data/addition_lengthgen if missing, trains on sums of two n-digit operands, n = 1..8 (one n per
batch, T(n) = n + 1 iterations, loss only on the n + 1 answer digits after the last one), then writes
the accuracy of n = 1..16 at every n_loop and with the confidence stop to out_dir/accuracy.csv. Digits
are least significant first and interleaved with the answer slots (nanoloop_jax/lengthgen_data.py), so
the carry moves one slot per iteration at every length.

Measured: (filled in from the run)
"""

import importlib.util
import pathlib


def _parity_config():
    """configs/parity_lengthgen.py's config, loaded by path (config files are not an importable package)."""
    spec = importlib.util.spec_from_file_location(
        "parity_lengthgen", pathlib.Path(__file__).with_name("parity_lengthgen.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    c = _parity_config()  # model, optimizer and depth rule as parity's
    c.out_dir = "out-addition-lengthgen"
    c.data.dataset = "addition_lengthgen"  # python data/addition/prepare.py --lengthgen
    c.data.data_dir = "data/addition_lengthgen"  # not data/addition: that holds the concatenated-problems layout
    c.model.n_loop = 9  # T(8): the depth of the longest training input (used by the fixed-depth baseline)
    c.lengthgen.task = "addition"  # a+b, both operands n digits
    c.lengthgen.train_lengths = (1, 8)  # operand digits in training
    c.lengthgen.test_lengths = tuple(range(1, 17))  # every length up to twice the longest trained
    return c
