"""Tiny-shakespeare as characters (65-symbol vocab), as nanoGPT's data/shakespeare_char.

    python data/shakespeare_char/prepare.py               # downloads input.txt next to this file
    python data/shakespeare_char/prepare.py --input PATH  # offline: a local copy of the text

Writes train.bin (1,003,854 tokens), val.bin (111,540 tokens) and meta.json next to this file.
"""

import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout even if the package is not installed

from nanoloop_jax.data import DataError  # noqa: E402
from nanoloop_jax.prepare import prepare_shakespeare_char  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", help="local tiny-shakespeare text (default: download)")
    parser.add_argument("--out_dir", default=str(HERE), help="where to write (default: next to this script)")
    args = parser.parse_args()
    try:
        prepare_shakespeare_char(args.out_dir, args.input)
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
