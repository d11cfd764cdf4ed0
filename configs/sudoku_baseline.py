"""Non-looped baseline for configs/sudoku_looped.py: the same parameters (one non-causal block) run once.

  python train.py --config=configs/sudoku_baseline.py

Every other field equals the looped config's (tests/test_lengthgen.py checks). Results: README "Reasoning tasks".
"""

from configs import parity_lengthgen, sudoku_looped


def get_config():
    return parity_lengthgen.one_pass_baseline(sudoku_looped.get_config(), "out-sudoku-baseline")
