"""Loop-aware model FLOPs (nanoLOOP's estimate_mfu convention) and device peak FLOP/s for MFU."""

from __future__ import annotations

import jax

from nanoloop_jax.model.config import ModelConfig

# Dense bf16 peak FLOP/s per device (no sparsity). Matched against jax's device_kind, lower-cased.
PEAK_FLOPS = (
    ("h200", 989e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("tpu v6", 918e12),  # v6e / Trillium
    ("tpu v5p", 459e12),
    ("tpu v5 lite", 197e12),  # v5e reports "TPU v5 lite"
    ("tpu v5e", 197e12),
    ("tpu v4", 275e12),
)


def block_params(config: ModelConfig) -> int:
    """Parameters of one transformer block (2 norms, c_attn, attn c_proj, c_fc, mlp c_proj)."""
    d, b = config.n_embd, int(config.bias)
    return 2 * d + (d * 3 * d + b * 3 * d) + (d * d + b * d) + (d * 4 * d + b * 4 * d) + (4 * d * d + b * d)


def flops_per_token(
    config: ModelConfig, n_loop: int | None = None, seq_len: int | None = None, *, backward: bool = True
) -> float:
    """Training FLOPs per token: matmuls 2·(once + reused·L) + 4·(once + reused·k), plus attention.

    once = prelude + coda + norm_recur + the rest of the non-embedding params (the tied head wte and ln_f),
    reused = recur + inject; L = loop iterations run forward, k = min(bptt_k, L) iterations backward.
    Attention 2·H·K·T per layer for QK^T and again for AV: ×2 forward, ×4 backward, same loop counts.
    backward=False counts the forward terms only (an evaluation batch).
    """
    n_loop = config.n_loop if n_loop is None else n_loop
    seq_len = config.block_size if seq_len is None else seq_len
    _, k = config.loop_split(n_loop)
    d, v = config.n_embd, config.vocab_size
    inject = (2 * d * d + int(config.bias) * d) if config.input_injection != "passthrough" else 0
    once = (config.n_prelude + config.n_coda) * block_params(config) + d + (v * d + d)  # norm_recur, wte, ln_f
    reused = config.n_block * block_params(config) + inject
    matmul = 2 * (once + reused * n_loop) + 4 * (once + reused * k) * backward
    attn_per_layer = 2 * config.n_head * (d // config.n_head) * seq_len
    attn = 2 * (config.n_prelude + config.n_block * n_loop + config.n_coda) * attn_per_layer
    attn += 4 * (config.n_prelude + config.n_block * k + config.n_coda) * attn_per_layer * backward
    return float(matmul + attn)


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    """bf16 peak of one device from the table, or None (CPU and unknown accelerators: no MFU)."""
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "").lower()
    for name, peak in PEAK_FLOPS:
        if name in kind:
            return peak
    return None


def mfu(config: ModelConfig, tokens_per_s: float, n_devices: int, n_loop: int | None = None) -> float | None:
    """Model FLOPs utilisation against the devices' summed peak, or None where the peak is unknown."""
    peak = device_peak_flops()
    if peak is None:
        return None
    return flops_per_token(config, n_loop) * tokens_per_s / (peak * n_devices)
