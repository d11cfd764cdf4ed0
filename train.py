"""Train a looped GPT.

  python train.py --config=configs/shakespeare_char_looped.py
  python train.py --config=configs/shakespeare_char_looped.py --config.model.n_loop=8 --config.out_dir=out-8

Every field of the config can be overridden as --config.<section>.<field>=value; a typo is an error.
--help_config lists every field with its value and comment.
The same command runs on one CPU, an 8-GPU node and every host of a TPU pod (see README.md).
Run it again to resume (from the newest checkpoint that restores). SIGTERM at any moment saves the
last trained step if it is not saved yet and exits 0 (nanoloop_jax/train/preemption.py).
"""

import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.", lock_config=True)
flags.DEFINE_bool("help_config", False, "Print every field of --config with its value and comment, then exit.")
FLAGS = flags.FLAGS


def train(config, preemption) -> dict:
    """Distributed start-up, data, the starting state (fresh, resumed or imported), then the training loop."""
    from nanoloop_jax import sharding
    from nanoloop_jax.tasks import task_class
    from nanoloop_jax.train.metrics import MetricsLogger
    from nanoloop_jax.train.optim import make_optimizer
    from nanoloop_jax.train.runlock import lock_run
    from nanoloop_jax.train.state import start_state
    from nanoloop_jax.train.trainer import Trainer

    started = time.perf_counter()
    sharding.maybe_initialize_distributed(config.distributed)
    os.makedirs(config.out_dir, exist_ok=True)
    lock = lock_run(config.out_dir)  # one run per out_dir; released when the process ends, however it ends
    logger = MetricsLogger(config.out_dir, config, config.wandb, config.train.tensorboard)
    task_cls = task_class(config.task)
    data_meta = task_cls.prepare(config)  # the task's data, made if missing; its vocabulary
    mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.mesh)
    start = start_state(config, data_meta, make_optimizer(config.opt), mesh, rules)
    task = task_cls(config, start.model_config)
    summary = Trainer(config, start, task, mesh, rules, logger, preemption).run(started)
    del lock  # held to here
    return summary


def main(argv: list[str]) -> int:
    from nanoloop_jax.cli import entry_point_error

    if error := entry_point_error(argv, FLAGS.config):
        print(f"error: {error}", file=sys.stderr)
        return 1
    if FLAGS.help_config:
        from nanoloop_jax.config_help import help_text

        print(help_text(FLAGS.config, config_flags.get_config_filename(FLAGS["config"])))
        return 0
    from nanoloop_jax import log

    log.quiet_libraries()  # orbax logs every file it writes at INFO
    from nanoloop_jax import cpu_defaults

    cpu_defaults.apply_if_cpu()  # before jax.distributed / the first computation creates the backends
    from nanoloop_jax.errors import UserError
    from nanoloop_jax.train.preemption import Preemption

    # from the very start: a SIGTERM during distributed start-up, data preparation or restore ends the run
    preemption = Preemption().install()
    try:
        summary = train(FLAGS.config, preemption)
    except UserError as err:  # anything else is a bug: its traceback stays
        print(f"error: {err}", file=sys.stderr)
        # one line: no teardown reports of orbax's abandoned reads (a damaged checkpoint) after it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    finally:
        preemption.close()
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
