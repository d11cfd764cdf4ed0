"""Parity for length generalization (bit string -> parity bit), no download.

    python data/parity/prepare.py                       # train lengths 1..20, test lengths 5, 10, .., 50
    python data/parity/prepare.py --max_length=10 --test_lengths=5,10,20 --out_dir=/tmp/parity10

Writes lengthgen.npz (train rows for every length, test rows per test length) and meta.json next to this
file; the same seed gives the same files. Format and layout: nanoloop_jax/tasks/lengthgen/data.py. train.py
runs this itself for configs/parity_lengthgen.py when the data is missing.
"""

import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout even if the package is not installed

from absl import flags  # noqa: E402

from nanoloop_jax.data.prepare import run_script  # noqa: E402
from nanoloop_jax.tasks.lengthgen.data import prepare_lengthgen  # noqa: E402

OUT_DIR = flags.DEFINE_string("out_dir", str(HERE), "where to write (default: next to this script)")
MIN_LENGTH = flags.DEFINE_integer("min_length", 1, "shortest training input (bits)")
MAX_LENGTH = flags.DEFINE_integer("max_length", 20, "longest training input (bits)")
TEST_LENGTHS = flags.DEFINE_list("test_lengths", "5,10,15,20,25,30,35,40,45,50", "comma-separated test lengths")
NUM_TRAIN = flags.DEFINE_integer("num_train", 20_000, "training problems per length")
NUM_TEST = flags.DEFINE_integer("num_test", 500, "test problems per length")
SEED = flags.DEFINE_integer("seed", 0, "every file is a pure function of this")
flags.register_validator(
    "test_lengths", lambda lengths: all(s.isdigit() for s in lengths if s), "must be whole numbers, e.g. 5,10,20"
)


def prepare() -> None:
    tests = tuple(int(s) for s in TEST_LENGTHS.value if s)
    train = (MIN_LENGTH.value, MAX_LENGTH.value)
    prepare_lengthgen(OUT_DIR.value, "parity", train, tests, NUM_TRAIN.value, NUM_TEST.value, SEED.value)
    print(f"parity: train lengths {train[0]}..{train[1]}, test lengths {tests} -> {OUT_DIR.value}")


if __name__ == "__main__":
    run_script(prepare, errors=(ValueError,))
