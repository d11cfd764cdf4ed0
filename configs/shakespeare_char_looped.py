"""Looped character-level Shakespeare: 2 prelude + 2 recurrent blocks x 4 loops + 2 coda (12 effective layers).

  python train.py --config=configs/shakespeare_char_looped.py
  python train.py --config=configs/shakespeare_char_looped.py:cpu     # nanoLOOP README's CPU-only settings

nanoLOOP's config/train_shakespeare_char_looped.py values: block 256, batch 64, n_embd 384, 6 heads,
dropout 0.2, inject, bptt_k 2, lr 1e-3 -> 1e-4 over 5000 iters, beta2 0.99, warmup 100.
The data is prepared automatically on first use (data/shakespeare_char/prepare.py).

Measured on a 2-core CPU (shared with other jobs, load ~7): the ':cpu' variant reached val loss
2.3105 / 2.0663 / 1.9191 at steps 500 / 1000 / 2000 (eval_iters 20) in 13.8 minutes; PyTorch nanoLOOP on
the same machine type: 2.31 / 2.08 / 1.91. The full-size default needs a GPU and was not measured here.
"""

from nanoloop_jax.config import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.out_dir = "out-shakespeare-char-looped"
    c.data.dataset = "shakespeare_char"
    c.data.batch_size = 64
    c.data.gradient_accumulation_steps = 1
    c.model.block_size = 256  # context of up to 256 previous characters
    c.model.n_prelude, c.model.n_block, c.model.n_coda, c.model.n_loop = 2, 2, 2, 4
    c.model.n_head = 6
    c.model.n_embd = 384
    c.model.dropout = 0.2
    c.model.input_injection = "inject"
    c.model.bptt_k = 2  # backprop through the last 2 of the 4 iterations
    c.opt.learning_rate = 1e-3  # baby networks can afford a higher rate
    c.opt.min_lr = 1e-4
    c.opt.warmup_iters = 100
    c.opt.lr_decay_iters = 5000
    c.opt.beta2 = 0.99  # few tokens per step
    c.train.max_iters = 5000
    c.train.eval_interval = 250  # we overfit: evaluate often
    c.train.eval_iters = 200
    c.train.log_interval = 10
    c.train.always_save_checkpoint = False  # keep the best val checkpoint only
    if variant == "cpu":
        # nanoLOOP README's CPU-only run with the looped architecture
        c.out_dir = "out-shakespeare-char-looped-cpu"
        c.data.batch_size = 12
        c.model.block_size = 64
        c.model.n_embd = 128
        c.model.n_head = 4
        c.model.dropout = 0.0
        c.train.max_iters = 2000
        c.opt.lr_decay_iters = 2000
        c.train.eval_iters = 20
        c.train.log_interval = 1
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of shakespeare_char_looped; allowed: 'cpu'")
    return c
