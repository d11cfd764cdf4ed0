"""Non-looped baseline for addition: configs/addition_looped.py with n_loop=1 (the same parameters, run once).

  python data/addition/prepare.py --max_digits=4 --out_dir=data/addition4
  python train.py --config=configs/addition_baseline.py
  python -m nanoloop_jax.eval_addition --out_dir=out-addition-baseline --n_loops=1,2,4,8,16

Same parameter count, not the same depth: the looped model's 3 unique blocks (prelude, recurrent,
coda) and its inject layer each run once, i.e. a 3-layer GPT, while the looped model runs 6 layers
on the same weights. Every other field equals the looped config's (tests/test_addition.py checks).
At test time a larger n_loop re-runs the middle block, which this model was never trained to do.

Measured (2 shared CPU cores): 10,000 steps in 8 min, val loss 0.258; val loss at n_loop 2 / 4: 5.6 / 9.1.
Exact-match accuracy, greedy, 1,000 problems per length (100 for 1 digit):
  digits    n=1*    n=2    n=4    n=8   n=16
  1        1.000  0.350  0.100  0.100  0.100
  2        1.000  0.250  0.046  0.036  0.036
  3        1.000  0.018  0.004  0.004  0.004
  4        0.243  0.001  0.000  0.000  0.000
  5..8     0.000 everywhere
The 4-digit misses are the units digit of 4+4-digit sums (27% right with the true prefix fed in; their
other digits >= 99.7%, the units digit of every other length pair >= 97%): the looped model learned it.
"""

from nanoloop_jax.config import base_config


def get_config():
    c = base_config()
    c.out_dir = "out-addition-baseline"
    c.data.dataset = "addition"  # the synthetic addition task (data/addition/prepare.py)
    c.data.data_dir = "data/addition4"  # 1..4-digit operands: prepare.py --max_digits=4 --out_dir=data/addition4
    c.data.batch_size = 32  # windows per step (32 x 64 tokens, ~37% of them answer targets)
    c.data.gradient_accumulation_steps = 1  # no accumulation: small model, small batch
    c.model.block_size = 64  # fits the longest test problem: 8 digits (29 tokens); 16 digits with N=8 data (53)
    c.model.n_prelude, c.model.n_block, c.model.n_coda, c.model.n_loop = 1, 1, 1, 1  # 3 blocks, each run once
    c.model.n_head = 4  # 16-wide heads
    c.model.n_embd = 64  # width (161k parameters in all, as the looped model)
    c.model.dropout = 0.0  # 20M tokens drawn from a 5.6M-token split (~4 passes): val loss tracks train
    c.model.input_injection = "inject"  # kept (a learned linear map at n_loop=1) so parameter counts match
    c.model.bptt_k = None  # backprop through everything
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
    c.train.eval_n_loops = "2,4"  # val loss if the middle block is re-run (depths never trained)
    return c
