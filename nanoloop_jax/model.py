"""The looped (depth-recurrent) GPT of nanoLOOP as a Flax linen module.

prelude blocks (run once) -> e
loop i = 0..n_loop-1:  u = inject(concat(e, s)) | s ;  u = recur blocks(u) ;  s = norm_recur(u)
coda blocks (run once) -> ln_f -> head tied to wte

Dimension legend for shape-suffixed names:
  B batch, T sequence length, D n_embd, H heads, K head dim (D // H), F MLP hidden (4·D),
  V vocab, N flattened batch·time (B·T), L loop iterations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nanoloop_jax import kernels
from nanoloop_jax.kernels import ATTENTION_IMPLS, PLATFORMS, attention_weights  # noqa: F401  (re-exported)

INPUT_INJECTIONS = ("inject", "inject_random", "passthrough")
LOOP_SAMPLINGS = ("fixed", "poisson_lognormal")
DTYPES = ("float32", "bfloat16", "float16")
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
    # Randomized recurrence depth in training (Geiping et al. 2025); eval and sampling use n_loop.
    loop_sampling: str = "fixed"  # "fixed" (n_loop) | "poisson_lognormal" (depth drawn per step)
    n_loop_mean: float = 4.0  # mean depth of poisson_lognormal
    n_loop_max: int = 32  # cap of poisson_lognormal
    # JAX knobs (not in nanoLOOP).
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype
    remat_policy: str | None = None  # a jax.checkpoint_policies name, or None / "none"
    # "auto" (the platform's choice, see kernels.py) | "xla" | "cudnn" | "pallas"
    attention: str = "auto"
    platform: str | None = None  # platform lowered for ("cpu" | "cuda" | "rocm" | "tpu"); None = default backend
    norm_eps: float = TORCH_RMSNORM_EPS

    def validate(self) -> ModelConfig:
        """Raise ValueError with one clear line for the first bad field; return self."""
        for name in ("block_size", "vocab_size", "n_block", "n_loop", "n_head", "n_embd"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("n_prelude", "n_coda"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"model.{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})")
        if self.bptt_k is not None and (not isinstance(self.bptt_k, int) or self.bptt_k < 1):
            raise ValueError(f"model.bptt_k must be None (full backprop) or an integer >= 1, got {self.bptt_k!r}")
        if self.input_injection not in INPUT_INJECTIONS:
            raise ValueError(f"model.input_injection must be one of {INPUT_INJECTIONS}, got {self.input_injection!r}")
        if self.loop_sampling not in LOOP_SAMPLINGS:
            raise ValueError(f"model.loop_sampling must be one of {LOOP_SAMPLINGS}, got {self.loop_sampling!r}")
        if self.loop_sampling != "fixed":
            if self.bptt_k is None:
                raise ValueError("model.loop_sampling='poisson_lognormal' needs model.bptt_k (the gradient iterations)")
            if not self.bptt_k <= self.n_loop_mean <= self.n_loop_max:
                raise ValueError(
                    f"model.loop_sampling='poisson_lognormal' needs bptt_k <= n_loop_mean <= n_loop_max, got "
                    f"{self.bptt_k}, {self.n_loop_mean}, {self.n_loop_max}"
                )
        if self.attention not in ATTENTION_IMPLS:
            raise ValueError(f"model.attention must be one of {ATTENTION_IMPLS}, got {self.attention!r}")
        if self.platform is not None and self.platform not in PLATFORMS:
            raise ValueError(f"model.platform must be None or one of {PLATFORMS}, got {self.platform!r}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"model.{name} must be one of {DTYPES}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout!r}")
        if self.remat_policy not in (None, "none") and not hasattr(jax.checkpoint_policies, self.remat_policy):
            raise ValueError(
                f"model.remat_policy must be None, 'none' or a jax.checkpoint_policies name "
                f"(e.g. 'nothing_saveable', 'dots_saveable'), got {self.remat_policy!r}"
            )
        if not self.norm_eps > 0:
            raise ValueError(f"model.norm_eps must be > 0, got {self.norm_eps!r}")
        return self

    @property
    def n_layer_total(self) -> int:
        """Unique blocks (prelude + recur + coda): the depth used for the c_proj init scale."""
        return self.n_prelude + self.n_block + self.n_coda

    def loop_split(self, n_loop: int | None = None) -> tuple[int, int]:
        """(iterations without gradient, iterations with gradient) for truncated BPTT."""
        n_loop = self.n_loop if n_loop is None else n_loop
        k = n_loop if self.bptt_k is None else min(self.bptt_k, n_loop)
        return n_loop - k, k


def _jnp_dtype(name: str) -> jnp.dtype:
    return jnp.dtype(name)


def _normal(std: float, axes: Sequence[str | None]):
    return nn.with_logical_partitioning(nn.initializers.normal(std), tuple(axes))


def _inject_identity_init(key, shape, dtype=jnp.float32):
    """Kernel (2·D, D) = [I; 0], so that inject(concat(e, s)) == e at init (nanoLOOP's [I | 0])."""
    del key
    d_in, d_out = shape
    return jnp.eye(d_in, d_out, dtype=dtype)


class Dense(nn.Module):
    """y = x @ kernel (+ bias) over the last axis; flatten: computed on (N, in) (XLA:CPU's fast path, kernels.dense)."""

    features: int
    kernel_axes: tuple[str | None, str | None]
    use_bias: bool
    init_std: float = 0.02
    kernel_init: object = None
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    flatten: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = self.kernel_init or nn.initializers.normal(self.init_std)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, self.kernel_axes),
            (x.shape[-1], self.features),
            self.param_dtype,
        )
        y = kernels.dense(x.astype(self.dtype), kernel.astype(self.dtype), self.flatten)
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, (self.kernel_axes[1],)),
                (self.features,),
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


