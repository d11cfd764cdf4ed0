"""Non-looped baseline for configs/addition_lengthgen.py: the same parameters (RoPE, one block) run once, n_loop 1.

  python train.py --config=configs/addition_lengthgen_baseline.py

Every other field equals the looped config's (tests/test_lengthgen.py checks), so its accuracy.csv sits
next to the looped run's in the same table. At test time n_loop > 1 re-runs the block, never trained.

Measured (2 busy shared CPU cores): 2,000 steps in 2 min (125 s). Exact match at n_loop 1, 500 problems
per length: 1.000 at 1 digit, 0.816 at 8, 0.694 at 10, 0.634 at 12, 0.036 at 16 (all lengths: the
table in configs/addition_lengthgen.py). With pos_encoding='none', model.inject_init='identity': 1.000 at 1 digit, 0.164
at 2, 0.000 from 5 on.
"""

from configs import addition_lengthgen, parity_lengthgen


def get_config():
    # data, width, optimizer and schedule exactly as the looped model's; n_loop 1 and depth rule 'fixed'
    return parity_lengthgen.one_pass_baseline(addition_lengthgen.get_config(), "out-addition-lengthgen-baseline")
