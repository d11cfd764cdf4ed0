"""Looped GPT on Shakespeare with GPT-2 BPE tokens: the mission-statement command.

  python train.py --config=configs/shakespeare_looped.py

configs/shakespeare_char_looped.py on BPE tokens: 2 prelude + 2 recurrent x 4 loops + 2 coda, 384 wide,
block 256, bptt_k 2, vocab 50304 (GPT-2 padded; base_config's default), with a shorter schedule.
~300k training tokens, so it overfits fast: eval often, keep the best checkpoint.
Data is prepared automatically (data/shakespeare/prepare.py, tiktoken gpt2).
Not yet measured with nanoloop-jax (no accelerator in the sessions so far).
"""

from configs import shakespeare_char_looped


def get_config():
    c = shakespeare_char_looped.get_config()  # the looped shape, widths, dropout and bptt_k of the char model
    c.out_dir = "out-shakespeare-looped"  # not the char model's runs
    c.data.dataset = "shakespeare"  # GPT-2 BPE: 301,966 training tokens, 36,059 val
    c.data.batch_size = 32  # 32 x 256 = 8k tokens per step: ~37 steps per pass over the training tokens
    c.opt.learning_rate = 6e-4  # nanoGPT's GPT-2 BPE rate (base_config's default), not the char model's 1e-3
    c.opt.min_lr = 6e-5  # learning_rate / 10
    c.opt.lr_decay_iters = 2000  # = max_iters
    c.train.max_iters = 2000  # ~54 passes over the 302k training tokens (it overfits; the best val is kept)
    c.train.eval_interval = 100  # overfits fast: evaluate (and keep the best) often
    c.train.eval_iters = 20  # 20 x 8k tokens: several passes over the 36k-token val split
    return c