def rms_norm(config: ModelConfig, name: str) -> nn.RMSNorm:
    """torch.nn.RMSNorm(n_embd): learned scale, no bias, eps = config.norm_eps, statistics in float32."""
    return nn.RMSNorm(
        epsilon=config.norm_eps,
        dtype=_jnp_dtype(config.dtype),
        param_dtype=_jnp_dtype(config.param_dtype),
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        name=name,
    )


def constrain(x_BxTxD: jax.Array) -> jax.Array:
    """Pin activations at block boundaries to the batch sharding (a no-op without a mesh)."""
    return nn.with_logical_constraint(x_BxTxD, ("act_batch", "act_length", "act_embed"))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused qkv projection (nanoGPT's c_attn / c_proj)."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        dense = functools.partial(
            Dense,
            use_bias=cfg.bias,
            dtype=_jnp_dtype(cfg.dtype),
            param_dtype=_jnp_dtype(cfg.param_dtype),
            flatten=kernels.layout(cfg.platform).flatten_dense,
        )
        self.c_attn = dense(3 * cfg.n_embd, ("embed", "qkv"))
        self.c_proj = dense(cfg.n_embd, ("heads", "embed"), init_std=0.02 / math.sqrt(2 * cfg.n_layer_total))
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def qkv(self, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Project to per-head queries, keys and values, each (B, T, H, K)."""
        b, t, d = x_BxTxD.shape
        h = self.config.n_head
        q_BxTxD, k_BxTxD, v_BxTxD = jnp.split(self.c_attn(x_BxTxD), 3, axis=-1)
        return tuple(a.reshape(b, t, h, d // h) for a in (q_BxTxD, k_BxTxD, v_BxTxD))

    def attend(
        self,
        q_BxTxHxK: jax.Array,
        k_BxSxHxK: jax.Array,
        v_BxSxHxK: jax.Array,
        mask_BxTxS: jax.Array | None = None,
        train: bool = False,
    ) -> jax.Array:
        """Causal attention of queries over keys/values (S >= T; the last T keys align with the queries)."""
        cfg = self.config
        impl = kernels.attention_impl(
            cfg.attention,
            cfg.platform,
            seq_len=q_BxTxHxK.shape[1],
            head_dim=q_BxTxHxK.shape[-1],
            dtype=cfg.dtype,
            dropout=train and cfg.dropout > 0,
            masked=mask_BxTxS is not None,
        )
        dropout = functools.partial(self.attn_dropout, deterministic=not train)
        return kernels.causal_attention(impl, cfg.platform, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS, dropout)

    def project(self, y_BxTxHxK: jax.Array, train: bool = False) -> jax.Array:
        """Merge heads and apply the output projection (+ residual dropout)."""
        b, t, h, k = y_BxTxHxK.shape
        return self.resid_dropout(self.c_proj(y_BxTxHxK.reshape(b, t, h * k)), deterministic=not train)

    def __call__(self, x_BxTxD: jax.Array, train: bool = False) -> jax.Array:
        q, k, v = self.qkv(x_BxTxD)
        return self.project(self.attend(q, k, v, train=train), train=train)


def gelu_exact(x: jax.Array) -> jax.Array:
    """Exact GELU as torch.nn.GELU() writes it, 0.5·x·(1 + erf(x/√2)).

    jax.nn.gelu(approximate=False) uses erfc, which XLA:CPU lowers to three unfused kernels; erf is one
    vectorised polynomial and forward + backward run ~1.5-2.5× faster (results equal to ~5e-7).
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


class MLP(nn.Module):
    """n_embd -> 4·n_embd -> n_embd with exact (erf) GELU, as torch.nn.GELU()."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, train: bool = False) -> jax.Array:
        cfg = self.config
        dense = functools.partial(
            Dense,
            use_bias=cfg.bias,
            dtype=_jnp_dtype(cfg.dtype),
            param_dtype=_jnp_dtype(cfg.param_dtype),
            flatten=kernels.layout(cfg.platform).flatten_dense,
        )
        h_BxTxF = dense(4 * cfg.n_embd, ("embed", "mlp"), name="c_fc")(x_BxTxD)
        h_BxTxF = gelu_exact(h_BxTxF)
        y_BxTxD = dense(cfg.n_embd, ("mlp", "embed"), init_std=0.02 / math.sqrt(2 * cfg.n_layer_total), name="c_proj")(
            h_BxTxF
        )
        return nn.Dropout(cfg.dropout)(y_BxTxD, deterministic=not train)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    config: ModelConfig
    train: bool = False

    def setup(self) -> None:
        self.ln_1 = rms_norm(self.config, "ln_1")
        self.attn = CausalSelfAttention(self.config)
        self.ln_2 = rms_norm(self.config, "ln_2")
        self.mlp = MLP(self.config)

    def attn_qkv(self, x_BxTxD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """q, k, v of this block's attention for input x (used by the KV-cache decoder)."""
        return self.attn.qkv(self.ln_1(x_BxTxD))

    def attn_residual(
        self,
        x_BxTxD: jax.Array,
        q: jax.Array,
        k: jax.Array,
        v: jax.Array,
        mask_BxTxS: jax.Array | None = None,
    ) -> jax.Array:
        """x + attention output, given q for x and (possibly cached) k, v."""
        y_BxTxHxK = self.attn.attend(q, k, v, mask_BxTxS, train=self.train)
        return x_BxTxD + self.attn.project(y_BxTxHxK, train=self.train)

    def mlp_residual(self, x_BxTxD: jax.Array) -> jax.Array:
        """x + mlp(ln_2(x))."""
        return x_BxTxD + self.mlp(self.ln_2(x_BxTxD), train=self.train)

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        q, k, v = self.attn_qkv(x_BxTxD)
        return constrain(self.mlp_residual(self.attn_residual(x_BxTxD, q, k, v)))


def _remat(cls, config: ModelConfig):
    """Wrap a module class in nn.remat with the configured jax.checkpoint_policies policy."""
    if config.remat_policy in (None, "none"):
        return cls
    return nn.remat(cls, policy=getattr(jax.checkpoint_policies, config.remat_policy), prevent_cse=False)


class LoopBody(nn.Module):
    """One iteration of the recurrent block; its params are shared by every iteration."""

    config: ModelConfig
    train: bool = False

    def setup(self) -> None:
        cfg = self.config
        if cfg.input_injection != "passthrough":
            self.inject = Dense(
                cfg.n_embd,
                ("inject_in", "embed"),
                use_bias=cfg.bias,
                kernel_init=_inject_identity_init,
                dtype=_jnp_dtype(cfg.dtype),
                param_dtype=_jnp_dtype(cfg.param_dtype),
                flatten=kernels.layout(cfg.platform).flatten_dense,
            )
        self.recur = [Block(cfg, train=self.train, name=f"recur_{j}") for j in range(cfg.n_block)]
        self.norm_recur = rms_norm(cfg, "norm_recur")

    def inject_input(self, s_BxTxD: jax.Array, e_BxTxD: jax.Array) -> jax.Array:
        """u = inject(concat(e, s)) for inject / inject_random, u = s for passthrough."""
        if self.config.input_injection == "passthrough":
            return s_BxTxD
        return self.inject(jnp.concatenate([e_BxTxD, s_BxTxD], axis=-1))

    def __call__(self, s_BxTxD: jax.Array, i: jax.Array, e_BxTxD: jax.Array) -> tuple[jax.Array, None]:
        del i  # the iteration index is scanned over only to give the scan its length
        u_BxTxD = self.inject_input(s_BxTxD, e_BxTxD)
        for block in self.recur:
            u_BxTxD = block(u_BxTxD)
        return constrain(self.norm_recur(u_BxTxD).astype(s_BxTxD.dtype)), None


def scanned_loop(config: ModelConfig):
    """LoopBody lifted with nn.scan: one weight set broadcast to every iteration, fresh dropout per step."""
    return nn.scan(
        _remat(LoopBody, config),
        variable_broadcast="params",
        split_rngs={"params": False, "dropout": True},
        in_axes=(0, nn.broadcast),
    )


class LoopedGPT(nn.Module):
    """prelude -> n_loop × shared recurrent block (with input injection) -> coda -> tied head."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        dtype, param_dtype = _jnp_dtype(cfg.dtype), _jnp_dtype(cfg.param_dtype)
        self.wte = nn.Embed(
            cfg.vocab_size,
            cfg.n_embd,
            embedding_init=_normal(0.02, ("vocab", "embed")),
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.wpe = nn.Embed(
            cfg.block_size,
            cfg.n_embd,
            embedding_init=_normal(0.02, ("pos", "embed")),
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.ln_f = rms_norm(cfg, "ln_f")

    def embed(self, idx_BxT: jax.Array, pos_T: jax.Array, train: bool = False) -> jax.Array:
        """Token + position embeddings, with dropout."""
        x_BxTxD = self.wte(idx_BxT) + self.wpe(pos_T)[None]
        return self.drop(x_BxTxD, deterministic=not train)

    def head(self, x_BxTxD: jax.Array) -> jax.Array:
        """Final RMSNorm and the output head tied to wte; logits in float32."""
        x_BxTxD = self.ln_f(x_BxTxD)
        b, t, d = x_BxTxD.shape
        logits_NxV = jnp.dot(
            x_BxTxD.reshape(b * t, d),
            self.wte.embedding.T.astype(x_BxTxD.dtype),
            preferred_element_type=jnp.float32,
        )
        return logits_NxV.reshape(b, t, -1)

    def initial_state(self, e_BxTxD: jax.Array, pos_T: jax.Array) -> jax.Array:
        """s before the first iteration: e, or N(0, 1)·D^-0.5 noise for inject_random.

        The noise of position p is drawn from fold_in(key, p), so a KV-cache decoder that sees one
        position at a time draws exactly the noise a full forward over the same window draws.
        """
        cfg = self.config
        if cfg.input_injection != "inject_random":
            return e_BxTxD
        if not self.has_rng("noise"):
            raise ValueError(
                "input_injection='inject_random' draws its initial state from the 'noise' rng: "
                "call apply(..., rngs={'noise': key})"
            )
        key = self.make_rng("noise")
        b, _, d = e_BxTxD.shape
        noise_TxBxD = jax.vmap(lambda p: jax.random.normal(jax.random.fold_in(key, p), (b, d)))(pos_T)
        return (jnp.swapaxes(noise_TxBxD, 0, 1) * cfg.n_embd**-0.5).astype(e_BxTxD.dtype)

    def _nograd_iterations(self, s_BxTxD: jax.Array, e_BxTxD: jax.Array, n_iter: jax.Array, train: bool) -> jax.Array:
        """`n_iter` (traced) loop iterations in a lax.fori_loop on stop_gradient inputs.

        Used for randomized depth: one compiled step serves every sampled depth, and since nothing
        here is differentiated, nothing is stored for the backward pass. Same params as the scan.
        """
        if self.is_initializing():
            raise ValueError("initialise the model with a static (Python int) n_loop")
        params = jax.lax.stop_gradient(nn.unbox(self.variables["params"]["loop"]))
        body = LoopBody(self.config, train=train, parent=None)
        e_BxTxD = jax.lax.stop_gradient(e_BxTxD)
        key = self.make_rng("dropout") if train and self.config.dropout > 0 else None

        def iteration(i, s):
            rngs = {"dropout": jax.random.fold_in(key, i)} if key is not None else {}
            return body.apply({"params": params}, s, i, e_BxTxD, rngs=rngs)[0]

        out_BxTxD = jax.lax.fori_loop(0, n_iter, iteration, jax.lax.stop_gradient(s_BxTxD))
        # with no gradient-free iterations the initial state keeps its gradient, as in the static path
        return jnp.where(n_iter > 0, out_BxTxD, s_BxTxD)

    @nn.compact
    def __call__(self, idx_BxT: jax.Array, *, train: bool = False, n_loop: int | jax.Array | None = None) -> jax.Array:
        """Logits (B, T, V) in float32.

        n_loop: a Python int (static: one compile per depth) or, with bptt_k set, a traced int32
        scalar: then n_loop - bptt_k iterations run in a fori_loop without gradient and the last
        bptt_k in the scan, so every depth shares one compiled program (randomized-depth training).
        """
        cfg = self.config
        n_loop = cfg.n_loop if n_loop is None else n_loop
        dynamic = isinstance(n_loop, jax.Array)
        if dynamic and cfg.bptt_k is None:
            raise ValueError("a traced n_loop needs model.bptt_k (the fixed number of gradient iterations)")
        if not dynamic and (not isinstance(n_loop, int) or n_loop < 1):
            raise ValueError(f"n_loop must be a positive Python int or a traced int32 scalar, got {n_loop!r}")
        t = idx_BxT.shape[1]
        if t > cfg.block_size:
            raise ValueError(f"sequence length {t} is longer than model.block_size {cfg.block_size}")
        block = _remat(Block, cfg)

        pos_T = jnp.arange(t)
        x_BxTxD = constrain(self.embed(idx_BxT, pos_T, train=train))
        for j in range(cfg.n_prelude):
            x_BxTxD = block(cfg, train=train, name=f"prelude_{j}")(x_BxTxD)
        e_BxTxD = x_BxTxD
        s_BxTxD = self.initial_state(e_BxTxD, pos_T)

        loop = scanned_loop(cfg)(cfg, train=train, name="loop")
        if dynamic:
            s_BxTxD = self._nograd_iterations(s_BxTxD, e_BxTxD, jnp.maximum(n_loop - cfg.bptt_k, 0), train)
            grad_iters = jnp.arange(cfg.bptt_k)
        else:
            n_nograd, _ = cfg.loop_split(n_loop)
            if n_nograd:
                # Truncated BPTT: the first iterations get no gradient; stop_gradient on their result
                # means their activations are never kept for the backward pass.
                s_BxTxD, _ = loop(s_BxTxD, jnp.arange(n_nograd), e_BxTxD)
                s_BxTxD = jax.lax.stop_gradient(s_BxTxD)
            grad_iters = jnp.arange(n_nograd, n_loop)
        if len(grad_iters) <= kernels.layout(cfg.platform).max_unroll:
            # Few iterations with gradient (truncated BPTT) on CPU: one length-1 scan each, which XLA inlines,
            # so it fuses across iterations and keeps no stacked copies of their residuals (-5-8% step time
            # at bptt_k=2). Compile time grows with bptt_k up to the unroll limit, never with n_loop.
            for i in range(len(grad_iters)):
                s_BxTxD, _ = loop(s_BxTxD, grad_iters[i : i + 1], e_BxTxD)
        else:
            s_BxTxD, _ = loop(s_BxTxD, grad_iters, e_BxTxD)

        x_BxTxD = s_BxTxD
        for j in range(cfg.n_coda):
            x_BxTxD = block(cfg, train=train, name=f"coda_{j}")(x_BxTxD)
        return self.head(x_BxTxD)


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Initialise params (with logical-partitioning boxes stripped) for a (1, 1) dummy input."""
    model = LoopedGPT(config.validate())
    variables = model.init({"params": key, "noise": key}, jnp.zeros((1, 1), jnp.int32))
    return nn.unbox(variables["params"])


def count_params(params: dict) -> dict[str, int]:
    """Parameter counts as nanoLOOP reports them: total, non-embedding (minus wpe) and per section."""

    def size(tree) -> int:
        return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))

    params = nn.unbox(params)
    loop = params.get("loop", {})
    counts = {
        "total": size(params),
        "prelude": size({k: v for k, v in params.items() if k.startswith("prelude_")}),
        "coda": size({k: v for k, v in params.items() if k.startswith("coda_")}),
        "recur": size({k: v for k, v in loop.items() if k.startswith("recur_")}),
        "inject": size(loop.get("inject", {})),
        "norm_recur": size(loop.get("norm_recur", {})),
        "embedding": size(params["wte"]) + size(params["wpe"]),
    }
    counts["non_embedding"] = counts["total"] - size(params["wpe"])
    return counts
