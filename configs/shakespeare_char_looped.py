"""Looped character-level Shakespeare: 2 prelude + 2 recurrent blocks x 4 loops + 2 coda (12 effective layers).

  python train.py --config=configs/shakespeare_char_looped.py
  python train.py --config=configs/shakespeare_char_looped.py:cpu     # nanoLOOP README's CPU-only settings
  python train.py --config=configs/shakespeare_char_looped.py:halting # CPU-sized, learned halting (see below)

nanoLOOP's config/train_shakespeare_char_looped.py values: block 256, batch 64, n_embd 384, 6 heads,
dropout 0.2, inject, bptt_k 2, lr 1e-3 -> 1e-4 over 5000 iters, beta2 0.99, warmup 100: the data, widths,
optimizer and schedule of configs/shakespeare_char.py (both variants), which this config extends with the
looped architecture. The data is prepared automatically on first use (data/shakespeare_char/prepare.py).

Measured on a 2-core CPU (shared with other jobs, load ~7): the ':cpu' variant reached val loss
2.3105 / 2.0663 / 1.9191 at steps 500 / 1000 / 2000 (eval_iters 20) in 13.8 minutes; PyTorch nanoLOOP on
the same machine type: 2.31 / 2.08 / 1.91. The full-size default needs a GPU and was not measured here.
"""

from configs import shakespeare_char


def get_config(variant: str = ""):
    shakespeare_char.check_variant(variant, "shakespeare_char_looped", (*shakespeare_char.VARIANTS, "halting"))
    if variant == "halting":
        return halting(get_config("cpu"))
    c = shakespeare_char.get_config(variant)  # data, widths, optimizer and schedule as the plain GPT's
    c.out_dir = "out-shakespeare-char-looped" + ("-cpu" if variant == "cpu" else "")  # not the plain GPT's runs
    # 2 prelude + 2 recurrent x 4 loops + 2 coda: 12 effective layers from 6 unique blocks
    c.model.n_prelude, c.model.n_block, c.model.n_coda, c.model.n_loop = 2, 2, 2, 4
    c.model.input_injection = "inject"  # re-inject the prelude output at every iteration
    c.model.bptt_k = 2  # backprop through the last 2 of the 4 iterations
    return c


def halting(c):
    """':halting': the ':cpu' run with randomized depth and a learned exit gate (train.halting; README's
    "Learned halting" gives the command and the measured frontier)."""
    c.out_dir = "out-shakespeare-char-looped-halting"  # its own runs
    c.model.exit_gate = True  # lambda_i = sigmoid(w . rms(s_i) + b) after every iteration (129 parameters)
    c.model.loop_sampling = "poisson_lognormal"  # a depth per step: the gate sees many depths
    c.model.n_loop_mean = 4.0  # mean depth: the ':cpu' run's n_loop
    c.model.n_loop_max = 12  # cap: every step reads out up to 12 iterations
    c.train.halting = "ouro"  # sum_i p_i L_i - beta H(p): every iteration's readout is trained
    c.train.halting_beta = 0.05  # entropy bonus: keeps the gate from collapsing onto one iteration
    c.train.eval_n_loops = (1, 2, 3, 4, 6, 8)  # val loss per depth at every eval: the fixed-depth frontier
    return c
