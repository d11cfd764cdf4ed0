"""The looped (depth-recurrent) GPT of nanoLOOP as a Flax linen module.

prelude blocks (run once) -> e
loop i = 0..n_loop-1:  u = inject(concat(e, s)) | s ;  u = recur blocks(u) ;  s = norm_recur(u)
coda blocks (run once) -> ln_f -> head tied to wte

Dimension legend for shape-suffixed names:
  B batch, T sequence length, D n_embd, H heads, K head dim (D // H), F MLP hidden (4·D),
  V vocab, N flattened batch·time (B·T), L loop iterations.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.model import kernels
from nanoloop_jax.model.cache import CacheWrite, DecodeCache, LayerCache, empty_layer_cache
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.layers import (
    Block,
    Dense,
    apply_dropout,
    constrain,
    fold_rng,
    jnp_dtype,
    normal_init,
    remat,
    rms_norm,
)


def _inject_init(kind: str):
    """Inject kernel (2·D, D) init: [I; 0] ('identity': inject(concat(e, s)) == e, nanoLOOP's [I | 0]) or
    [I; I] ('additive': == e + s)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        d_in, d_out = shape
        eye = jnp.eye(d_out, dtype=dtype)
        return jnp.concatenate([eye, eye if kind == "additive" else jnp.zeros_like(eye)])[:d_in]

    return init


class LoopBody(nn.Module):
    """One iteration of the recurrent block; its params are shared by every iteration."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        if cfg.input_injection != "passthrough":
            self.inject = Dense(
                cfg.n_embd,
                ("inject_in", "embed"),
                use_bias=cfg.bias,
                kernel_init=_inject_init(cfg.inject_init),
                dtype=jnp_dtype(cfg.dtype),
                param_dtype=jnp_dtype(cfg.param_dtype),
                flatten=kernels.layout(cfg.platform).flatten_dense,
            )
        self.recur = [Block(cfg, name=f"recur_{j}") for j in range(cfg.n_block)]
        self.norm_recur = rms_norm(cfg, "norm_recur")

    def iterate(
        self,
        s_BxTxD: jax.Array,
        e_BxTxD: jax.Array,
        pos_T: jax.Array,
        rng: jax.Array | None = None,
        caches: Sequence[LayerCache] | None = None,
        at: CacheWrite | None = None,
    ) -> tuple[jax.Array, tuple[LayerCache, ...] | None]:
        """s' = norm_recur(recur blocks(inject(concat(e, s)))), with one cache per recur block if given."""
        if self.config.input_injection == "passthrough":
            u_BxTxD = s_BxTxD
        else:
            u_BxTxD = self.inject(jnp.concatenate([e_BxTxD, s_BxTxD], axis=-1))
        new_caches = []
        for j, block in enumerate(self.recur):
            u_BxTxD, c = block(u_BxTxD, pos_T, fold_rng(rng, j), None if caches is None else caches[j], at)
            new_caches.append(c)
        s_BxTxD = constrain(self.norm_recur(u_BxTxD).astype(s_BxTxD.dtype))
        return s_BxTxD, None if caches is None else tuple(new_caches)

    def __call__(
        self, s_BxTxD: jax.Array, i: jax.Array, e_BxTxD: jax.Array, pos_T: jax.Array, loop_rng: jax.Array | None
    ) -> tuple[jax.Array, None]:
        """The scanned form: iteration i draws its dropout from fold_in(loop_rng, i), as the traced path does."""
        return self.iterate(s_BxTxD, e_BxTxD, pos_T, fold_rng(loop_rng, i))[0], None


def scanned_loop(config: ModelConfig):
    """LoopBody lifted with nn.scan: one weight set broadcast to every iteration.

    Dropout keys are not split by the scan: iteration i uses fold_in(loop key, i), so a static scan, its
    truncated-BPTT split and the traced-depth fori_loop all draw the same masks for the same iteration.
    """
    return nn.scan(
        remat(LoopBody, config),
        variable_broadcast="params",
        split_rngs={"params": False},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
    )


class LoopedGPT(nn.Module):
    """prelude -> n_loop × shared recurrent block (with input injection) -> coda -> tied head.

    The forward is three public steps, which __call__ (training and evaluation), the KV-cache decoder
    (decode/recurrence.py) and the lengthgen loop (tasks/lengthgen/forward.py) all run:
      start(idx, pos) -> (e, s0, cache)    embed, prelude, initial state
      iterate(s, e, pos) -> (s', caches)   one iteration of the shared recurrent block
      readout(s, pos) -> (logits, cache)   coda, ln_f, tied head
    each with an optional decode cache (init_cache gives its layout). embed, prelude_blocks, initial_state,
    coda_blocks and head are their parts; head alone is Huginn's readout of a state without the coda.
    """

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config

        def table(rows: int, axis: str) -> nn.Embed:  # (rows, D), N(0, 0.02) as nanoGPT
            dtypes = dict(dtype=jnp_dtype(cfg.dtype), param_dtype=jnp_dtype(cfg.param_dtype))
            return nn.Embed(rows, cfg.n_embd, embedding_init=normal_init(0.02, (axis, "embed")), **dtypes)

        self.wte = table(cfg.vocab_size, "vocab")
        if cfg.pos_encoding == "learned":
            self.wpe = table(cfg.block_size, "pos")
        self.ln_f = rms_norm(cfg, "ln_f")
        block = remat(Block, cfg)
        self.prelude = [block(cfg) for _ in range(cfg.n_prelude)]  # params prelude_0, prelude_1, ...
        self.loop = scanned_loop(cfg)(cfg)
        self.coda = [block(cfg) for _ in range(cfg.n_coda)]
        if cfg.exit_gate:
            # D + 1 parameters; the norm is parameter-free (w absorbs a scale). Bias 0: lambda = 1/2 at init.
            self.exit_gate = Dense(1, ("embed", None), use_bias=True, param_dtype=jnp_dtype(cfg.param_dtype))

    def init_cache(self, batch: int, entries: int, n_slots: int | None = None) -> DecodeCache:
        """Zero decode caches of `entries` positions: prelude, n_slots (default n_loop) loop slots, coda.

        Reads only the config, so it runs on an unbound module: LoopedGPT(config).init_cache(...)."""
        cfg = self.config
        h = cfg.n_head

        def layers(n: int) -> tuple[LayerCache, ...]:
            return tuple(empty_layer_cache(batch, h, cfg.n_embd // h, entries, jnp.dtype(cfg.dtype)) for _ in range(n))

        slots = cfg.n_loop if n_slots is None else n_slots
        return DecodeCache(layers(cfg.n_prelude), tuple(layers(cfg.n_block) for _ in range(slots)), layers(cfg.n_coda))

    def start(
        self,
        idx_BxT: jax.Array,
        pos_T: jax.Array,
        rng: jax.Array | None = None,
        cache: DecodeCache | None = None,
        at: CacheWrite | None = None,
    ) -> tuple[jax.Array, jax.Array, DecodeCache | None]:
        """(e, s0, cache'): embeddings and prelude (dropout keys fold_in(rng, 0) and 1) and the initial state.

        rng: the forward's dropout key (None: off). With a cache, the prelude's caches are written at `at`."""
        x_BxTxD = constrain(self.embed(idx_BxT, pos_T, fold_rng(rng, 0)))
        e_BxTxD, prelude = self.prelude_blocks(
            x_BxTxD, pos_T, fold_rng(rng, 1), None if cache is None else cache.prelude, at
        )
        s_BxTxD = self.initial_state(e_BxTxD, pos_T)
        return e_BxTxD, s_BxTxD, None if cache is None else cache._replace(prelude=prelude)

    def readout(
        self,
        s_BxTxD: jax.Array,
        pos_T: jax.Array,
        rng: jax.Array | None = None,
        cache: DecodeCache | None = None,
        at: CacheWrite | None = None,
        t_out: jax.Array | None = None,
    ) -> tuple[jax.Array, DecodeCache | None]:
        """(float32 logits, cache'): coda blocks (dropout key fold_in(rng, 3)), ln_f and the tied head.

        t_out: only this position's logits (B, 1, V) (a prefill needs its last position's alone: the head is
        the largest matmul at a large vocabulary); None: every position's (B, T, V)."""
        x_BxTxD, coda = self.coda_blocks(s_BxTxD, pos_T, fold_rng(rng, 3), None if cache is None else cache.coda, at)
        if t_out is not None:
            x_BxTxD = jax.lax.dynamic_slice_in_dim(x_BxTxD, t_out, 1, axis=1)
        return self.head(x_BxTxD), None if cache is None else cache._replace(coda=coda)

    def embed(self, idx_BxT: jax.Array, pos_T: jax.Array, rng: jax.Array | None = None) -> jax.Array:
        """Token (+ learned position) embeddings, with dropout."""
        x_BxTxD = self.wte(idx_BxT)
        if self.config.pos_encoding == "learned":
            x_BxTxD = x_BxTxD + self.wpe(pos_T)[None]
        return apply_dropout(x_BxTxD, self.config.dropout, rng)

    def head(self, x_BxTxD: jax.Array, n_vocab: int | None = None) -> jax.Array:
        """Final RMSNorm and the output head tied to wte; logits in float32. n_vocab: only the logits of ids
        < n_vocab (the tokenizer's; the rest of a padded vocabulary is never drawn, so the decoder's exit
        tests skip its rows of the matmul, 65 of 50,304 for a character model)."""
        x_BxTxD = self.ln_f(x_BxTxD)
        b, t, d = x_BxTxD.shape
        logits_NxV = jnp.dot(
            x_BxTxD.reshape(b * t, d),
            self.wte.embedding[:n_vocab].T.astype(x_BxTxD.dtype),
            preferred_element_type=jnp.float32,
        )
        return logits_NxV.reshape(b, t, -1)

    def _blocks(self, blocks, x_BxTxD, pos_T, rng, caches, at):
        new_caches = []
        for j, block in enumerate(blocks):
            x_BxTxD, c = block(x_BxTxD, pos_T, fold_rng(rng, j), None if caches is None else caches[j], at)
            new_caches.append(c)
        return x_BxTxD, None if caches is None else tuple(new_caches)

    def prelude_blocks(self, x_BxTxD, pos_T, rng=None, caches=None, at=None):
        """The prelude blocks, each with its cache if caches are given: (e, caches')."""
        return self._blocks(self.prelude, x_BxTxD, pos_T, rng, caches, at)

    def coda_blocks(self, x_BxTxD, pos_T, rng=None, caches=None, at=None):
        """The coda blocks, each with its cache if caches are given: (x, caches')."""
        return self._blocks(self.coda, x_BxTxD, pos_T, rng, caches, at)

    def iterate(self, s_BxTxD, e_BxTxD, pos_T, rng=None, caches=None, at=None):
        """One iteration of the shared recurrent block (LoopBody.iterate with the model's loop params)."""
        return self.loop.iterate(s_BxTxD, e_BxTxD, pos_T, rng, caches, at)

    def halt_logit(self, s_BxTxD: jax.Array) -> jax.Array:
        """The exit gate's logit (B, T) in float32 for the state after an iteration: sigmoid of it is lambda_i."""
        if not self.config.exit_gate:
            raise ConfigError("this model has no exit gate: train one with model.exit_gate=True")
        s = s_BxTxD.astype(jnp.float32)
        s = s * jax.lax.rsqrt(jnp.mean(jnp.square(s), axis=-1, keepdims=True) + self.config.norm_eps)
        return self.exit_gate(s)[..., 0]

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

    def _nograd_iterations(
        self, s_BxTxD: jax.Array, e_BxTxD: jax.Array, pos_T: jax.Array, n_iter: jax.Array, loop_rng
    ) -> jax.Array:
        """`n_iter` (traced) loop iterations in a lax.fori_loop on stop_gradient inputs.

        Used for randomized depth: one compiled step serves every sampled depth, and since nothing
        here is differentiated, nothing is stored for the backward pass. Same params, same LoopBody
        code and the same per-iteration dropout keys as the scan.
        """
        if self.is_initializing():
            raise ValueError("initialise the model with a static (Python int) n_loop")
        params = jax.lax.stop_gradient(nn.unbox(self.variables["params"]["loop"]))
        body = LoopBody(self.config, parent=None)
        e_BxTxD = jax.lax.stop_gradient(e_BxTxD)

        def iteration(i, s):
            return body.apply({"params": params}, s, e_BxTxD, pos_T, fold_rng(loop_rng, i), method=LoopBody.iterate)[0]

        out_BxTxD = jax.lax.fori_loop(0, n_iter, iteration, jax.lax.stop_gradient(s_BxTxD))
        # with no gradient-free iterations the initial state keeps its gradient, as in the static path
        return jnp.where(n_iter > 0, out_BxTxD, s_BxTxD)

    def __call__(self, idx_BxT: jax.Array, *, train: bool = False, n_loop: int | jax.Array | None = None) -> jax.Array:
        """Logits (B, T, V) in float32.

        n_loop: a Python int (static: one compile per depth) or, with bptt_k set, a traced int32
        scalar: then n_loop - bptt_k iterations run in a fori_loop without gradient and the last
        bptt_k in the scan, so every depth shares one compiled program (randomized-depth training).
        train: dropout on, from the 'dropout' rng (embeddings, prelude j, loop iteration i, coda j each
        fold their own key out of it).
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
        rng = self.make_rng("dropout") if train and cfg.dropout > 0 else None

        pos_T = jnp.arange(t)
        e_BxTxD, s_BxTxD, _ = self.start(idx_BxT, pos_T, rng)

        loop_rng = fold_rng(rng, 2)
        if dynamic:
            n_nograd = jnp.maximum(n_loop - cfg.bptt_k, 0)
            s_BxTxD = self._nograd_iterations(s_BxTxD, e_BxTxD, pos_T, n_nograd, loop_rng)
            grad_iters = n_nograd + jnp.arange(cfg.bptt_k)
        else:
            n_nograd, _ = cfg.loop_split(n_loop)
            if n_nograd:
                # Truncated BPTT: the first iterations get no gradient; stop_gradient on their result
                # means their activations are never kept for the backward pass.
                s_BxTxD, _ = self.loop(s_BxTxD, jnp.arange(n_nograd), e_BxTxD, pos_T, loop_rng)
                s_BxTxD = jax.lax.stop_gradient(s_BxTxD)
            grad_iters = jnp.arange(n_nograd, n_loop)
        if len(grad_iters) <= kernels.layout(cfg.platform).max_unroll:
            # Few iterations with gradient (truncated BPTT) on CPU: one length-1 scan each, which XLA inlines,
            # so it fuses across iterations and keeps no stacked copies of their residuals (-5-8% step time
            # at bptt_k=2). Compile time grows with bptt_k up to the unroll limit, never with n_loop.
            for i in range(len(grad_iters)):
                s_BxTxD, _ = self.loop(s_BxTxD, grad_iters[i : i + 1], e_BxTxD, pos_T, loop_rng)
        else:
            s_BxTxD, _ = self.loop(s_BxTxD, grad_iters, e_BxTxD, pos_T, loop_rng)

        if cfg.exit_gate and self.is_initializing():
            self.halt_logit(s_BxTxD)  # create the gate's params
        return self.readout(s_BxTxD, pos_T, rng)[0]


def init_params(config: ModelConfig, key: jax.Array) -> dict:
    """Initialise params (with logical-partitioning boxes stripped) for a (1, 1) dummy input."""
    model = LoopedGPT(config.validate())
    variables = model.init({"params": key, "noise": key}, jnp.zeros((1, 1), jnp.int32))
    return nn.unbox(variables["params"])


def abstract_params(config: ModelConfig) -> dict:
    """Shapes and dtypes of init_params(config, ·) (ShapeDtypeStructs), computing nothing."""
    return jax.eval_shape(lambda k: init_params(config, k), jax.random.PRNGKey(0))


def count_params(params: dict) -> dict[str, int]:
    """Parameter counts as nanoLOOP reports them: total, non-embedding (minus wpe) and per section."""

    def size(tree) -> int:
        return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))

    params = nn.unbox(params)
    loop = params.get("loop", {})
    wpe = size(params.get("wpe", {}))
    counts = {
        "total": size(params),
        "prelude": size({k: v for k, v in params.items() if k.startswith("prelude_")}),
        "coda": size({k: v for k, v in params.items() if k.startswith("coda_")}),
        "recur": size({k: v for k, v in loop.items() if k.startswith("recur_")}),
        "inject": size(loop.get("inject", {})),
        "norm_recur": size(loop.get("norm_recur", {})),
        "embedding": size(params["wte"]) + wpe,
    }
    counts["non_embedding"] = counts["total"] - wpe
    return counts


def describe(config: ModelConfig, params: dict) -> str:
    """One line for a run's log: the parameter count and the shape of the loop (not the ~600-character repr)."""
    counts = count_params(params)
    bptt = "all" if config.bptt_k is None else config.bptt_k
    return (
        f"model: {counts['total'] / 1e6:.2f}M parameters ({counts['non_embedding'] / 1e6:.2f}M non-embedding): "
        f"{config.n_prelude} prelude + {config.n_block} recurrent x n_loop {config.n_loop} + {config.n_coda} coda "
        f"blocks, {config.n_embd} wide, {config.n_head} heads, block {config.block_size}, vocab {config.vocab_size}, "
        f"bptt_k {bptt}, {config.input_injection}, {config.pos_encoding} positions, {config.dtype}"
    )
