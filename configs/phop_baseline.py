"""Non-looped baseline for configs/phop_looped.py: the same parameters (one RoPE block) run once, n_loop 1.

  python train.py --config=configs/phop_baseline.py

Every other field equals the looped config's (tests/test_lengthgen.py checks). Results: README "Reasoning tasks".
"""

from configs import parity_lengthgen, phop_looped


def get_config():
    return parity_lengthgen.one_pass_baseline(phop_looped.get_config(), "out-phop-baseline")
