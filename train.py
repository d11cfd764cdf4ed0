"""Train a looped GPT.

  python train.py --config=configs/shakespeare_char_looped.py
  python train.py --config=configs/shakespeare_char_looped.py --config.model.n_loop=8 --config.out_dir=out-8

Every field of the config can be overridden as --config.<section>.<field>=value; a typo is an error.
The same command runs on one CPU, an 8-GPU node and every host of a TPU pod (see README.md).
Run it again to resume (from the newest checkpoint that restores). SIGTERM at any moment saves the
last trained step if it is not saved yet and exits 0 (nanoloop_jax/preemption.py).
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; use --config.<field>=value", file=sys.stderr)
        return 1
    if FLAGS.config is None:
        print("error: pass --config=configs/<name>.py (see configs/)", file=sys.stderr)
        return 1
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    from nanoloop_jax import cpu_defaults

    cpu_defaults.apply_if_cpu()  # before jax.distributed / the first computation creates the backends
    from nanoloop_jax.checkpoint import CheckpointError
    from nanoloop_jax.data import DataError
    from nanoloop_jax.trainer import Trainer, TrainingError

    try:
        summary = Trainer(FLAGS.config).run()
    except (DataError, TrainingError, CheckpointError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        # one line: no teardown reports of orbax's abandoned reads (a damaged checkpoint) after it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    if "preempted_at" in summary:
        # the checkpoint is written and the logs closed; the machine is going away, and tearing down the
        # interpreter (JAX's backends, orbax's threads) takes a second or more, far more on a loaded host
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    from nanoloop_jax.cli import parse_flags

    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
