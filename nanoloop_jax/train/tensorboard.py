"""TensorBoard event files beside metrics.jsonl (config.train.tensorboard), written by tensorboardX: no
TensorFlow. Every numeric field of every metrics record becomes the scalar `<event>/<field>` at its step, so the
curves are metrics.jsonl's numbers: train/loss, train/lr, train/time_ms (the step's time), train/tokens_per_s,
train/mfu (GPU/TPU), train/n_loop (the step's depth), eval/val and eval/val_n_loop_<d> (val loss per eval
depth), eval/train, eval/eval_s, checkpoint/save_s.

View them with `tensorboard --logdir OUT_DIR/tensorboard` (e.g. `uvx tensorboard --logdir ...`).
"""

from __future__ import annotations

import os

SUBDIR = "tensorboard"  # under out_dir
NOT_SCALARS = ("step", "time", "event")


class TensorBoardWriter:
    """Opened at the first record: a resumed run starts at its checkpoint's step, and events an earlier
    process wrote from that step on (before it was stopped) are purged from the view."""

    def __init__(self, out_dir: str) -> None:
        self.logdir = os.path.join(out_dir, SUBDIR)
        self._writer = None

    def write(self, record: dict) -> None:
        step = record["step"]
        if self._writer is None:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(self.logdir, purge_step=step or None)
        for key, value in record.items():
            if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, int | float):
                continue  # mfu is None where the device has no known peak
            self._writer.add_scalar(f"{record['event']}/{key}", value, global_step=step, walltime=record["time"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
