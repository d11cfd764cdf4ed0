"""Non-looped baseline for addition: configs/addition_looped.py with n_loop=1 (the same parameters, run once).

  python data/addition/prepare.py --max_digits=4 --out_dir=data/addition4
  python train.py --config=configs/addition_baseline.py
  python -m nanoloop_jax.tools.eval_addition --out_dir=out-addition-baseline --n_loops=1,2,4,8,16

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

from configs import addition_looped


def get_config():
    c = addition_looped.get_config()  # data, widths, optimizer and schedule exactly as the looped model's
    c.out_dir = "out-addition-baseline"  # its own directory: train.py resumes from whatever out_dir holds
    c.model.n_loop = 1  # the 3 blocks (and the inject layer, a learned linear map here) each run once
    c.train.eval_n_loops = (2, 4)  # val loss if the middle block is re-run (depths never trained)
    return c
