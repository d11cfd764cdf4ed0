"""Multi-operand addition with a looped block (after Saunshi et al. 2025): long addition, one row per iteration.

  python train.py --config=configs/multiadd_looped.py

prepares data/multiadd if missing (nanoloop_jax/tasks/lengthgen/families/multiadd.py: m three-digit operands
stacked as in long addition on paper, rows of stride 6 with the columns aligned, least significant digit
first, then an answer row; every row's cells answer the running sum, the answer row the whole sum), trains on
m = 2..8 operands (one m per batch, T(m) = m + 8 iterations), then writes the exact-match accuracy (every
running sum right) of m = 2..20 at every n_loop and with the confidence stop to out_dir/accuracy.csv and
accuracy.png. The baseline with the same parameters run once: configs/multiadd_baseline.py.

Attention is causal through a window of 7 (model.attn_window): a cell reads the cell above it (6 back), the
column before it (1 back) and the rest of the row above, the same local step at every m.

Measured (session of 2026-12-07), exact match at T(m) / at n_loop 16 = T(8), the trained depth / best n_loop
above 16. From a fresh clone with the command above (not pinned: XLA's two threads), the best-val params
(train.final_eval; step 5,500 / 5,500 / 6,000), 23.4-40.7 min + 43-66 s evaluation, partly beside other jobs:
  operands        6                 8                 10*               12*               16*
  seed 0    .880/.858/.846    .684/.684/.682    .268/.094/.290    .044/.000/.054    .000/.000/.000
  seed 1    .860/.722/.670    .522/.522/.418    .184/.076/.184    .022/.000/.024    .000/.000/.000
  seed 2   1.000/1.000/1.000  .996/.996/1.000   .980/.848/1.000   .954/.088/.988    .686/.000/.766
An earlier session, each seed pinned to one of 2 CPU cores (one XLA thread) while the other ran another job,
the last step's params, 27.5-29.2 min + 42-50 s evaluation:
  seed 0    .978/.988/.994    .854/.854/.922    .650/.434/.720    .290/.052/.318    .018/.000/.036
  seed 1    .968/.972/.974    .882/.882/.914    .790/.488/.826    .612/.004/.654    .046/.000/.078
  seed 2    .994/.996/.996    .988/.988/.986    .958/.772/.966    .882/.042/.922    .552/.000/.682
The thread count is part of the seed: two unpinned seed-0 runs logged the same losses at every eval, the pinned
one another trajectory (val loss 0.0026 at step 5,500 against 0.0169). Unpinned, the last step's params of seed
0 scored .250 at T(8): its val loss rose from 0.017 at step 5,500 to 0.084 at 6,000 (seed 1: 0.025 to 0.052).
The loss sat at 1.0-1.2 nats for the first ~2,000 steps (a run stopped at 3,000 steps had exact match 0.006 at
2 operands), then fell to 0.003. Before (session of 2026-12-07, 3,000 steps each): the answer row alone scored
(no running sums), window 7, non-causal: loss 1.44 at step 2,300; the running sums, non-causal: exact match
0.030 at 2 operands, loss still falling; the layout before this one (operands in a line, then the sum; whole
context, or a window of 6): loss 1.4 nats, exact match 0.002. Results and the baseline: README "Reasoning
tasks".
"""

from configs import phop_looped


def get_config():
    c = phop_looped.get_config()  # the same 1-block RoPE looped transformer, optimizer and schedule
    c.out_dir = "out-multiadd-looped"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.dataset = "multiadd"  # made by train.py from the lengthgen section when data/multiadd is missing
    c.data.data_dir = "data/multiadd"
    c.model.block_size = 128  # 20 operands are 126 tokens
    c.model.attn_window = 7  # offsets 0..-6: the cell above (one row of 6 back) and the column before it, the
    # same local step at every m (causal: rows 1..i are an i-operand problem of their own)
    c.model.n_loop = 16  # T(8): the depth of the hardest training problem (the baseline runs 1)
    c.train.max_iters = 6000  # at 3,000 the loss had not left its plateau (above): ~23 min on 2 cores
    c.opt.lr_decay_iters = 6000  # = max_iters
    # accuracy.csv from the params of the lowest val loss (OUT_DIR/best_val/), not the last step's: one run's val
    # loss rose from 0.017 at step 5,500 to 0.084 at 6,000, and the last step scored .250 at T(8) (below)
    c.train.final_eval = "best_val"
    c.lengthgen.task = "multiadd"
    c.lengthgen.train_lengths = (2, 8)  # operands in training
    c.lengthgen.test_lengths = (2, 4, 6, 8, 10, 12, 16, 20)  # up to 2.5 times the most trained
    c.lengthgen.curriculum_steps = 800  # the most operands trained grows from 2 over these steps
    # T(m) = m + 8: the answer row's last column settles after about m + 5 row-and-carry steps, and 3 spare
    c.lengthgen.depth_scale, c.lengthgen.depth_offset = 1, 8
    return c
