"""Looped GPT on Shakespeare with GPT-2 BPE tokens: the mission-statement command.

  python train.py --config=configs/shakespeare_looped.py

2 prelude + 2 recurrent x 4 loops + 2 coda, 384 wide, block 256, vocab 50304 (GPT-2 padded).
~300k training tokens, so it overfits fast: eval often, keep the best checkpoint.
Data is prepared automatically (data/shakespeare/prepare.py, tiktoken gpt2).
Not yet measured with nanoloop-jax (no accelerator in the sessions so far).
"""

from nanoloop_jax.config import base_config


def get_config():
    c = base_config()
    c.out_dir = "out-shakespeare-looped"
    c.data.dataset = "shakespeare"
    c.data.batch_size = 32
    c.model.block_size = 256
    c.model.vocab_size = 50304  # GPT-2's 50257 padded to a multiple of 64
    c.model.n_prelude, c.model.n_block, c.model.n_coda, c.model.n_loop = 2, 2, 2, 4
    c.model.n_head = 6
    c.model.n_embd = 384
    c.model.dropout = 0.2
    c.model.bptt_k = 2
    c.opt.learning_rate = 6e-4
    c.opt.min_lr = 6e-5
    c.opt.warmup_iters = 100
    c.opt.lr_decay_iters = 2000
    c.opt.beta2 = 0.99
    c.train.max_iters = 2000
    c.train.eval_interval = 100
    c.train.eval_iters = 20
    c.train.log_interval = 10
    c.train.always_save_checkpoint = False
    return c
