"""The looped GPT of nanoloop-jax / nanoLOOP in PyTorch, for transformers (AutoModelForCausalLM, trust_remote_code).

A template module: nanoloop_jax.tools.export_hf copies it beside model.safetensors. It computes what
nanoloop_jax/model/looped.py computes (the export's tests compare the logits to 1e-4):

  x = wte(idx) (+ wpe(pos))  ->  prelude blocks  ->  e
  s = e   (inject_random: N(0, 1)·n_embd^-0.5 noise)
  repeat n_loop times:  u = inject(concat(e, s)) (passthrough: u = s)  ->  recur blocks  ->  s = norm_recur(u)
  s  ->  coda blocks  ->  ln_f  ->  logits = x @ wte.T  (the head is tied to wte)

Blocks are pre-norm (RMSNorm, then causal self-attention with a fused c_attn and exact-GELU MLP); rope rotates
(first half, second half) pairs of each head's q and k. The parameter names are nanoLOOP's state_dict names.

The KV cache (NanoLoopCache) has one slot per prelude block, per (iteration, recurrent block) and per coda
block: iteration i of the loop attends to the keys and values that iteration i wrote at earlier positions,
as in a full forward. transformers' DynamicCache keys by layer index and would mix iterations, so generate()
gets this cache instead. n_loop: config.n_loop, or per call model(ids, n_loop=K) / generate(ids, n_loop=K);
one cache serves one depth. With rope or NoPE, a position attends to the last block_size positions (the
sliding window sample.py decodes with); learned positions end at block_size.

Dimension legend: B batch, T new positions, S cached + new positions, D n_embd, H heads, K head dim, V vocab.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_nanoloop import NanoLoopConfig

# transformers >= 5 names the cache `cache` in forward and in its outputs; earlier versions `past_key_values`
_CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class NanoLoopCache(DynamicCache):
    """A DynamicCache whose layer slots are laid out by part: prelude j, coda j, then loop iteration i's
    recurrent block j. It remembers the depth it was filled at: one cache serves one n_loop."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.n_loop: int | None = None

    @staticmethod
    def prelude_slot(config: NanoLoopConfig, j: int) -> int:
        return j

    @staticmethod
    def coda_slot(config: NanoLoopConfig, j: int) -> int:
        return config.n_prelude + j

    @staticmethod
    def loop_slot(config: NanoLoopConfig, i: int, j: int) -> int:
        return config.n_prelude + config.n_coda + i * config.n_block + j

    def check_depth(self, n_loop: int) -> None:
        """Record the depth of the first write; a different depth on a filled cache is an error."""
        if self.get_seq_length() > 0 and self.n_loop is not None and self.n_loop != n_loop:
            raise ValueError(
                f"this cache was filled with n_loop={self.n_loop}; it has no keys and values of the other "
                f"iterations for n_loop={n_loop}: start a new cache (or generate) to change the depth"
            )
        self.n_loop = n_loop


