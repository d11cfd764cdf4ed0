"""Non-looped baseline for configs/addition_lengthgen.py: the same parameters (RoPE, one block) run once, n_loop 1,
over the whole context (the looped run's window of 4 would blind one pass).

  python train.py --config=configs/addition_lengthgen_baseline.py

Every other field equals the looped config's (tests/test_lengthgen.py checks), so its accuracy.csv sits
next to the looped run's in the same table. At test time n_loop > 1 re-runs the block, never trained.

Measured (session of 2026-12-07, one core while the other ran a training): 2,000 steps in 71 s. Exact match at
n_loop 1, 500 problems per length (100 for 1 digit): 1.000 at 1 digit, 0.910 at 4, 0.834 at 8, 0.744 at 10,
0.480 at 12, 0.140 at 16. With the looped config's window of 4 instead (--config.model.attn_window=4, 62 s) one
pass cannot carry: 0.450 at 1 digit, 0.010 at 8, 0.000 at 12.
"""

from configs import addition_lengthgen, parity_lengthgen


def get_config():
    # data, width, optimizer and schedule exactly as the looped model's; n_loop 1 and depth rule 'fixed'
    return parity_lengthgen.one_pass_baseline(addition_lengthgen.get_config(), "out-addition-lengthgen-baseline")
