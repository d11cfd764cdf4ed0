"""Tiny-shakespeare as GPT-2 BPE tokens, as nanoGPT's data/shakespeare.

    python data/shakespeare/prepare.py               # downloads input.txt next to this file
    python data/shakespeare/prepare.py --input PATH  # offline: a local copy of the text

Writes train.bin (301,966 tokens), val.bin (36,059 tokens) and meta.json next to this file.
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout even if the package is not installed

from nanoloop_jax.data.prepare import prepare_shakespeare, run_shakespeare_script  # noqa: E402

if __name__ == "__main__":
    run_shakespeare_script(prepare_shakespeare, HERE)  # flags --input, --out_dir
