"""124M-class looped GPT on OpenWebText, sized for one 8-GPU node or a TPU pod slice (~0.5M tokens/step).

  python data/openwebtext/prepare.py
  python train.py --config=configs/gpt2_owt_looped.py                       # 8 GPUs, data parallel
  python train.py --config=configs/gpt2_owt_looped.py --config.mesh.fsdp=-1 --config.mesh.data=1  # FSDP

nanoLOOP's train.py defaults: 2 prelude + 2 recurrent x 4 loops + 2 coda (12 effective layers), 768 wide,
12 heads, block 1024, bptt_k 4, lr 6e-4 -> 6e-5, 600k iters, warmup 2000, beta2 0.95, weight decay 0.1.
Global batch 480 x 1024 tokens = 491,520 tokens per step (nanoGPT's 12 x 40 micro-batches).
Not yet measured with nanoloop-jax (no accelerator in the sessions so far).
"""

from nanoloop_jax.config import base_config


def get_config():
    c = base_config()
    c.out_dir = "out-gpt2-owt-looped"  # its own directory: train.py resumes from whatever out_dir holds
    c.data.batch_size = 480  # global; lower it and raise data.gradient_accumulation_steps if memory is short
    c.model.bptt_k = 4  # nanoLOOP train.py's default: gradient through the last 4 (here all) iterations
    c.model.attention = "auto"  # cuDNN flash attention on GPUs, the Pallas flash kernel on TPUs (kernels.py)
    c.model.remat_policy = "dots_with_no_batch_dims_saveable"  # keep matmul outputs, recompute the rest
    c.train.eval_interval = 1000  # steps between evaluations and checkpoints: ~0.5B tokens apart
    c.train.eval_iters = 100  # batches per split per evaluation: 49M tokens drawn from the ~4M-token val split
    c.train.log_interval = 10  # a training line every 10 steps
    return c
