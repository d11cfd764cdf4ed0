"""Non-looped baseline for configs/parity_lengthgen.py: the same parameters (NoPE, one block) run once, n_loop 1.

  python train.py --config=configs/parity_lengthgen_baseline.py

Every other field equals the looped config's (tests/test_lengthgen.py checks), so its accuracy.csv sits
next to the looped run's in the same table. At test time n_loop > 1 re-runs the block, never trained.

Measured (2 shared CPU cores, quiet): 3,000 steps in 34 s, evaluation 17 s. Exact match at n_loop 1,
500 problems per length (configs/parity_lengthgen.py's table has the looped run next to it):
  length      5      10     15     20     25     30     35     40     45     50
  n_loop 1  0.970  0.616  0.544  0.484  0.498  0.504  0.492  0.506  0.488  0.492
It fits short inputs only and is at chance from 20 bits on; n_loop > 1 (never trained) is no better.
"""

from configs import parity_lengthgen


def get_config():
    # data, width, optimizer and schedule exactly as the looped model's; n_loop 1 and depth rule 'fixed'
    return parity_lengthgen.one_pass_baseline(parity_lengthgen.get_config(), "out-parity-lengthgen-baseline")
