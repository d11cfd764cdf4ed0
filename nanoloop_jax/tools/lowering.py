"""Lower the sharded train step, the eval step and the decode step for a platform without its device.

  python bench.py --config=configs/gpt2_owt_looped.py --lower_for=cuda,tpu

JAX traces and lowers a program for any platform on any machine (`jit(f).trace(...).lower(
lowering_platforms=(p,))`); only compiling and running need the device. Abstract arguments
(jax.ShapeDtypeStruct) stand in for the state and batch, so nothing is allocated, and the model is
built with `ModelConfig.platform = p`, so kernels.py picks the kernels that platform runs (cuDNN
attention, the Pallas TPU flash kernel, plain scans) and dtype 'auto' becomes bfloat16. The train and
eval steps are lowered under a (data, fsdp, tensor) mesh of this process's devices (8 fake CPU devices
with XLA_FLAGS=--xla_force_host_platform_device_count=8), with their real in/out shardings.

What this checks: every primitive of the three programs has a lowering for the platform (a Pallas TPU
kernel is lowered to its Mosaic custom call, which also checks its tiling), shapes and shardings are
consistent, and the partitioning annotations are accepted. What it does not check: the platform
compiler's own passes (XLA:GPU / XLA:TPU fusion, memory fit, Mosaic compilation), numerics, speed.
cuDNN attention is traced only where the CUDA plugin is installed (`pip install -e .[cuda12]`: JAX asks
cuDNN its version while tracing); without it the cuda programs are lowered with xla attention and the
line says so.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nanoloop_jax import sharding
from nanoloop_jax.config import model_config
from nanoloop_jax.data.batches import load_meta
from nanoloop_jax.decode.sampling import KVDecoder, SampleConfig
from nanoloop_jax.errors import UserError
from nanoloop_jax.model import kernels
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.train.optim import lr_schedule, make_optimizer
from nanoloop_jax.train.steps import init_train_state, make_eval_step, make_train_step

PROGRAMS = ("train_step", "eval_step", "decode_step")
DEFAULT_MESH = (-1, 2, 2)  # (data, fsdp, tensor) of the lowering mesh: both parameter-sharding axes in use


@dataclasses.dataclass
class LoweringResult:
    """One platform's lowered programs (or the error each raised) and the model config they were built with."""

    platform: str
    model_config: ModelConfig
    lowered: dict[str, Any]  # program name -> jax.stages.Lowered
    errors: dict[str, str]  # program name -> "ExceptionType: first line"
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    def line(self) -> str:
        """`lowered for cuda: train_step ok, eval_step ok, decode_step ok` (+ a note where a kernel was swapped)."""
        parts = [f"{p} ok" if p in self.lowered else f"{p} FAILED ({self.errors[p]})" for p in PROGRAMS]
        return f"lowered for {self.platform}: " + ", ".join(parts) + (f" ({self.note})" if self.note else "")


def platform_model_config(config, platform: str) -> tuple[ModelConfig, str]:
    """config.model built for `platform` (vocab from meta.json as train.py), and a note if a kernel was swapped."""
    meta = load_meta(config.data.data_dir or os.path.join("data", config.data.dataset))
    overrides = {"vocab_size": int(meta["vocab_size"])} if meta and "stoi" in meta else {}
    mcfg = model_config(config.model, platform=platform, **overrides)
    head_dim = mcfg.n_embd // mcfg.n_head
    impl = kernels.attention_impl(
        mcfg.attention,
        platform,
        seq_len=mcfg.block_size,
        head_dim=head_dim,
        dtype=mcfg.dtype,
        dropout=mcfg.dropout > 0,
        masked=False,
    )
    if impl == "cudnn" and not kernels.cuda_plugin_available():
        note = "attention xla: cuDNN attention is traced only with the CUDA plugin installed, not checked"
        return dataclasses.replace(mcfg, attention="xla"), note
    return mcfg, ""


def lowering_mesh(mesh_sizes: tuple[int, int, int] = DEFAULT_MESH) -> tuple[jax.sharding.Mesh, tuple]:
    """A (data, fsdp, tensor) mesh over this process's devices and the default logical rules."""
    mesh_cfg = type("MeshConfig", (), {"data": mesh_sizes[0], "fsdp": mesh_sizes[1], "tensor": mesh_sizes[2]})
    mesh = sharding.make_mesh(mesh_cfg)
    return mesh, sharding.DEFAULT_RULES


def _abstract(tree, shardings=None):
    if shardings is None:
        return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    return jax.tree_util.tree_map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _first_line(err: BaseException) -> str:
    msg = str(err).strip().splitlines()
    return f"{type(err).__name__}: {msg[0] if msg else ''}"[:300]


