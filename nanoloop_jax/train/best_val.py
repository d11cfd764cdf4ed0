"""train.final_eval = 'best_val': the task's final evaluation reads the params of the lowest val loss, not the last.

A run whose val loss rises over its last evals (a late instability at low loss; configs/multiadd_looped.py went
from 0.017 at step 5,500 to 0.084 at 6,000 in one run) would otherwise be judged on its worst late state. Every
eval that lowers the val loss writes the params, synchronously and atomically, as the one step of
OUT_DIR/best_val/ (a run directory of its own: `python -m nanoloop_jax.tools.eval_lengthgen
--out_dir=OUT_DIR/best_val`, `sample.py --out_dir=OUT_DIR/best_val` read it), so a resumed run still finishes
on the best params of all its segments. The val loss selects among evals, so a task's accuracy on the val
lengths is measured on the set that selected it; lengths never trained are not.
"""

from __future__ import annotations

import os

import jax

from nanoloop_jax import log
from nanoloop_jax.ckpt import checkpoint
from nanoloop_jax.errors import ConfigError

logger = log.get(__name__)

FINAL_EVALS = ("last", "best_val")
SUBDIR = "best_val"


def check(train_cfg) -> None:
    if train_cfg.final_eval not in FINAL_EVALS:
        raise ConfigError(f"train.final_eval must be one of {FINAL_EVALS}, got {train_cfg.final_eval!r}")


def best_dir(out_dir: str) -> str:
    return os.path.join(out_dir, SUBDIR)


class BestVal:
    """Keeps OUT_DIR/best_val/ at the params of the lowest val loss seen (every process calls, as for saves)."""

    def __init__(self, config) -> None:
        self.out_dir = best_dir(config.out_dir)
        self.config = config

    def save(self, step: int, params, meta: dict) -> None:
        """The params of `step` (whose val loss is meta's best_val_loss) replace the kept ones; config.json beside
        them, as in every run directory."""
        mngr = checkpoint.manager(self.out_dir, max_to_keep=1, async_save=False)
        try:
            checkpoint.save(mngr, step, params=params, opt_state=None, meta=meta)
            mngr.wait_until_finished()
        finally:
            mngr.close()
        if jax.process_index() == 0:
            checkpoint.write_run_config(self.out_dir, self.config)

    def params(self, last_step: int, last_params, sharding):
        """(params, step) the final evaluation reads: the kept best, or the last step's if none was kept."""
        if checkpoint.latest_step(self.out_dir) is None:
            logger.warning(f"final evaluation: no best-val params in {self.out_dir}; using the last step {last_step}")
            return last_params, last_step
        loaded = checkpoint.load_params(self.out_dir, sharding=sharding)
        which = "the last step too" if loaded.step == last_step else f"not the last step {last_step}"
        logger.info(
            f"final evaluation: the best-val params of step {loaded.step} (val loss {loaded.best_val_loss:.4f}, "
            f"{self.out_dir}), {which} (train.final_eval='best_val')"
        )
        return loaded.params, loaded.step
