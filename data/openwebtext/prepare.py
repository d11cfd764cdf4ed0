"""OpenWebText (or any document corpus) as GPT-2 BPE tokens, as nanoGPT's data/openwebtext.

    python data/openwebtext/prepare.py                          # the HF hub dataset (~54 GB download)
    python data/openwebtext/prepare.py --dataset ~/corpus/      # local .txt/.json/.jsonl/.parquet files

For openwebtext this writes train.bin (~9B tokens, ~17 GB) and val.bin (~4M tokens) next to this
file, plus meta.json. Every document ends with <|endoftext|>; a .txt file is one document.
"""

import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout even if the package is not installed

from absl import flags  # noqa: E402

from nanoloop_jax.data.prepare import prepare_openwebtext, run_script  # noqa: E402

DATASET = flags.DEFINE_string("dataset", "openwebtext", "HF hub name, or a local file or directory")
NUM_PROC = flags.DEFINE_integer(
    "num_proc", max(1, (os.cpu_count() or 2) // 2), "tokenizer worker processes (default: half the CPU cores)"
)
TEXT_FIELD = flags.DEFINE_string("text_field", "text", "the column holding each document's text")
VAL_FRACTION = flags.DEFINE_float("val_fraction", 0.0005, "share of documents held out")
OUT_DIR = flags.DEFINE_string("out_dir", str(HERE), "where to write (default: next to this script)")


def prepare() -> None:
    prepare_openwebtext(
        OUT_DIR.value,
        dataset=DATASET.value,
        num_proc=NUM_PROC.value,
        val_fraction=VAL_FRACTION.value,
        text_field=TEXT_FIELD.value,
    )


if __name__ == "__main__":
    run_script(prepare)
