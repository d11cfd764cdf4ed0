"""Synthetic multi-digit addition (`a+b=` -> the sum's digits reversed), character-level, no download.

    python data/addition/prepare.py                     # train/val on 1..8 digits, test sets 1..16 digits
    python data/addition/prepare.py --max_digits=4 --out_dir=/tmp/addition4
    python data/addition/prepare.py --lengthgen --out_dir=data/addition_lengthgen   # one length per batch

Writes train.bin/val.bin (problems concatenated), train_mask.bin/val_mask.bin (1 on answer tokens),
test_<d>.json for d = 1 .. 2·max_digits and meta.json next to this file; the same seed gives the same
files. The format and layout are described in nanoloop_jax/tasks/addition/data.py.

--lengthgen instead writes the length-generalization layout of configs/addition_lengthgen.py
(nanoloop_jax/tasks/lengthgen/data.py): lengthgen.npz with training rows for every operand length
1..max_digits and test rows for 1..max_test_digits, digits interleaved with answer slots.

"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout even if the package is not installed

from absl import flags  # noqa: E402

from nanoloop_jax.data.prepare import run_script  # noqa: E402
from nanoloop_jax.tasks.addition.data import prepare_addition  # noqa: E402
from nanoloop_jax.tasks.lengthgen.data import prepare_lengthgen  # noqa: E402

OUT_DIR = flags.DEFINE_string("out_dir", str(HERE), "where to write (default: next to this script)")
MAX_DIGITS = flags.DEFINE_integer("max_digits", 8, "train/val operands have 1..max_digits digits")
MAX_TEST_DIGITS = flags.DEFINE_integer("max_test_digits", None, "test sets 1..this (default 2·max_digits)")
NUM_TRAIN = flags.DEFINE_integer("num_train", 500_000, "training problems (~18 tokens each)")
NUM_VAL = flags.DEFINE_integer("num_val", 10_000, "validation problems")
NUM_TEST = flags.DEFINE_integer("num_test", 1_000, "problems per test length")
SEED = flags.DEFINE_integer("seed", 0, "every file is a pure function of this")
LENGTHGEN = flags.DEFINE_boolean("lengthgen", False, "the one-length-per-batch layout (lengthgen.npz)")
NUM_TRAIN_PER_LENGTH = flags.DEFINE_integer("num_train_per_length", 20_000, "--lengthgen: problems per length")


def prepare() -> None:
    if LENGTHGEN.value:
        max_test = MAX_TEST_DIGITS.value or 2 * MAX_DIGITS.value
        train, tests = (1, MAX_DIGITS.value), tuple(range(1, max_test + 1))
        prepare_lengthgen(
            OUT_DIR.value, "addition", train, tests, NUM_TRAIN_PER_LENGTH.value, NUM_TEST.value, SEED.value
        )
        print(f"addition (lengthgen): train 1..{MAX_DIGITS.value} digits, test 1..{max_test} -> {OUT_DIR.value}")
        return
    meta = prepare_addition(
        OUT_DIR.value,
        max_digits=MAX_DIGITS.value,
        max_test_digits=MAX_TEST_DIGITS.value,
        num_train=NUM_TRAIN.value,
        num_val=NUM_VAL.value,
        num_test=NUM_TEST.value,
        seed=SEED.value,
    )
    print(
        f"train has {meta['train_tokens']:,} tokens, val {meta['val_tokens']:,}; "
        f"test_1..test_{meta['max_test_digits']}.json with {NUM_TEST.value:,} problems each -> {OUT_DIR.value}"
    )


if __name__ == "__main__":
    run_script(prepare, errors=(ValueError,))
