"""Vanilla (non-looped) 6-layer character-level Shakespeare baseline: nanoLOOP's config/train_shakespeare_char.py.

  python train.py --config=configs/shakespeare_char.py
  python train.py --config=configs/shakespeare_char.py:cpu   # nanoLOOP README's CPU-only command (4 layers)

A plain GPT in the looped code path: n_prelude=0, n_block=6, n_coda=0, n_loop=1, passthrough.
configs/shakespeare_char_looped.py extends this config (both variants) with the looped architecture.
Not yet measured with nanoloop-jax (no accelerator in the sessions so far).
"""

from nanoloop_jax.config import base_config

VARIANTS = ("cpu",)  # get_config(variant): '' is the full-size run


def check_variant(variant: str, config: str, variants: tuple[str, ...] = VARIANTS) -> None:
    """The one error for a variant that `config` (this file or one extending it) does not define."""
    if variant and variant not in variants:
        allowed = ", ".join(repr(v) for v in variants)
        raise ValueError(f"unknown variant {variant!r} of {config}; allowed: {allowed}")


def get_config(variant: str = ""):
    check_variant(variant, "shakespeare_char")
    c = base_config()
    c.out_dir = "out-shakespeare-char"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.dataset = "shakespeare_char"  # 65 characters, ~1M training tokens; prepared on first use
    c.data.batch_size = 64  # sequences per step: 64 x 256 = 16k characters
    c.model.block_size = 256  # context of up to 256 previous characters
    c.model.n_prelude, c.model.n_block, c.model.n_coda, c.model.n_loop = 0, 6, 0, 1  # baby GPT: 6 layers, once
    c.model.input_injection = "passthrough"  # one pass, nothing to inject
    c.model.n_head = 6  # 64-wide heads
    c.model.n_embd = 384  # baby GPT width
    c.model.dropout = 0.2  # ~1M training characters: the model overfits without it
    c.opt.learning_rate = 1e-3  # baby networks can afford a higher rate
    c.opt.min_lr = 1e-4  # learning_rate / 10, as usual
    c.opt.warmup_iters = 100  # linear warmup steps: a short run needs little
    c.opt.lr_decay_iters = 5000  # = max_iters
    c.opt.beta2 = 0.99  # a bit bigger: few tokens per step
    c.train.max_iters = 5000  # optimizer steps
    c.train.eval_interval = 250  # we overfit: evaluate often
    c.train.eval_iters = 200  # batches per split per evaluation
    c.train.log_interval = 10  # a training line every 10 steps, not every step
    c.train.always_save_checkpoint = False  # we overfit: keep only the best-val checkpoint
    if variant == "cpu":
        # nanoLOOP README's CPU-only command (its flags, mapped one to one):
        # python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
        #   --log_interval=1 --block_size=64 --batch_size=12 --n_block=4 --n_head=4 --n_embd=128
        #   --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
        c.out_dir = "out-shakespeare-char-cpu"  # not the full-size run's checkpoints
        c.data.batch_size = 12  # 12 x 64 = 768 characters per step: sized for a CPU
        c.model.block_size = 64  # context of 64 characters
        c.model.n_block = 4  # 4 layers instead of 6
        c.model.n_head = 4  # 32-wide heads
        c.model.n_embd = 128  # a third of the width
        c.model.dropout = 0.0  # 2,000 x 768 characters = ~1.5 passes over the data: little to overfit
        c.opt.lr_decay_iters = 2000  # = max_iters
        c.train.max_iters = 2000  # optimizer steps (minutes on a CPU)
        c.train.eval_iters = 20  # batches per split per evaluation: cheap evaluations
        c.train.log_interval = 1  # a training line every step
    return c
