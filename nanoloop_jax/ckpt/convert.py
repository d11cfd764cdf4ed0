"""Two-way conversion between nanoLOOP (PyTorch) state_dicts and nanoloop-jax params.

nanoLOOP name                          nanoloop-jax path
transformer.wte.weight (V, D)          wte/embedding (V, D)       (lm_head.weight is tied to it)
transformer.wpe.weight                 wpe/embedding
transformer.prelude.{j}.<block>        prelude_{j}/<block>
transformer.recur.{j}.<block>          loop/recur_{j}/<block>
transformer.coda.{j}.<block>           coda_{j}/<block>
transformer.ln_f.weight                ln_f/scale
norm_recur.weight                      loop/norm_recur/scale
inject.weight (D, 2D)                  loop/inject/kernel (2D, D)
<block>: ln_1.weight -> ln_1/scale, attn.c_attn.weight (3D, D) -> attn/c_attn/kernel (D, 3D), ...
PyTorch Linear weights are (out, in); ours are (in, out), hence the transposes.

Command line (nanoloop_jax/tools/convert.py; writing the orbax side is checkpoint.py's, so this module never
imports it):
  python -m nanoloop_jax.tools.convert ckpt.pt OUT_DIR                 # nanoLOOP ckpt.pt -> nanoloop-jax
  python -m nanoloop_jax.tools.convert OUT_DIR ckpt.pt --to-nanoloop   # and back (writing needs the [torch] extra)

Reading a ckpt.pt needs no PyTorch: torch_ckpt unpickles tensors and plain values only.
"""

from __future__ import annotations

import re

import numpy as np
from flax import traverse_util

from nanoloop_jax.errors import UserError
from nanoloop_jax.model.config import ARCH_FIELDS, ModelConfig
from nanoloop_jax.model.looped import abstract_params

_TORCH_PREFIX = "_orig_mod."  # torch.compile wraps the module and prefixes every key
_SECTION = {"prelude": "prelude_{}", "recur": "loop/recur_{}", "coda": "coda_{}"}
_JAX_SECTION = re.compile(r"^(prelude|coda)_(\d+)/(.*)$|^loop/recur_(\d+)/(.*)$")
_GPT_FIELDS = (*ARCH_FIELDS, "dropout", "bptt_k")  # nanoLOOP's GPTConfig


class ConversionError(UserError, ValueError):
    """A state_dict that does not fit the model it claims to be."""


def _leaf_to_jax(leaf: str) -> tuple[str, bool]:
    """Map the tail of a torch name ('attn.c_attn.weight') to ('attn/c_attn/kernel', transpose?)."""
    parts = leaf.split(".")
    kind = parts[-1]
    module = "/".join(parts[:-1])
    if module.split("/")[-1].startswith("ln") or module == "norm_recur":
        if kind != "weight":
            raise ConversionError(f"unexpected norm parameter {leaf!r} (RMSNorm has only a weight)")
        return f"{module}/scale", False
    return f"{module}/{'kernel' if kind == 'weight' else 'bias'}", kind == "weight"


def torch_name_to_jax(name: str) -> tuple[str, bool]:
    """A nanoLOOP state_dict key -> (slash-separated params path, whether to transpose)."""
    if name.startswith("transformer."):
        rest = name[len("transformer.") :]
        if rest in ("wte.weight", "wpe.weight"):
            return f"{rest.split('.')[0]}/embedding", False
        if rest == "ln_f.weight":
            return "ln_f/scale", False
        section, j, leaf = rest.split(".", 2)
        path, transpose = _leaf_to_jax(leaf)
        return f"{_SECTION[section].format(j)}/{path}", transpose
    if name.startswith(("inject.", "norm_recur.")):
        path, transpose = _leaf_to_jax(name)
        return f"loop/{path}", transpose
    raise ConversionError(f"unknown nanoLOOP parameter {name!r}")


