"""OpenWebText (or any document corpus) as GPT-2 BPE tokens, as nanoGPT's data/openwebtext.

    python data/openwebtext/prepare.py                          # the HF hub dataset (~54 GB download)
    python data/openwebtext/prepare.py --dataset ~/corpus/      # local .txt/.json/.jsonl/.parquet files

For openwebtext this writes train.bin (~9B tokens, ~17 GB) and val.bin (~4M tokens) next to this
file, plus meta.json. Every document ends with <|endoftext|>; a .txt file is one document.
"""

import argparse
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout even if the package is not installed

from nanoloop_jax.data import DataError  # noqa: E402
from nanoloop_jax.prepare import prepare_openwebtext  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="openwebtext", help="HF hub name, or a local file or directory")
    parser.add_argument(
        "--num_proc",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="tokenizer worker processes (default: half the CPU cores)",
    )
    parser.add_argument("--text_field", default="text", help="the column holding each document's text")
    parser.add_argument("--val_fraction", type=float, default=0.0005, help="share of documents held out")
    parser.add_argument("--out_dir", default=str(HERE), help="where to write (default: next to this script)")
    args = parser.parse_args()
    try:
        prepare_openwebtext(
            args.out_dir,
            dataset=args.dataset,
            num_proc=args.num_proc,
            val_fraction=args.val_fraction,
            text_field=args.text_field,
        )
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
