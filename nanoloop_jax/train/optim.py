"""The optimizer: AdamW as nanoLOOP configures it, with optax schedules and clipping."""

from __future__ import annotations

import jax
import optax


def lr_schedule(opt_cfg) -> optax.Schedule:
    """nanoGPT's get_lr: linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then flat.

    optax's warmup starts at init_value at step 0 and reaches peak at warmup_iters, so starting from
    lr / (warmup + 1) reproduces nanoGPT's lr · (it + 1) / (warmup + 1) exactly.
    """
    lr = opt_cfg.learning_rate
    if not opt_cfg.decay_lr:
        return optax.constant_schedule(lr)
    warmup = int(opt_cfg.warmup_iters)
    return optax.warmup_cosine_decay_schedule(
        init_value=lr / (warmup + 1),
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=max(int(opt_cfg.lr_decay_iters), warmup + 1),
        end_value=opt_cfg.min_lr,
    )


def decay_mask(params):
    """Weight decay on >= 2-D tensors (matmul weights, embeddings), not on norms and biases (nanoLOOP)."""
    return jax.tree_util.tree_map(lambda p: p.ndim >= 2, params)


def make_optimizer(opt_cfg) -> optax.GradientTransformation:
    """Global-norm clipping (if grad_clip > 0) then AdamW with the warmup-cosine schedule."""
    adamw = optax.adamw(
        learning_rate=lr_schedule(opt_cfg),
        b1=opt_cfg.beta1,
        b2=opt_cfg.beta2,
        eps=1e-8,  # torch.optim.AdamW's default
        weight_decay=opt_cfg.weight_decay,
        mask=decay_mask,
    )
    if opt_cfg.grad_clip and opt_cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), adamw)
    return adamw
