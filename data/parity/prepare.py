"""Parity for length generalization (bit string -> parity bit), no download.

    python data/parity/prepare.py                       # train lengths 1..20, test lengths 5, 10, .., 50
    python data/parity/prepare.py --max_length=10 --test_lengths=5,10,20 --out_dir=/tmp/parity10

Writes lengthgen.npz (train rows for every length, test rows per test length) and meta.json next to this
file; the same seed gives the same files. Format and layout: nanoloop_jax/lengthgen_data.py. train.py
runs this itself for configs/parity_lengthgen.py when the data is missing.
"""

import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout even if the package is not installed

from nanoloop_jax.lengthgen_data import prepare_lengthgen  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out_dir", default=str(HERE), help="where to write (default: next to this script)")
    p.add_argument("--min_length", type=int, default=1, help="shortest training input (bits)")
    p.add_argument("--max_length", type=int, default=20, help="longest training input (bits)")
    p.add_argument("--test_lengths", default="5,10,15,20,25,30,35,40,45,50", help="comma-separated test lengths")
    p.add_argument("--num_train", type=int, default=20_000, help="training problems per length")
    p.add_argument("--num_test", type=int, default=500, help="test problems per length")
    p.add_argument("--seed", type=int, default=0, help="every file is a pure function of this")
    args = p.parse_args()
    tests = tuple(int(s) for s in args.test_lengths.split(",") if s.strip())
    try:
        prepare_lengthgen(
            args.out_dir, "parity", (args.min_length, args.max_length), tests, args.num_train, args.num_test, args.seed
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(f"parity: train lengths {args.min_length}..{args.max_length}, test lengths {tests} -> {args.out_dir}")


if __name__ == "__main__":
    main()
