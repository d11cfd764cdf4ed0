"""A model to run, from either format: a nanoloop-jax orbax checkpoint or a nanoLOOP ckpt.pt.

Glue above both formats (checkpoint.py knows orbax, convert.py knows nanoLOOP's state dict); neither
imports this module. sample.py and the tools load through `load_model`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from nanoloop_jax.ckpt import checkpoint, convert
from nanoloop_jax.data.batches import data_dir_of
from nanoloop_jax.model.config import ModelConfig


@dataclasses.dataclass
class InferenceModel:
    """A model to evaluate or sample: weights, config, the dataset dir its checkpoint names, and a label."""

    model_config: ModelConfig
    params: Any
    data_dir: str | None
    description: str


def load_model(out_dir: str | None, ckpt: str | None = None) -> InferenceModel:
    """Params from OUT_DIR's orbax checkpoint, else from a nanoLOOP ckpt.pt (--ckpt, or OUT_DIR/ckpt.pt)."""
    if ckpt is None and out_dir and checkpoint.latest_step(out_dir) is not None:
        loaded = checkpoint.load_params(out_dir)
        run_config = loaded.meta.get("config")  # absent only in checkpoints written before it was recorded
        data_dir = data_dir_of(run_config["data"]) if run_config else None
        return InferenceModel(loaded.model_config, loaded.params, data_dir, f"{out_dir} (step {loaded.step})")
    pt_path = ckpt or os.path.join(out_dir or ".", "ckpt.pt")
    if not os.path.isfile(pt_path):
        where = f"{ckpt} does not exist" if ckpt else f"no checkpoint in {out_dir} (no checkpoints/ and no ckpt.pt)"
        raise checkpoint.CheckpointError(f"{where}; train one with train.py or pass --ckpt=PATH")
    raw = convert.load_nanoloop_ckpt(pt_path)
    config, params = convert.from_nanoloop(raw["model"], raw["model_args"])
    data_dir = data_dir_of(convert.nanoloop_data(raw.get("config")))
    return InferenceModel(config, params, data_dir, f"{pt_path} (nanoLOOP)")
