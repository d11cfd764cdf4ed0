"""Vanilla (non-looped) 6-layer character-level Shakespeare baseline: nanoLOOP's config/train_shakespeare_char.py.

  python train.py --config=configs/shakespeare_char.py
  python train.py --config=configs/shakespeare_char.py:cpu   # nanoLOOP README's CPU-only command (4 layers)

A plain GPT in the looped code path: n_prelude=0, n_block=6, n_coda=0, n_loop=1, passthrough.
Not yet measured with nanoloop-jax (no accelerator in the sessions so far).
"""

from nanoloop_jax.config import base_config


def get_config(variant: str = ""):
    c = base_config()
    c.out_dir = "out-shakespeare-char"
    c.data.dataset = "shakespeare_char"
    c.data.batch_size = 64
    c.model.block_size = 256  # context of up to 256 previous characters
    c.model.n_prelude, c.model.n_block, c.model.n_coda, c.model.n_loop = 0, 6, 0, 1
    c.model.input_injection = "passthrough"  # one pass, nothing to inject
    c.model.n_head = 6
    c.model.n_embd = 384
    c.model.dropout = 0.2
    c.opt.learning_rate = 1e-3
    c.opt.min_lr = 1e-4
    c.opt.warmup_iters = 100
    c.opt.lr_decay_iters = 5000
    c.opt.beta2 = 0.99
    c.train.max_iters = 5000
    c.train.eval_interval = 250
    c.train.eval_iters = 200
    c.train.log_interval = 10
    c.train.always_save_checkpoint = False
    if variant == "cpu":
        # python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        #   --log_interval=1 --block_size=64 --batch_size=12 --n_block=4 --n_head=4 --n_embd=128
        #   --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
        c.out_dir = "out-shakespeare-char-cpu"
        c.data.batch_size = 12
        c.model.block_size = 64
        c.model.n_block = 4
        c.model.n_head = 4
        c.model.n_embd = 128
        c.model.dropout = 0.0
        c.train.max_iters = 2000
        c.opt.lr_decay_iters = 2000
        c.train.eval_iters = 20
        c.train.log_interval = 1
    elif variant:
        raise ValueError(f"unknown variant {variant!r} of shakespeare_char; allowed: 'cpu'")
    return c
