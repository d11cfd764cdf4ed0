"""p-hop induction with a looped block (Sanford et al. 2024; Saunshi et al. 2025): a hop every two iterations.

  python train.py --config=configs/phop_looped.py

prepares data/phop if missing (nanoloop_jax/tasks/lengthgen/families/phop.py: a random cyclic lookup table of
16 symbols, '^' before each key, a start symbol and p answer slots, slot k = f^k(start); training rows also ask
each value whose key came earlier for its next hop), trains on p = 1..6 hops (one p per batch, T(p) = 2p + 1
iterations), then writes the exact-match accuracy (all p slots right) of p = 1..12 at
every n_loop and with the confidence stop to out_dir/accuracy.csv and accuracy.png. The baseline with the
same parameters run once: configs/phop_baseline.py. Results: README "Reasoning tasks".

Measured (session of 2026-12-07, fresh clone, not pinned, seeds 0-2 side by side beside the test suite, 47.1-47.5
min each), exact match at T(p) at 1 / 6 / 8* / 10* / 12* hops:
  seed 0   1.000 / .992 / .996 / .726 / .562   (n_loop 13 at 8 hops: .000)
  seed 1   1.000 / 1.000 / .992 / .588 / .358  (n_loop 13 at 8 hops: .002)
  seed 2    .064 / .000 / .000 / .000 / .000   (the loss never left ln 16)
The baseline: .060 at 1 hop, 0 from 4 on. Before the '^' marker and the table's own lookups, every run (2,000-
4,000 steps, several variants) stayed at ln 16; with them 1 hop alone reached loss 0.02 by step 3,000.
"""

from configs import parity_lengthgen


def get_config():
    c = parity_lengthgen.get_config()  # a 1-block looped transformer, 64 wide, full backprop through T(p)
    c.out_dir = "out-phop-looped"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.dataset = "phop"  # made by train.py from the lengthgen section when data/phop is missing
    c.data.data_dir = "data/phop"
    c.model.block_size = 64  # 12 hops are 62 tokens
    c.model.pos_encoding = "rope"  # slot k reads slot k-1 and the start at fixed relative offsets
    c.model.attn_window = None  # a hop looks its symbol up anywhere in the table (parity's window is 2)
    c.model.n_loop = 13  # T(6): the depth of the hardest training problem (the baseline runs 1)
    c.model.exit_gate = False  # the confidence stop is the adaptive depth (parity's gate recipe needs 3x steps)
    c.train.halting = "none"
    c.opt.learning_rate = 3e-3  # as addition's: short run
    c.opt.min_lr = 3e-4
    c.opt.lr_decay_iters = 6000  # = max_iters
    c.train.max_iters = 6000  # the loss sits at ln 16 (chance) for ~2,000 steps before the lookup forms
    c.train.final_eval = "best_val"  # accuracy.csv from the params of the lowest val loss (OUT_DIR/best_val/)
    c.lengthgen.task = "phop"
    c.lengthgen.train_lengths = (1, 6)  # hops in training
    c.lengthgen.test_lengths = (1, 2, 4, 6, 8, 10, 12)  # up to twice the most trained
    # T(p) = 2p + 1: slot k = f(slot k - 1) takes two attention steps (read slot k - 1, then look its symbol up
    # among the keys), and iteration 1 pairs each value with its key
    c.lengthgen.depth_scale, c.lengthgen.depth_offset = 2, 1
    c.lengthgen.curriculum_steps = 2000  # the hardest trained p grows from 1 over these steps: 1 hop alone
    # learned the lookup (loss 0.02) by step 3,000 of a 10,000-step run, 6 hops from the start never did
    return c
