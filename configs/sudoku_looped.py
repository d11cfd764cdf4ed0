"""Sudoku with a looped block (after TRM/HRM): parallel deduction, one round every two iterations.

  python train.py --config=configs/sudoku_looped.py

prepares data/sudoku if missing (nanoloop_jax/tasks/lengthgen/families/sudoku.py: puzzles with one solution,
rated by the rounds of parallel naked/hidden-singles deduction that solve them), trains on ratings 1..4 (one
rating per batch, T(d) = 2d + 1 iterations), then writes the exact-match accuracy (the whole grid right) of
ratings 1..8 at every n_loop and with the confidence stop to out_dir/accuracy.csv and accuracy.png. The
baseline with the same parameters run once: configs/sudoku_baseline.py. Results: README "Reasoning tasks".
"""

from configs import phop_looped


def get_config():
    c = phop_looped.get_config()  # a 1-block looped transformer, 64 wide, full backprop through T(d)
    c.out_dir = "out-sudoku-looped"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.dataset = "sudoku"  # made by train.py from the lengthgen section when data/sudoku is missing
    c.data.data_dir = "data/sudoku"
    c.model.block_size = 81  # every puzzle is the 81 cells
    c.model.pos_encoding = "learned"  # a cell's row, column and box peers are fixed cells: a position table
    c.model.causal = False  # a cell's answer depends on cells on both sides of it
    c.model.n_loop = 9  # T(4): the depth of the hardest training rating (the baseline runs 1)
    c.lengthgen.task = "sudoku"
    c.lengthgen.train_lengths = (1, 4)  # ratings in training
    c.lengthgen.test_lengths = (1, 2, 3, 4, 5, 6, 8)  # beyond training: 5, 6 and 8 rounds
    # T(d) = 2d + 1: a round reads the peers' digits (candidates), then hidden singles need the peers' candidates
    c.lengthgen.depth_scale, c.lengthgen.depth_offset = 2, 1
    c.lengthgen.num_train = 5_000  # puzzles per rating (generation: ~10 s per rating)
    c.lengthgen.curriculum_steps = 500  # the hardest trained rating grows from 1 over these steps
    c.train.max_iters, c.opt.lr_decay_iters = 2000, 2000  # sized for ~15 min on one core (p-hop's need 6,000)
    c.train.final_eval = "last"  # as measured (README "Reasoning tasks")
    return c