def apply_rope(x_BxHxTxK: torch.Tensor, pos_BxT: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate each (first half, second half) pair of head dims by its position's angle (GPT-NeoX/Llama layout)."""
    k = x_BxHxTxK.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, k, 2, dtype=torch.float32, device=x_BxHxTxK.device) / k))
    ang_Bx1xTxK2 = (pos_BxT.to(torch.float32)[:, :, None] * inv_freq)[:, None]
    cos, sin = ang_Bx1xTxK2.cos(), ang_Bx1xTxK2.sin()
    x1, x2 = x_BxHxTxK.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x_BxHxTxK.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: NanoLoopConfig) -> None:
        super().__init__()
        self.config = config
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x_BxTxD, pos_BxT, mask_Bx1xTxS, cache, slot):
        b, t, d = x_BxTxD.shape
        h = self.config.n_head
        q, k, v = (a.view(b, t, h, d // h).transpose(1, 2) for a in self.c_attn(x_BxTxD).split(d, dim=2))
        if self.config.pos_encoding == "rope":
            q, k = apply_rope(q, pos_BxT, self.config.rope_theta), apply_rope(k, pos_BxT, self.config.rope_theta)
        if cache is not None:
            k, v = cache.update(k, v, slot)
        # scores and softmax in float32, masked entries at the dtype's minimum (a row with no key left, such as
        # a left-padding position, stays finite)
        att_BxHxTxS = torch.einsum("bhtk,bhsk->bhts", q.float(), k.float()) / math.sqrt(d // h)
        att_BxHxTxS = att_BxHxTxS.masked_fill(~mask_Bx1xTxS, torch.finfo(torch.float32).min).softmax(dim=-1)
        y_BxHxTxK = torch.einsum("bhts,bhsk->bhtk", att_BxHxTxS.to(v.dtype), v)
        return self.c_proj(y_BxHxTxK.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, config: NanoLoopConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x_BxTxD):
        return self.c_proj(F.gelu(self.c_fc(x_BxTxD)))  # exact (erf) GELU


class Block(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: NanoLoopConfig) -> None:
        super().__init__()
        self.ln_1 = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x_BxTxD, pos_BxT, mask_Bx1xTxS, cache=None, slot=None):
        x_BxTxD = x_BxTxD + self.attn(self.ln_1(x_BxTxD), pos_BxT, mask_Bx1xTxS, cache, slot)
        return x_BxTxD + self.mlp(self.ln_2(x_BxTxD))


class NanoLoopForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = NanoLoopConfig
    base_model_prefix = "nanoloop"  # no base-model submodule: the names are nanoLOOP's, loaded as they are
    _no_split_modules = ["Block"]

    def __init__(self, config: NanoLoopConfig) -> None:
        super().__init__(config)
        modules = dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            prelude=nn.ModuleList(Block(config) for _ in range(config.n_prelude)),
            recur=nn.ModuleList(Block(config) for _ in range(config.n_block)),
            coda=nn.ModuleList(Block(config) for _ in range(config.n_coda)),
            ln_f=nn.RMSNorm(config.n_embd, eps=config.norm_eps),
        )
        if config.pos_encoding == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(modules)
        if config.input_injection != "passthrough":
            self.inject = nn.Linear(2 * config.n_embd, config.n_embd, bias=config.bias)
        self.norm_recur = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        if config.exit_gate:  # trained halting gate, kept so its weights load; forward does not use it
            self.exit_gate = nn.Linear(config.n_embd, 1, bias=True)
        self.post_init()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not hand forward a DynamicCache (one slot per layer index): forward makes its own
        return False

    def _init_weights(self, module: nn.Module) -> None:
        """N(0, 0.02) Linear and Embedding weights, zero biases, unit norms (only for weights not loaded)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def _mask(self, attention_mask, b: int, t: int, past: int, device) -> torch.Tensor:
        """(B or 1, 1, T, S) bool: causal, within the last attn_window positions (else the last block_size for
        rope/NoPE), not padding."""
        q_T = torch.arange(past, past + t, device=device)[:, None]
        k_S = torch.arange(past + t, device=device)[None, :]
        mask_TxS = k_S <= q_T
        window = getattr(self.config, "attn_window", None)  # configs exported before the field have none
        if window is None and self.config.pos_encoding != "learned":
            window = self.config.block_size
        if window is not None:
            mask_TxS = mask_TxS & (k_S > q_T - window)
        mask = mask_TxS[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, -(past + t) :].bool()
        return mask

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: NanoLoopCache | None = None,
        past_key_values: NanoLoopCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        n_loop: int | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (B, T, V) in float32 (of the last logits_to_keep positions if > 0), the cache, and the loss
        of predicting labels shifted by one when labels are given. n_loop: this call's depth."""
        config = self.config
        n_loop = config.n_loop if n_loop is None else int(n_loop)
        if n_loop < 1:
            raise ValueError(f"n_loop must be >= 1, got {n_loop}")
        cache = cache if cache is not None else past_key_values
        use_cache = config.use_cache if use_cache is None else use_cache
        if cache is not None and not isinstance(cache, NanoLoopCache):
            if cache.get_seq_length() > 0:
                raise ValueError("a looped model needs its own cache (NanoLoopCache), not " + type(cache).__name__)
            cache = None  # an empty cache of another kind: replaced by ours
        if use_cache and cache is None:
            cache = NanoLoopCache()
        b, t = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        if cache is not None:
            cache.check_depth(n_loop)
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device)[None].expand(b, t)
        if config.pos_encoding == "learned" and int(position_ids.max()) >= config.block_size:
            raise ValueError(
                f"position {int(position_ids.max())} is past block_size {config.block_size} (learned positions); "
                "crop the context to block_size tokens"
            )
        mask = self._mask(attention_mask, b, t, past, input_ids.device)

        x_BxTxD = self.transformer.wte(input_ids)
        if config.pos_encoding == "learned":
            x_BxTxD = x_BxTxD + self.transformer.wpe(position_ids)
        for j, block in enumerate(self.transformer.prelude):
            x_BxTxD = block(x_BxTxD, position_ids, mask, cache, NanoLoopCache.prelude_slot(config, j))
        e_BxTxD = x_BxTxD
        if config.input_injection == "inject_random":
            s_BxTxD = torch.randn_like(e_BxTxD) * config.n_embd**-0.5
        else:
            s_BxTxD = e_BxTxD
        for i in range(n_loop):
            if config.input_injection == "passthrough":
                u_BxTxD = s_BxTxD
            else:
                u_BxTxD = self.inject(torch.cat([e_BxTxD, s_BxTxD], dim=-1))
            for j, block in enumerate(self.transformer.recur):
                u_BxTxD = block(u_BxTxD, position_ids, mask, cache, NanoLoopCache.loop_slot(config, i, j))
            s_BxTxD = self.norm_recur(u_BxTxD)
        x_BxTxD = s_BxTxD
        for j, block in enumerate(self.transformer.coda):
            x_BxTxD = block(x_BxTxD, position_ids, mask, cache, NanoLoopCache.coda_slot(config, j))
        x_BxTxD = self.transformer.ln_f(x_BxTxD)
        if logits_to_keep:
            x_BxTxD = x_BxTxD[:, -logits_to_keep:]
        logits_BxTxV = F.linear(x_BxTxD, self.transformer.wte.weight).float()

        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits_BxTxV[:, :-1].reshape(-1, logits_BxTxV.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits_BxTxV, **{_CACHE_FIELD: cache})
