"""Non-looped baseline for configs/maze_looped.py: the same parameters (one non-causal RoPE block) run once.

  python train.py --config=configs/maze_baseline.py

Every other field equals the looped config's (tests/test_lengthgen.py checks). Results: README "Reasoning tasks".
"""

from configs import maze_looped, parity_lengthgen


def get_config():
    return parity_lengthgen.one_pass_baseline(maze_looped.get_config(), "out-maze-baseline")
