"""Looped model for multi-digit addition: 1 prelude + 1 recurrent block x 4 loops + 1 coda (6 effective layers).

  python data/addition/prepare.py --max_digits=4 --out_dir=data/addition4
  python train.py --config=configs/addition_looped.py
  python -m nanoloop_jax.tools.eval_addition --out_dir=out-addition-looped --n_loops=1,2,4,8,16

Trains on sums of 1..4-digit operands (answers reversed, loss on answer tokens only), tests on 1..8
digits. Compare configs/addition_baseline.py: the same 161k parameters, run once. Why 4 digits, not
prepare.py's default 8: at 8 digits no setting we tried (64/128 wide, lr 1e-3..5e-3, up to 3000 steps
of 32 x 64 tokens) got the units digit off chance, while 1..4 digits break through after ~1,500 steps.

Measured (2 shared CPU cores): 10,000 steps in 20 min, val loss 0.230 (0.005 on answers whose question
is in the window; the rest is windows that start inside a question); at n_loop 1 / 8: 5.17 / 0.28.
Exact-match accuracy, greedy, 1,000 problems per length (100 for 1 digit):
  digits     n=1    n=2   n=4*    n=8   n=16
  1        0.440  1.000  1.000  1.000  1.000
  2        0.008  0.832  0.999  0.999  0.999
  3        0.093  0.454  0.997  0.986  0.986
  4        0.004  0.207  0.995  0.989  0.987
  5..8     0.000 everywhere (no length generalization with learned absolute positions)
"""

from nanoloop_jax.config import base_config


def get_config():
    c = base_config()
    c.out_dir = "out-addition-looped"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.dataset = "addition"  # the synthetic addition task (data/addition/prepare.py)
    c.data.data_dir = "data/addition4"  # 1..4-digit operands: prepare.py --max_digits=4 --out_dir=data/addition4
    c.data.batch_size = 32  # windows per step (32 x 64 tokens, ~37% of them answer targets)
    c.data.gradient_accumulation_steps = 1  # no accumulation: small model, small batch
    c.model.block_size = 64  # fits the longest test problem: 8 digits (29 tokens); 16 digits with N=8 data (53)
    c.model.n_prelude, c.model.n_block, c.model.n_coda, c.model.n_loop = 1, 1, 1, 4  # 3 unique blocks
    c.model.n_head = 4  # 16-wide heads
    c.model.n_embd = 64  # width (161k parameters in all)
    c.model.dropout = 0.0  # 20M tokens drawn from a 5.6M-token split (~4 passes): val loss tracks train
    c.model.input_injection = "inject"  # re-inject the prelude output at every iteration
    c.model.bptt_k = None  # backprop through all 4 iterations (cheap at this size)
    c.opt.learning_rate = 5e-3  # high: at 1e-3 the units digit was still at chance after 1,500 steps
    c.opt.min_lr = 5e-4  # end of the cosine decay
    c.opt.warmup_iters = 100  # linear warmup steps
    c.opt.lr_decay_iters = 10000  # = max_iters
    c.opt.beta2 = 0.99  # few tokens per step
    c.opt.weight_decay = 0.1  # AdamW weight decay on matrices
    c.train.max_iters = 10000  # optimizer steps
    c.train.eval_interval = 500  # evaluate and checkpoint every this many steps
    c.train.eval_iters = 20  # batches per split per evaluation
    c.train.log_interval = 50  # print a training line every this many steps
    c.train.always_save_checkpoint = True  # keep the last checkpoint: val loss keeps falling here
    c.train.keep_checkpoints = 1  # only the newest checkpoint on disk
    c.train.eval_n_loops = (1, 8)  # also log val loss with fewer and more iterations than trained
    return c
