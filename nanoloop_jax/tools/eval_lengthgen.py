"""Exact-match accuracy of a length-generalization run per (input length, n_loop), and with the confidence stop.

  python -m nanoloop_jax.tools.eval_lengthgen --out_dir=out-parity-lengthgen
  python -m nanoloop_jax.tools.eval_lengthgen --out_dir=out-parity-lengthgen --max_depth=80 --lengths=10,40,50

Re-runs, on a trained checkpoint, the evaluation train.py ends every `lengthgen` run with
(nanoloop_jax/tasks/lengthgen/evaluate.py): other lengths, a larger max_depth, or a baseline run's column beside it.
Writes OUT_DIR/accuracy.csv and OUT_DIR/accuracy.png.
"""

from __future__ import annotations

import os

from absl import flags

from nanoloop_jax import cli
from nanoloop_jax.data.batches import data_dir_of
from nanoloop_jax.errors import UserError
from nanoloop_jax.model.looped import LoopedGPT
from nanoloop_jax.tasks.lengthgen.evaluate import default_max_depth, evaluate, read_csv, report


def define_flags(fv: flags.FlagValues) -> None:
    """The tool's flags, on fv (defined when the tool runs, not at import: absl flags are process-wide)."""
    flags.DEFINE_string("out_dir", None, "a run of a config with a lengthgen section (results go here)", flag_values=fv)
    flags.mark_flag_as_required("out_dir", flag_values=fv)
    flags.DEFINE_list("lengths", [], "e.g. 10,20,40 (default: the run's lengthgen.test_lengths)", flag_values=fv)
    flags.DEFINE_integer("max_depth", 0, "largest n_loop (default: max T(n) + eval_extra_depth)", flag_values=fv)
    flags.DEFINE_integer("batch_size", 250, "problems evaluated together", flag_values=fv)
    flags.DEFINE_string(
        "baseline", "", "a baseline run's out_dir: its n_loop-1 accuracy.csv column joins the table", flag_values=fv
    )


def run(fv: flags.FlagValues, args: list[str]) -> int:
    """Evaluate the run of the flags, print the table, write accuracy.csv and the heat map."""
    del args
    from ml_collections import ConfigDict

    from nanoloop_jax.ckpt import checkpoint

    def evaluate_run() -> None:
        loaded = checkpoint.load_params(fv.out_dir)
        run_cfg = loaded.meta.get("config") or {}
        if "lengthgen" not in run_cfg:
            raise UserError(f"{fv.out_dir} was not trained with a lengthgen config")
        lg = ConfigDict(run_cfg["lengthgen"])
        data_dir = data_dir_of(run_cfg["data"])
        lengths = [int(s) for s in fv.lengths] or list(lg.test_lengths)
        max_depth = fv.max_depth or default_max_depth(lg, loaded.model_config.n_loop)
        model = LoopedGPT(loaded.model_config)
        result = evaluate(model, loaded.params, data_dir, lg, lengths, max_depth, fv.batch_size)
        baseline = read_csv(os.path.join(fv.baseline, "accuracy.csv")) if fv.baseline else None
        report(fv.out_dir, result, lg, loaded.step, baseline=baseline)

    return cli.report_errors(evaluate_run)


if __name__ == "__main__":
    cli.run_tool(define_flags, run)
