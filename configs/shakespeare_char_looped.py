"""Looped character-level Shakespeare: 2 prelude + 2 recurrent blocks x 4 loops + 2 coda (12 effective layers).

  python train.py --config=configs/shakespeare_char_looped.py
  python train.py --config=configs/shakespeare_char_looped.py:cpu     # nanoLOOP README's CPU-only settings

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
    shakespeare_char.check_variant(variant, "shakespeare_char_looped")
    c = shakespeare_char.get_config(variant)  # data, widths, optimizer and schedule as the plain GPT's
    c.out_dir = "out-shakespeare-char-looped" + ("-cpu" if variant == "cpu" else "")  # not the plain GPT's runs
    # 2 prelude + 2 recurrent x 4 loops + 2 coda: 12 effective layers from 6 unique blocks
    c.model.n_prelude, c.model.n_block, c.model.n_coda, c.model.n_loop = 2, 2, 2, 4
    c.model.input_injection = "inject"  # re-inject the prelude output at every iteration
    c.model.bptt_k = 2  # backprop through the last 2 of the 4 iterations
    return c
