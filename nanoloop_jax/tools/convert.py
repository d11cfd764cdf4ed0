"""Convert a nanoLOOP (PyTorch) ckpt.pt to a nanoloop-jax checkpoint, or back.

  python -m nanoloop_jax.tools.convert ckpt.pt OUT_DIR                 # nanoLOOP ckpt.pt -> nanoloop-jax checkpoint
  python -m nanoloop_jax.tools.convert OUT_DIR ckpt.pt --to-nanoloop   # and back (writing needs the [torch] extra)

The name mapping and the ckpt.pt reader and writer are nanoloop_jax/ckpt/convert.py; the orbax side is
nanoloop_jax/ckpt/checkpoint.py. This command line is the only place that knows both.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from nanoloop_jax import cli
from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.ckpt.convert import (
    ConversionError,
    from_nanoloop,
    load_nanoloop_ckpt,
    nanoloop_data,
    save_nanoloop_ckpt,
)

USAGE = "usage: python -m nanoloop_jax.tools.convert SRC DST [--to-nanoloop]"


def define_flags(fv: flags.FlagValues) -> None:
    """The tool's flags, on fv (defined when the tool runs, not at import: absl flags are process-wide)."""
    # the dash is the documented spelling; absl takes it as the flag's name
    flags.DEFINE_boolean(
        "to-nanoloop", False, "SRC is a nanoloop-jax OUT_DIR and DST the ckpt.pt to write", flag_values=fv
    )


def to_orbax(src: str, dst: str) -> None:
    """nanoLOOP ckpt.pt SRC -> nanoloop-jax checkpoint in DST (a new directory, or one without checkpoints)."""
    ckpt = load_nanoloop_ckpt(src)
    config, params = from_nanoloop(ckpt["model"], ckpt["model_args"])
    if steps := checkpoint.all_steps(dst):
        raise ConversionError(
            f"{dst} already holds a nanoloop-jax checkpoint (steps {', '.join(map(str, steps))}); "
            "convert into a new directory"
        )
    data = nanoloop_data(ckpt.get("config"))
    checkpoint.write_params_only(
        dst,
        config,
        params,
        step=int(ckpt.get("iter_num", 0)),
        best_val_loss=float(ckpt.get("best_val_loss", 1e9)),
        source={"converted_from": str(src), "nanoloop_config": ckpt.get("config", {})},
        dataset=data["dataset"],
        data_dir=data["data_dir"],
    )
    print(f"wrote nanoloop-jax checkpoint to {dst} (iter {ckpt.get('iter_num', 0)})")


def to_nanoloop(src: str, dst: str) -> None:
    """nanoloop-jax checkpoint in SRC -> nanoLOOP ckpt.pt DST, with the run's config (its dataset) as nanoLOOP's."""
    if os.path.isdir(dst):
        raise ConversionError(f"{dst} is a directory; name the file to write, e.g. {os.path.join(dst, 'ckpt.pt')}")
    loaded = checkpoint.load_params(src)
    save_nanoloop_ckpt(
        dst,
        loaded.model_config,
        loaded.params,
        iter_num=loaded.step,
        best_val_loss=loaded.best_val_loss,
        run_config=loaded.meta.get("config"),  # absent only in checkpoints written before it was recorded
    )
    print(f"wrote nanoLOOP checkpoint {dst} (iter {loaded.step})")


def run(fv: flags.FlagValues, args: list[str]) -> int:
    """Convert args = [SRC, DST] in the direction of the flags."""
    if len(args) != 2:
        print(f"error: expected SRC and DST, got {args}; {USAGE}", file=sys.stderr)
        return 1
    convert = to_nanoloop if fv["to-nanoloop"].value else to_orbax
    return cli.report_errors(lambda: convert(*args))


if __name__ == "__main__":
    cli.run_tool(define_flags, run, takes_args=True)
