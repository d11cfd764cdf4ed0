"""The loop-aware FLOP formula (nanoLOOP's estimate_mfu convention) against hand counts, and the MFU peak table."""

import dataclasses

import jax
import pytest
from helpers import tiny_config

from nanoloop_jax.model import flops
from nanoloop_jax.model.looped import count_params, init_params

# 1 prelude + 1 recurrent block looped 3 times (gradient through the last 2) + 1 coda, 8 wide, 2 heads.
TINY = tiny_config(vocab_size=11, n_block=1, n_embd=8)


def test_flops_per_token_matches_a_hand_count():
    # One block: ln_1 8 + c_attn 8·24 + c_proj 8·8 + ln_2 8 + c_fc 8·32 + c_proj 32·8 = 784 params.
    # once   = prelude + coda (2·784) + norm_recur 8 + ln_f 8 + tied head wte 11·8 = 1672
    # reused = recurrent block 784 + inject 16·8 = 912; forward 3 iterations, backward 2.
    matmul = 2 * (1672 + 912 * 3) + 4 * (1672 + 912 * 2)  # 22,800
    # attention per layer 2·H·K·T = 2·2·4·16 = 256; layers forward 1 + 3 + 1, backward 1 + 2 + 1
    attention = 2 * 5 * 256 + 4 * 4 * 256  # 6,656
    assert matmul + attention == 29_456
    assert flops.flops_per_token(TINY) == 29_456


def test_flops_per_token_matches_the_real_parameter_tree():
    """The same convention with once / reused counted from init_params, not from flops.block_params."""
    for cfg in (TINY, dataclasses.replace(TINY, bias=True, bptt_k=None), dataclasses.replace(TINY, n_loop=1, bptt_k=1)):
        counts = count_params(init_params(cfg, jax.random.PRNGKey(0)))
        reused = counts["recur"] + counts["inject"]
        once = counts["non_embedding"] - reused  # wpe is a lookup; wte is the tied head
        fwd, bwd = cfg.n_loop, min(cfg.bptt_k or cfg.n_loop, cfg.n_loop)
        attn = 2 * cfg.n_embd * cfg.block_size
        layers_fwd = cfg.n_prelude + cfg.n_block * fwd + cfg.n_coda
        layers_bwd = cfg.n_prelude + cfg.n_block * bwd + cfg.n_coda
        expected = 2 * (once + reused * fwd) + 4 * (once + reused * bwd) + (2 * layers_fwd + 4 * layers_bwd) * attn
        assert flops.flops_per_token(cfg) == expected, cfg


def test_flops_grow_with_loops_only_through_the_reused_part():
    f = [flops.flops_per_token(TINY, n_loop=n) for n in (2, 3, 4, 5)]
    # with bptt_k=2 every extra iteration adds forward work only: a constant step
    assert f[1] - f[0] == f[2] - f[1] == f[3] - f[2] == 2 * 912 + 2 * 256
    assert flops.flops_per_token(TINY, seq_len=8) < flops.flops_per_token(TINY)


def test_mfu_is_none_on_cpu():
    assert jax.devices()[0].platform == "cpu"
    assert flops.device_peak_flops() is None
    assert flops.mfu(TINY, tokens_per_s=1e6, n_devices=1) is None


@pytest.mark.parametrize(
    ("kind", "peak"),
    [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12), ("TPU v5 lite", 197e12), ("cpu", None)],
)
def test_peak_table(kind, peak):
    class FakeDevice:
        device_kind = kind

    assert flops.device_peak_flops(FakeDevice()) == peak