def jax_path_to_torch(path: str) -> str:
    """Inverse of torch_name_to_jax for a slash-separated params path."""
    if path in ("wte/embedding", "wpe/embedding"):
        return f"transformer.{path.split('/')[0]}.weight"
    if path == "ln_f/scale":
        return "transformer.ln_f.weight"
    leaf_map = {"scale": "weight", "kernel": "weight", "bias": "bias"}
    *module, kind = path.split("/")
    module = "/".join(module)
    if module in ("loop/inject", "loop/norm_recur"):
        return f"{module.split('/')[1]}.{leaf_map[kind]}"
    if module == "exit_gate":  # not in nanoLOOP (to_nanoloop refuses it); the Hugging Face export keeps it
        return f"exit_gate.{leaf_map[kind]}"
    m = _JAX_SECTION.match(module + "/")
    if m is None:
        raise ConversionError(f"unknown nanoloop-jax parameter {path!r}")
    section, j, inner = ("recur", m.group(4), m.group(5)) if m.group(4) else (m.group(1), m.group(2), m.group(3))
    inner = inner.rstrip("/").replace("/", ".")
    return f"transformer.{section}.{j}.{inner}.{leaf_map[kind]}"


def config_from_model_args(model_args: dict, **jax_knobs) -> ModelConfig:
    """ModelConfig from nanoLOOP's model_args dict (its GPTConfig fields) plus optional JAX knobs."""
    unknown = set(model_args) - set(_GPT_FIELDS)
    if unknown:
        raise ConversionError(f"unknown nanoLOOP model_args {sorted(unknown)}")
    return ModelConfig(**{k: model_args[k] for k in _GPT_FIELDS if k in model_args}, **jax_knobs).validate()


def model_args_from_config(config: ModelConfig) -> dict:
    """nanoLOOP's model_args dict for a ModelConfig (JAX-only knobs dropped)."""
    return {k: getattr(config, k) for k in _GPT_FIELDS}


def from_nanoloop(state_dict: dict, model_args: dict, **jax_knobs) -> tuple[ModelConfig, dict]:
    """nanoLOOP state_dict (name -> array) and model_args -> (ModelConfig, params as numpy float32)."""
    config = config_from_model_args(model_args, **jax_knobs)
    sd = {(k[len(_TORCH_PREFIX) :] if k.startswith(_TORCH_PREFIX) else k): np.asarray(v) for k, v in state_dict.items()}
    head = sd.pop("lm_head.weight", None)
    if head is not None and "transformer.wte.weight" in sd and not np.array_equal(head, sd["transformer.wte.weight"]):
        raise ConversionError("lm_head.weight differs from transformer.wte.weight; nanoLOOP ties them")
    flat = {}
    for name, value in sd.items():
        path, transpose = torch_name_to_jax(name)
        flat[path] = np.ascontiguousarray(value.T if transpose else value).astype(np.float32)
    params = traverse_util.unflatten_dict(flat, sep="/")
    _check_against_config(config, params)
    return config, params


def to_nanoloop(config: ModelConfig, params: dict) -> tuple[dict[str, np.ndarray], dict]:
    """(ModelConfig, params) -> (nanoLOOP state_dict with numpy arrays, model_args); inverse of from_nanoloop."""
    if config.pos_encoding != "learned":  # nanoLOOP has only the learned wpe table: no rope, no NoPE
        raise ConversionError(
            f"nanoLOOP checkpoints need model.pos_encoding='learned'; this model uses {config.pos_encoding!r}"
        )
    if config.exit_gate:  # nanoLOOP's GPT has no halting gate: the file would silently drop it
        raise ConversionError("nanoLOOP checkpoints have no exit gate; this model has one (model.exit_gate=True)")
    sd = state_dict_of(params)
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd, model_args_from_config(config)


def state_dict_of(params: dict) -> dict[str, np.ndarray]:
    """params -> {nanoLOOP name: float32 numpy array}, Linear weights transposed to PyTorch's (out, in); no
    lm_head (tied to wte). Any position encoding and the exit gate are kept (the Hugging Face export's weights)."""
    sd = {}
    for path, value in traverse_util.flatten_dict(params, sep="/").items():
        value = np.asarray(value, dtype=np.float32)
        name = jax_path_to_torch(path)
        sd[name] = np.ascontiguousarray(value.T) if path.endswith("/kernel") else value
    return sd


