"""Non-looped baseline for configs/multiadd_looped.py: the same parameters (one RoPE block) run once, n_loop 1.

  python train.py --config=configs/multiadd_baseline.py

Every other field equals the looped config's (tests/test_lengthgen.py checks). Results: README "Reasoning tasks".
"""

from configs import multiadd_looped, parity_lengthgen


def get_config():
    return parity_lengthgen.one_pass_baseline(multiadd_looped.get_config(), "out-multiadd-baseline")
