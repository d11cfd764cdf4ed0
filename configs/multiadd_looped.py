"""Multi-operand addition with a looped block (after Saunshi et al. 2025): one operand per iteration.

  python train.py --config=configs/multiadd_looped.py

prepares data/multiadd if missing (nanoloop_jax/tasks/lengthgen/families/multiadd.py: m three-digit operands,
least significant digit first, then 5 answer slots for the sum), trains on m = 2..8 operands (one m per
batch, T(m) = m + 2 iterations), then writes the exact-match accuracy (all 5 sum digits right) of m = 2..16
at every n_loop and with the confidence stop to out_dir/accuracy.csv and accuracy.png. The baseline with the
same parameters run once: configs/multiadd_baseline.py. Results: README "Reasoning tasks".
"""

from configs import phop_looped


def get_config():
    c = phop_looped.get_config()  # the same 1-block RoPE looped transformer, optimizer and schedule
    c.out_dir = "out-multiadd-looped"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.dataset = "multiadd"  # made by train.py from the lengthgen section when data/multiadd is missing
    c.data.data_dir = "data/multiadd"
    c.model.block_size = 128  # 16 operands are 70 tokens
    c.model.n_loop = 10  # T(8): the depth of the hardest training problem (the baseline runs 1)
    c.train.max_iters = 3000  # the measured run (9.8 min on one core)
    c.opt.lr_decay_iters = 3000  # = max_iters
    c.lengthgen.task = "multiadd"
    c.lengthgen.train_lengths = (2, 8)  # operands in training
    c.lengthgen.test_lengths = (2, 4, 6, 8, 10, 12, 14, 16)  # up to twice the most trained
    c.lengthgen.curriculum_steps = 800  # the most operands trained grows from 2 over these steps
    # T(m) = m + 2: an operand per iteration, then the carries into 5 digits
    c.lengthgen.depth_scale, c.lengthgen.depth_offset = 1, 2
    return c
