"""Non-looped baseline for configs/parity_lengthgen.py: the same parameters (RoPE, one block) run once, n_loop 1,
over the whole context (the looped run's window of 2 would blind one pass).

  python train.py --config=configs/parity_lengthgen_baseline.py

Every other field equals the looped config's (tests/test_lengthgen.py checks), so its accuracy.csv sits
next to the looped run's in the same table. At test time n_loop > 1 re-runs the block, never trained.

Measured (session of 2026-12-07, one core while the other ran a training): 3,000 steps in 69 s. Exact match at
n_loop 1, 500 problems per length:
  length      5      10     15     20     25     30     35     40     45     50
  n_loop 1  1.000  0.938  0.670  0.446  0.496  0.494  0.512  0.494  0.512  0.508
It fits short inputs only and is at chance from 20 bits on; n_loop > 1 (never trained) is no better. With
the looped config's window of 2 instead (--config.model.attn_window=2, 65 s): chance at every length.
"""

from configs import parity_lengthgen


def get_config():
    # data, width, optimizer and schedule exactly as the looped model's; n_loop 1 and depth rule 'fixed'
    return parity_lengthgen.one_pass_baseline(parity_lengthgen.get_config(), "out-parity-lengthgen-baseline")
