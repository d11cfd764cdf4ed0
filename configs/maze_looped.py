"""Maze path finding with a looped block (after Bansal et al. 2022): dead-end filling, one round per iteration.

  python train.py --config=configs/maze_looped.py

prepares data/maze if missing (nanoloop_jax/tasks/lengthgen/families/maze.py: a perfect s x s maze on a canvas
of row stride 16, each cell's token its open passages, start and goal marked; the answer at every cell is
whether it is on the start-goal path), trains on sides 2..6 (one side per batch, T(s) = 3s - 2 iterations),
then writes the exact-match accuracy (every cell right) of sides 3..13 at every n_loop and with the
confidence stop to out_dir/accuracy.csv and accuracy.png. The baseline with the same parameters run once:
configs/maze_baseline.py (over the whole canvas: one pass through a window would see only the neighbours).

Attention is a non-causal window of 16 positions each way (model.attn_window=17): the canvas keeps a cell's
neighbours at fixed offsets, so every cell runs the same local step at every maze size, and a cell learns about
cells further away only by iterating. Measured (session of 2026-12-07, seeds 0-2, each pinned to one of 2 CPU
cores while the other ran another job, 17.0-19.1 min + 170 s evaluation), exact match at T(s) = 3s - 2:
  side      3      4      6      8*     10*    13*
  seed 0  0.996  0.898  0.428  0.038  0.004  0.000
  seed 1  0.968  0.754  0.154  0.024  0.000  0.000
  seed 2  0.996  0.968  0.778  0.636  0.448  0.272   (best n_loop at side 13: 46 of 47; 0.042 at n_loop 16)
Results and the baseline: README "Reasoning tasks".
"""

from configs import phop_looped


def get_config():
    c = phop_looped.get_config()  # a 1-block RoPE looped transformer, 64 wide, full backprop through T(s)
    c.out_dir = "out-maze-looped"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.dataset = "maze"  # made by train.py from the lengthgen section when data/maze is missing
    c.data.data_dir = "data/maze"
    c.data.batch_size = 16  # 96-token canvases at 16 iterations: half phop's batch keeps a step ~0.5 s
    c.model.block_size = 256  # a 13 x 13 maze is 208 tokens
    c.model.causal = False  # a cell's answer depends on the cells on both sides of it
    c.model.attn_window = 17  # offsets -16..16 hold the four neighbours (+-1, +-16) at every side, as Bansal et al.'s
    # 3x3 convolutions reach theirs; the whole canvas (None): 0.379 / 0.084 exact match at sides 4 / 6, 3 seeds
    c.model.n_loop = 16  # T(6): the depth of the hardest training maze (the baseline runs 1)
    c.lengthgen.task = "maze"
    c.lengthgen.train_lengths = (2, 6)  # maze sides in training (2..8: ~2 s a step on one core)
    c.lengthgen.test_lengths = (3, 4, 6, 8, 10, 13)  # beyond training: 8, 10 and 13
    # Dead-end filling (fill_rounds in maze.py) needs <= 3s - 2 rounds on 90-95% of mazes at every side (5,000
    # mazes per side: 97% at 7, 92% at 13); the answer holds once filled, so the adaptive stop can go further.
    c.lengthgen.depth_scale, c.lengthgen.depth_offset = 3, -2
    c.lengthgen.num_train = 10_000  # mazes per side
    c.train.eval_iters = 5  # batches per split in each evaluation: 128-token rows are slow
    c.train.max_iters = 3000  # 17-19 min on one core with the other busy (README "Reasoning tasks")
    c.opt.lr_decay_iters = 3000  # = max_iters
    c.lengthgen.curriculum_steps = 500  # the largest trained side grows from 2 over these steps
    c.train.final_eval = "last"  # as measured (README "Reasoning tasks"); p-hop's is best_val
    c.lengthgen.eval_batch_size = 100  # 208-token rows at up to 47 iterations
    return c
