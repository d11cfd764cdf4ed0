"""Write a model as a Hugging Face directory that transformers loads with trust_remote_code=True; no torch needed.

  DIR/model.safetensors           the weights under nanoLOOP's state_dict names (ckpt/convert.state_dict_of),
                                  float32, lm_head omitted (tied to transformer.wte.weight)
  DIR/config.json                 model_type, architectures, auto_map and every architecture field (nanoLOOP names)
  DIR/generation_config.json
  DIR/configuration_nanoloop.py   copied from this package (the template modules beside this file)
  DIR/modeling_nanoloop.py
  DIR/tokenizer.json, ...         tokenizer_files.py

The directory is written complete into a temporary sibling and renamed into place, so a reader never sees half
an export; an existing non-empty DIR is kept unless overwrite=True.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile

from nanoloop_jax.ckpt.convert import state_dict_of
from nanoloop_jax.data.tokenizer import Tokenizer
from nanoloop_jax.errors import UserError
from nanoloop_jax.hf.tokenizer_files import tokenizer_files
from nanoloop_jax.model.config import FUNCTION_FIELDS, ModelConfig

HERE = pathlib.Path(__file__).resolve().parent
TEMPLATES = ("configuration_nanoloop.py", "modeling_nanoloop.py")
AUTO_MAP = {
    "AutoConfig": "configuration_nanoloop.NanoLoopConfig",
    "AutoModelForCausalLM": "modeling_nanoloop.NanoLoopForCausalLM",
}


class ExportError(UserError):
    """An export that cannot be written as asked (one-line message)."""


def hf_config(config: ModelConfig, tokenizer: Tokenizer) -> dict:
    """config.json: what AutoConfig needs to find the classes, and the architecture under nanoLOOP's names."""
    out = {
        "model_type": "nanoloop",
        "architectures": ["NanoLoopForCausalLM"],
        "auto_map": AUTO_MAP,
        **{name: getattr(config, name) for name in FUNCTION_FIELDS},
        "tie_word_embeddings": True,
        "dtype": "float32",
        "use_cache": False,  # a plain forward builds no cache; generate() does (generation_config.json)
    }
    if tokenizer.eot_token is not None:
        out.update(bos_token_id=tokenizer.eot_token, eos_token_id=tokenizer.eot_token)
    return out


def generation_config(tokenizer: Tokenizer) -> dict:
    """generation_config.json: greedy by default (as HF's) with the KV cache, stopping at <|endoftext|> when the
    vocabulary has it."""
    out = {"do_sample": False, "use_cache": True}
    if tokenizer.eot_token is not None:
        eot = tokenizer.eot_token
        out.update(bos_token_id=eot, eos_token_id=eot, pad_token_id=eot)
    return out


def check_destination(hf_dir: str, overwrite: bool) -> None:
    """An existing non-empty hf_dir is an error unless overwrite (checked before any work is done)."""
    path = pathlib.Path(hf_dir)
    if path.exists() and not path.is_dir():
        raise ExportError(f"--hf_dir={hf_dir} is a file, not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ExportError(f"--hf_dir={hf_dir} exists and is not empty; pass --overwrite to replace it")


def _write_safetensors(path: pathlib.Path, params) -> None:
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise UserError(
            "exporting to Hugging Face needs the safetensors package: run it with "
            "`uv run --extra hf python -m nanoloop_jax.tools.export_hf ...`"
        ) from None
    # format "pt": transformers loads the file as PyTorch weights
    save_file(state_dict_of(params), str(path), metadata={"format": "pt"})


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def export(hf_dir: str, config: ModelConfig, params, tokenizer: Tokenizer, *, overwrite: bool = False) -> list[str]:
    """Write the Hugging Face directory; returns the names of the files written."""
    check_destination(hf_dir, overwrite)
    if not config.causal:
        raise ExportError("this model attends both ways (model.causal=False): a causal LM export cannot run it")
    if tokenizer.vocab_size > config.vocab_size:
        raise ExportError(
            f"the {tokenizer.name} tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size}; pass the model's dataset with --data_dir"
        )
    files = {
        "config.json": _json(hf_config(config, tokenizer)),
        "generation_config.json": _json(generation_config(tokenizer)),
        **{name: (HERE / name).read_bytes() for name in TEMPLATES},
        **tokenizer_files(tokenizer, config.block_size),
    }
    dest = pathlib.Path(hf_dir).resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        _write_safetensors(tmp / "model.safetensors", params)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp makes the dir 0700 (safetensors its file 0600): as a plain write
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        _replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ["model.safetensors", *files]


def _replace(tmp: pathlib.Path, dest: pathlib.Path) -> None:
    """Rename the finished tmp dir to dest; an existing dest (empty, or overwritten) is moved aside first."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.rename(dest, old)
    try:
        os.rename(tmp, dest)
    except BaseException:
        if old is not None:
            os.rename(old, dest)  # put the previous export back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
