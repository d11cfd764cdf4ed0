"""Synthetic multi-digit addition (`a+b=` -> the sum's digits reversed), character-level, no download.

    python data/addition/prepare.py                     # train/val on 1..8 digits, test sets 1..16 digits
    python data/addition/prepare.py --max_digits=4 --out_dir=/tmp/addition4
    python data/addition/prepare.py --lengthgen --out_dir=data/addition_lengthgen   # one length per batch

Writes train.bin/val.bin (problems concatenated), train_mask.bin/val_mask.bin (1 on answer tokens),
test_<d>.json for d = 1 .. 2·max_digits and meta.json next to this file; the same seed gives the same
files. The format and layout are described in nanoloop_jax/addition.py.

--lengthgen instead writes the length-generalization layout of configs/addition_lengthgen.py
(nanoloop_jax/lengthgen_data.py): lengthgen.npz with training rows for every operand length
1..max_digits and test rows for 1..max_test_digits, digits interleaved with answer slots.

"""

import argparse
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout even if the package is not installed

from nanoloop_jax.addition import prepare_addition  # noqa: E402
from nanoloop_jax.lengthgen_data import prepare_lengthgen  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default=str(HERE), help="where to write (default: next to this script)")
    parser.add_argument("--max_digits", type=int, default=8, help="train/val operands have 1..max_digits digits")
    parser.add_argument("--max_test_digits", type=int, default=None, help="test sets 1..this (default 2·max_digits)")
    parser.add_argument("--num_train", type=int, default=500_000, help="training problems (~18 tokens each)")
    parser.add_argument("--num_val", type=int, default=10_000, help="validation problems")
    parser.add_argument("--num_test", type=int, default=1_000, help="problems per test length")
    parser.add_argument("--seed", type=int, default=0, help="every file is a pure function of this")
    parser.add_argument("--lengthgen", action="store_true", help="the one-length-per-batch layout (lengthgen.npz)")
    parser.add_argument("--num_train_per_length", type=int, default=20_000, help="--lengthgen: problems per length")
    args = parser.parse_args()
    if args.lengthgen:
        max_test = args.max_test_digits or 2 * args.max_digits
        try:
            prepare_lengthgen(
                args.out_dir,
                "addition",
                (1, args.max_digits),
                tuple(range(1, max_test + 1)),
                args.num_train_per_length,
                args.num_test,
                args.seed,
            )
        except ValueError as e:
            sys.exit(f"error: {e}")
        print(f"addition (lengthgen): train 1..{args.max_digits} digits, test 1..{max_test} -> {args.out_dir}")
        return
    try:
        meta = prepare_addition(
            args.out_dir,
            max_digits=args.max_digits,
            max_test_digits=args.max_test_digits,
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
            seed=args.seed,
        )
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(
        f"train has {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,}; "
        f"test_1..test_{meta['max_test_digits']}.json with {args.num_test:,} problems each -> {args.out_dir}"
    )


if __name__ == "__main__":
    main()