def lower_train_and_eval(config, mcfg: ModelConfig, platform: str, mesh, rules) -> dict[str, Any]:
    """The sharded train and eval steps, traced under the mesh and lowered for `platform`."""
    model, tx = LoopedGPT(mcfg), make_optimizer(config.opt)
    key = jax.random.PRNGKey(config.seed)
    init_fn = functools.partial(init_train_state, model, tx)
    state_sh = sharding.state_shardings(init_fn, key, mesh, rules)
    state = _abstract(jax.eval_shape(lambda k: init_train_state(model, tx, k), key), state_sh)
    repl = sharding.replicated(mesh)
    accum, b, t = config.data.gradient_accumulation_steps, config.data.batch_size, mcfg.block_size
    batch_sh, eval_sh = sharding.accum_batch_sharding(mesh, rules), sharding.batch_sharding(mesh, rules)
    tokens = jax.ShapeDtypeStruct((accum, b, t), jnp.int32, sharding=batch_sh)
    eval_tokens = jax.ShapeDtypeStruct((b, t), jnp.int32, sharding=eval_sh)
    key_abs = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=repl)
    dynamic = mcfg.loop_sampling != "fixed"
    train = sharding.jit_step(
        make_train_step(model, tx, lr_schedule(config.opt), dynamic_depth=dynamic),
        mesh,
        rules,
        in_shardings=(state_sh, batch_sh, repl) + ((repl,) if dynamic else ()),
        out_shardings=(state_sh, repl),
        donate_argnums=0,
    )
    evals = sharding.jit_step(
        make_eval_step(model),
        mesh,
        rules,
        in_shardings=(state_sh.params, eval_sh, repl),
        out_shardings=repl,
    )
    n_loop = (jax.ShapeDtypeStruct((), jnp.int32, sharding=repl),) if dynamic else ()
    programs = {
        "train_step": (train, (state, {"x": tokens, "y": tokens}, key_abs, *n_loop)),
        "eval_step": (evals, (state.params, {"x": eval_tokens, "y": eval_tokens}, key_abs)),
    }
    out = {}
    for name, (step, args) in programs.items():
        try:
            with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
                out[name] = step.jitted.trace(*args).lower(lowering_platforms=(platform,))
        except Exception as err:  # reported per program; the others still run
            out[name] = err
    return out


def lower_decode(config, mcfg: ModelConfig, platform: str, batch_size: int = 1) -> Any:
    """One decode chunk of the KV-cache sampler (KVDecoder), single device, lowered for `platform`."""
    decoder = KVDecoder(mcfg, SampleConfig())
    model = LoopedGPT(mcfg)
    params = jax.eval_shape(lambda k: init_train_state(model, make_optimizer(config.opt), k).params, jax.random.key(0))
    window = jax.ShapeDtypeStruct((batch_size, mcfg.block_size), jnp.int32)
    i32 = jax.ShapeDtypeStruct((), jnp.int32)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    eps = jax.ShapeDtypeStruct((), jnp.float32)
    # the decode state (the caches) is whatever the prefill returns, so its layout stays the sampler's business
    state = jax.eval_shape(decoder._prefill.jitted, params, window, i32, i32, key, key, eps)[0]
    return decoder._decode.jitted.trace(params, state, i32, key, key, eps).lower(lowering_platforms=(platform,))


def lower_for(
    config, platform: str, mesh_sizes: tuple[int, int, int] = DEFAULT_MESH, decode_batch: int = 1
) -> LoweringResult:
    """Lower train_step, eval_step and decode_step for `platform`; errors are recorded, not raised."""
    if platform not in kernels.PLATFORMS:
        raise UserError(f"--lower_for platforms must be among {kernels.PLATFORMS}, got {platform!r}")
    mcfg, note = platform_model_config(config, platform)
    mesh, rules = lowering_mesh(mesh_sizes)
    results = lower_train_and_eval(config, mcfg, platform, mesh, rules)
    try:
        results["decode_step"] = lower_decode(config, mcfg, platform, decode_batch)
    except Exception as err:
        results["decode_step"] = err
    lowered = {k: v for k, v in results.items() if not isinstance(v, BaseException)}
    errors = {k: _first_line(v) for k, v in results.items() if isinstance(v, BaseException)}
    return LoweringResult(platform, mcfg, lowered, errors, note)


def custom_calls(lowered) -> list[str]:
    """call_target_name of every custom call in a lowered program (cuDNN: __cudnn$fmha..., Pallas: tpu_custom_call)."""
    text = lowered.as_text()
    names = []
    for part in text.split("stablehlo.custom_call @")[1:]:
        names.append(part.split("(", 1)[0])
    return sorted(set(names))
