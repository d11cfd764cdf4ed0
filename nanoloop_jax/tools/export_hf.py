"""Export a checkpoint as a Hugging Face model that transformers and lm-eval load (trust_remote_code=True).

  python -m nanoloop_jax.tools.export_hf --out_dir=out-shakespeare-char-looped --hf_dir=hf-shakespeare-char-looped
  python -m nanoloop_jax.tools.export_hf --ckpt=nanoloop/ckpt.pt --data_dir=data/shakespeare_char --hf_dir=hf-model

Needs safetensors and tokenizers (the [hf] extra), not torch. The tokenizer is the checkpoint's dataset's
(meta.json's characters, or --data_dir), else GPT-2 BPE, as in sample.py. nanoloop_jax/hf/export.py writes it.
"""

from __future__ import annotations

import os

from absl import flags

from nanoloop_jax import cli
from nanoloop_jax.ckpt import loading
from nanoloop_jax.data.batches import load_meta
from nanoloop_jax.data.tokenizer import load_tokenizer
from nanoloop_jax.errors import UserError
from nanoloop_jax.hf.export import check_destination, export

GPT2_VOCAB = 50257


def define_flags(fv: flags.FlagValues) -> None:
    """The tool's flags, on fv (defined when the tool runs, not at import: absl flags are process-wide)."""
    flags.DEFINE_string(
        "out_dir", None, "Directory with a nanoloop-jax checkpoint or a nanoLOOP ckpt.pt.", flag_values=fv
    )
    flags.DEFINE_string("ckpt", None, "A nanoLOOP ckpt.pt to export instead of --out_dir.", flag_values=fv)
    flags.DEFINE_string("hf_dir", None, "The Hugging Face directory to write.", flag_values=fv)
    flags.DEFINE_string(
        "data_dir", None, "Dataset dir whose meta.json gives the tokenizer (default: the checkpoint's).", flag_values=fv
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing non-empty --hf_dir.", flag_values=fv)


def run_export(
    out_dir: str | None, ckpt: str | None, hf_dir: str | None, data_dir: str | None, overwrite: bool
) -> None:
    """Load the checkpoint and its tokenizer, then write hf_dir."""
    if not hf_dir:
        raise UserError("pass --hf_dir=DIR, the Hugging Face directory to write")
    if not out_dir and not ckpt:
        raise UserError("pass --out_dir=RUN (a nanoloop-jax run or a dir with ckpt.pt) or --ckpt=ckpt.pt")
    check_destination(hf_dir, overwrite)  # before the checkpoint is read
    loaded = loading.load_model(out_dir, ckpt)
    data_dir = data_dir or loaded.data_dir
    meta = load_meta(data_dir) if data_dir and os.path.isdir(data_dir) else None
    n_vocab = loaded.model_config.vocab_size
    if (meta is None or "stoi" not in meta) and n_vocab < GPT2_VOCAB:
        # not a GPT-2 model: say where the characters are missing instead of loading GPT-2's files
        where = f"{data_dir} has no meta.json with its characters" if data_dir else "its checkpoint names no dataset"
        raise UserError(f"this model has {n_vocab} tokens (not GPT-2's {GPT2_VOCAB}) and {where}; pass --data_dir")
    tokenizer = load_tokenizer(meta)
    names = export(hf_dir, loaded.model_config, loaded.params, tokenizer, overwrite=overwrite)
    print(
        f"wrote {hf_dir} from {loaded.description}: {', '.join(names)} "
        f"(tokenizer: {tokenizer.name}, {tokenizer.vocab_size} tokens; n_loop {loaded.model_config.n_loop})"
    )


def run(fv: flags.FlagValues, args: list[str]) -> int:
    del args
    return cli.report_errors(lambda: run_export(fv.out_dir, fv.ckpt, fv.hf_dir, fv.data_dir, fv.overwrite))


if __name__ == "__main__":
    cli.run_tool(define_flags, run)
