"""Decimal addition with loops that generalize to longer operands: configs/parity_lengthgen.py's model on addition.

  python train.py --config=configs/addition_lengthgen.py

prepares data/addition_lengthgen if missing, trains on sums of two n-digit operands, n = 1..8 (one n per
batch, T(n) = n + 1 iterations, loss only on the n + 1 answer digits after the last one), then writes
the accuracy of n = 1..16 at every n_loop and with the confidence stop to out_dir/accuracy.csv. Digits
are least significant first and interleaved with the answer slots (nanoloop_jax/tasks/lengthgen/data.py), so
an answer slot needs the two digits just before it and the slot three positions back: sliding-window
attention of 4 (model.attn_window) covers exactly that, and every slot computes the same function at every
length.

Measured (session of 2026-12-07): 2,000 steps, each seed pinned to one of 2 CPU cores while the other ran
another job (3.4-4.3 min, evaluation 40 s); exact match on 500 problems per length (100 for 1 digit), mean
[range] over seeds 0, 1, 2:
  digits   n_loop = T(n)          confidence stop        n_loop 9 = T(8)
     1     1.000 [1.000-1.000]    0.913 [0.810-1.000]    1.000 [1.000-1.000]
     8     0.996 [0.988-1.000]    0.993 [0.988-1.000]    0.996 [0.988-1.000]
    10*    0.963 [0.888-1.000]    0.998 [0.996-1.000]    0.996 [0.988-1.000]
    12*    0.679 [0.244-0.916]    0.997 [0.992-1.000]    0.997 [0.990-1.000]
    16*    0.074 [0.000-0.168]    0.997 [0.994-1.000]    0.995 [0.984-1.000]
(* longer than any training operand.) The issue's target, >= 0.90 at 12 digits, is met by the model's own
(confidence) stop on every seed. It is not met at T(n): every fixed n_loop from 5 to 9 solves every length
(>= 0.98), so the windowed loop learned a fixed-depth local circuit (5 iterations see 5 digit columns back,
enough for random operands' carries), and iterating past the trained depth 9 drifts off the answer (n_loop 20:
0.00-0.06 at 12 digits). The confidence stop reads the settled answer (5.3-7.8 iterations on average). The one-pass
baseline of the same parameters over the whole context (configs/addition_lengthgen_baseline.py, 71 s): 0.834
at 8 digits, 0.480 at 12, 0.140 at 16.

Parity's gated prefix recipe on this model (exit_gate, halting ouro/stage 2/prefix/stable/bce_trunk,
beta 0.1, extra 3; seed 0, 5.6 min): gate stop 0.940 at 12 digits, 0.866 at 16, T(n) 0.892 and 0.578; below
the confidence stop, so this config keeps no gate.

Before the window (the whole causal context, RoPE; configs of their commits; mean [range] over seeds 0-2,
3.1-3.5 min each): T(n) 0.937 / 0.750 / 0.167 and confidence stop 0.894 / 0.783 / 0.355 at 8 / 10 / 12 digits;
every length was solved from n_loop ~3 to ~11 and failed from 13 digits on (0.088 at 13 in the best run),
the one-pass baseline of that model 0.634 at 12. NoPE (the paper's; 3,000 steps): 0.450 at 8 digits, 0.006 at
12; nanoLOOP's inject init [I; 0]: 0.184 at T(12).
"""

from configs import parity_lengthgen


def get_config():
    c = parity_lengthgen.get_config()  # model, optimizer and depth rule as parity's
    c.out_dir = "out-addition-lengthgen"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.dataset = "addition_lengthgen"  # python data/addition/prepare.py --lengthgen
    c.data.data_dir = "data/addition_lengthgen"  # not data/addition: that holds the concatenated-problems layout
    c.model.n_loop = 9  # T(8): the depth of the longest training input (used by the fixed-depth baseline)
    c.model.pos_encoding = "rope"  # the digits an answer slot needs sit at fixed relative offsets (-1, -2, -3)
    c.model.attn_window = 4  # offsets 0..-3: the slot, its two digits, the previous slot (parity's is 2)
    c.opt.learning_rate = 3e-3  # at 1e-3 the 1-digit sums were still at 1.2 nats after 650 steps
    c.opt.min_lr = 3e-4  # end of the cosine
    c.opt.lr_decay_iters = 2000  # = max_iters
    c.train.max_iters = 2000  # optimizer steps: the measured run (parity's 3,000 came after it)
    c.lengthgen.task = "addition"  # a+b, both operands n digits
    c.lengthgen.train_lengths = (1, 8)  # operand digits in training
    c.lengthgen.test_lengths = tuple(range(1, 17))  # every length up to twice the longest trained
    # no gate: parity's gated prefix recipe here stops at 0.940 at 12 digits, the confidence stop at 0.997 (docstring)
    c.model.exit_gate = False
    c.train.halting = "none"
    return c