def _check_against_config(config: ModelConfig, params: dict) -> None:
    """Compare every shape with a freshly initialised model of this config; one line per mismatch."""
    want = {p: tuple(v.shape) for p, v in traverse_util.flatten_dict(abstract_params(config), sep="/").items()}
    got = {p: tuple(v.shape) for p, v in traverse_util.flatten_dict(params, sep="/").items()}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ConversionError(
            f"state_dict does not match model_args: missing {[jax_path_to_torch(p) for p in missing]}, "
            f"unexpected {[jax_path_to_torch(p) for p in extra]}"
        )
    bad = [f"{jax_path_to_torch(p)} {got[p]} != {want[p]}" for p in want if want[p] != got[p]]
    if bad:
        raise ConversionError(f"shape mismatch: {'; '.join(bad)}")


# The run-config sections nanoLOOP's train.py keeps as flat globals (and saves as ckpt['config']).
_FLAT_SECTIONS = ("model", "data", "opt", "train")


def nanoloop_run_config(run_config: dict) -> dict:
    """A nanoloop-jax run config (its JSON dict) as nanoLOOP's ckpt['config']: one flat dict of the scalar
    settings (dataset, batch_size, learning_rate, max_iters, ...), as nanoLOOP's train.py saves its globals.

    `data_dir` is ours (nanoLOOP finds data/<dataset>); nanoLOOP ignores keys it does not read."""
    flat = {k: v for k, v in run_config.items() if isinstance(v, int | float | str | bool)}
    for section in _FLAT_SECTIONS:
        for k, v in run_config.get(section, {}).items():
            if isinstance(v, int | float | str | bool):
                flat.setdefault(k, v)
    return flat


def nanoloop_data(nanoloop_config: dict | None) -> dict:
    """The `data` section (dataset, data_dir) that a ckpt['config'] names; '' where it names none."""
    cfg = nanoloop_config or {}
    return {"dataset": cfg.get("dataset") or "", "data_dir": cfg.get("data_dir") or ""}


def _import_torch():
    try:
        import torch
    except ImportError:
        raise UserError(
            "writing a nanoLOOP ckpt.pt needs PyTorch: run with `uv run --extra torch python -m ...` (adds it, keeping "
            "the other extras; `uv sync` installs exactly the extras it names), or `pip install 'nanoloop-jax[torch]'`"
        ) from None
    return torch


def load_nanoloop_ckpt(path: str) -> dict:
    """Read a nanoLOOP ckpt.pt without PyTorch (torch_ckpt: tensors and plain values only, never other objects)."""
    from nanoloop_jax.ckpt import torch_ckpt

    try:
        ckpt = torch_ckpt.load(path)
    except torch_ckpt.TorchCheckpointError as err:
        raise ConversionError(f"cannot read {path}: {err}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise ConversionError(f"{path} is not a nanoLOOP checkpoint (expected keys 'model' and 'model_args')")
    out = dict(ckpt)
    out["model"] = {k: np.asarray(v, dtype=np.float32) for k, v in ckpt["model"].items()}
    return out


def save_nanoloop_ckpt(
    path: str,
    config: ModelConfig,
    params: dict,
    iter_num: int = 0,
    best_val_loss: float = 1e9,
    run_config: dict | None = None,
) -> None:
    """Write a ckpt.pt that nanoLOOP's sample.py / train.py (resume, fresh optimizer) can load; `run_config` (a
    nanoloop-jax run config's JSON dict) becomes its flat `config`, so nanoLOOP finds the dataset."""
    torch = _import_torch()
    sd, model_args = to_nanoloop(config, jax_to_numpy(params))
    ckpt = {
        "model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
        "model_args": model_args,
        "iter_num": int(iter_num),
        "best_val_loss": float(best_val_loss),
        "config": nanoloop_run_config(run_config or {}),
    }
    torch.save(ckpt, path)


def jax_to_numpy(tree):
    """Fetch a (possibly sharded) params tree to host numpy arrays."""
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)
