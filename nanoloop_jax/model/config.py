"""The architecture of a looped GPT: ModelConfig (nanoLOOP's GPTConfig fields plus JAX knobs) and its checks."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.model.kernels import ATTENTION_IMPLS, PLATFORMS

INPUT_INJECTIONS = ("inject", "inject_random", "passthrough")
LOOP_SAMPLINGS = ("fixed", "poisson_lognormal")
POS_ENCODINGS = ("learned", "rope", "none")
INJECT_INITS = ("identity", "additive")
DTYPES = ("float32", "bfloat16", "float16")
# The architecture: nanoLOOP's GPTConfig fields but dropout and bptt_k. A resumed or imported run takes
# them from its checkpoint (the parameter shapes depend on them; nanoLOOP forces n_loop too).
ARCH_FIELDS = (
    "block_size",
    "vocab_size",
    "n_prelude",
    "n_block",
    "n_coda",
    "n_loop",
    "n_head",
    "n_embd",
    "bias",
    "input_injection",
)
# Architecture fields nanoLOOP does not have: taken from a checkpoint that records them (older ones do not,
# and had the default).
EXTRA_ARCH_FIELDS = ("exit_gate", "causal", "attn_window")
# Every field the computed function depends on: the architecture plus the position encoding and the norm's eps
# (what a Hugging Face export writes, and what a resumed run may not change).
FUNCTION_FIELDS = (*ARCH_FIELDS, *EXTRA_ARCH_FIELDS, "pos_encoding", "rope_theta", "norm_eps")
# torch.nn.RMSNorm(n_embd) uses eps=None, i.e. the float32 machine epsilon.
TORCH_RMSNORM_EPS = float(jnp.finfo(jnp.float32).eps)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a looped GPT; field names and defaults follow nanoLOOP's GPTConfig."""

    block_size: int = 1024
    vocab_size: int = 50304
    n_prelude: int = 2
    n_block: int = 2
    n_coda: int = 2
    n_loop: int = 4
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    bptt_k: int | None = None
    input_injection: str = "inject"
    # The inject kernel at init (not in nanoLOOP): "identity" [I; 0] (nanoLOOP's: u = e) or "additive" [I; I]
    # (u = e + s, Fan et al. 2025's injection; the length-generalization runs need it).
    inject_init: str = "identity"
    # Randomized recurrence depth in training (Geiping et al. 2025); eval and sampling use n_loop.
    loop_sampling: str = "fixed"  # "fixed" (n_loop) | "poisson_lognormal" (depth drawn per step)
    n_loop_mean: float = 4.0  # mean depth of poisson_lognormal
    n_loop_max: int = 32  # cap of poisson_lognormal
    # A learned exit gate (not in nanoLOOP): lambda_i = sigmoid(w . rms(s_i) + b) after every iteration, the
    # probability of halting there (PonderNet / Ouro). Trained by train.halting; used by --exit_criterion=gate.
    exit_gate: bool = False
    # Causal attention (nanoLOOP's, and what decoding needs). False: every position attends to every other,
    # for tasks that read a whole problem and answer at its own cells in one pass (mazes, Sudoku); such a
    # model cannot decode token by token.
    causal: bool = True
    # Sliding-window attention (not in nanoLOOP; Mistral's sliding_window): a position attends to the positions
    # at most attn_window - 1 before it (and after it, with causal=False), in every layer. None: the whole
    # context. With a window, what a position knows after i loop iterations is local (i·(attn_window - 1)
    # positions back), the same at every position and length: the length-generalization configs use it.
    attn_window: int | None = None
    # JAX knobs (not in nanoLOOP).
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype
    remat_policy: str | None = None  # a jax.checkpoint_policies name, or None / "none"
    # "auto" (the platform's choice, see kernels.py) | "xla" | "cudnn" | "pallas"
    attention: str = "auto"
    platform: str | None = None  # platform lowered for ("cpu" | "cuda" | "rocm" | "tpu"); None = default backend
    norm_eps: float = TORCH_RMSNORM_EPS
    # Positions: "learned" (nanoLOOP's wpe table, the default), "rope" (rotary q/k) or "none" (NoPE).
    pos_encoding: str = "learned"
    rope_theta: float = 10000.0  # RoPE base

    def validate(self) -> ModelConfig:
        """Raise ValueError with one clear line for the first bad field; return self."""
        for name in ("block_size", "vocab_size", "n_block", "n_loop", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("n_prelude", "n_coda"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.bptt_k is not None and (not isinstance(self.bptt_k, int) or self.bptt_k < 1):
            raise ConfigError(f"model.bptt_k must be None (full backprop) or an integer >= 1, got {self.bptt_k!r}")
        if self.loop_sampling == "fixed" and self.bptt_k is not None and self.bptt_k > self.n_loop:
            # loop_split would quietly backprop through all n_loop: a bptt_k larger than the loop is a typo
            raise ConfigError(
                f"model.bptt_k ({self.bptt_k}) must be <= model.n_loop ({self.n_loop}): it counts the last iterations "
                "that get gradient (--config.model.bptt_k=0: all of them)"
            )
        if self.input_injection not in INPUT_INJECTIONS:
            raise ConfigError(f"model.input_injection must be one of {INPUT_INJECTIONS}, got {self.input_injection!r}")
        if self.loop_sampling not in LOOP_SAMPLINGS:
            raise ConfigError(f"model.loop_sampling must be one of {LOOP_SAMPLINGS}, got {self.loop_sampling!r}")
        if self.loop_sampling != "fixed":
            if self.bptt_k is None:
                raise ConfigError(
                    "model.loop_sampling='poisson_lognormal' needs model.bptt_k (the gradient iterations)"
                )
            if not self.bptt_k <= self.n_loop_mean <= self.n_loop_max:
                raise ConfigError(
                    f"model.loop_sampling='poisson_lognormal' needs bptt_k <= n_loop_mean <= n_loop_max, got "
                    f"{self.bptt_k}, {self.n_loop_mean}, {self.n_loop_max}"
                )
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"model.attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
        if self.platform is not None and self.platform not in PLATFORMS:
            raise ConfigError(f"model.platform must be None or one of {PLATFORMS}, got {self.platform!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"model.{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.remat_policy not in (None, "none") and not hasattr(jax.checkpoint_policies, self.remat_policy):
            raise ConfigError(
                f"model.remat_policy must be None, 'none' or a jax.checkpoint_policies name "
                f"(e.g. 'nothing_saveable', 'dots_saveable'), got {self.remat_policy!r}"
            )
        if self.inject_init not in INJECT_INITS:
            raise ConfigError(f"model.inject_init must be one of {INJECT_INITS}, got {self.inject_init!r}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ConfigError(f"model.pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"model.pos_encoding='rope' needs an even head dim, got {self.n_embd // self.n_head}")
        if not isinstance(self.causal, bool):
            raise ConfigError(f"model.causal must be True or False, got {self.causal!r}")
        if self.attn_window is not None and (
            not isinstance(self.attn_window, int) or not 1 <= self.attn_window <= self.block_size
        ):
            raise ConfigError(
                f"model.attn_window must be None (the whole context) or an integer in 1..block_size "
                f"({self.block_size}), got {self.attn_window!r}"
            )
        if not self.norm_eps > 0:
            raise ConfigError(f"model.norm_eps must be > 0, got {self.norm_eps!r}")
        return self

    @property
    def n_layer_total(self) -> int:
        """Unique blocks (prelude + recur + coda): the depth used for the c_proj init scale."""
        return self.n_prelude + self.n_block + self.n_coda

    @property
    def attn_span(self) -> int:
        """Keys a position attends to at most (itself included): attn_window, else block_size."""
        return self.block_size if self.attn_window is None else self.attn_window

    def loop_split(self, n_loop: int | None = None) -> tuple[int, int]:
        """(iterations without gradient, iterations with gradient) for truncated BPTT."""
        n_loop = self.n_loop if n_loop is None else n_loop
        k = n_loop if self.bptt_k is None else min(self.bptt_k, n_loop)
        return n_loop - k, k
