"""The documents of lm-eval's nanoloop_val_text task: a prepared dataset's val.bin, decoded, split at blank lines."""

from __future__ import annotations

import os

import numpy as np


def val_documents(data_dir: str = "data/shakespeare_char", **kwargs) -> dict:
    """{"test": datasets.Dataset of {"text": paragraph}} from data_dir/val.bin and the dataset's tokenizer."""
    import datasets

    from nanoloop_jax.data.tokenizer import load_tokenizer

    del kwargs  # lm-eval passes its task metadata too
    path = os.path.join(data_dir, "val.bin")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: prepare the dataset (python data/<name>/prepare.py) or pass "
            '--metadata \'{"data_dir": "data/<name>"}\''
        )
    text = load_tokenizer(data_dir).decode(np.fromfile(path, dtype=np.uint16).tolist())
    documents = [p.strip("\n") for p in text.split("\n\n") if p.strip()]
    return {"test": datasets.Dataset.from_dict({"text": documents})}
