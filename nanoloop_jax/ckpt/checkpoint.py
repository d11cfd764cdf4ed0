"""On-disk checkpoints: an orbax CheckpointManager under OUT_DIR/checkpoints, config.json beside it.

OUT_DIR/
  config.json                    the run's config, readable (written by train.py)
  checkpoints/<step>/params      orbax StandardSave of the params pytree
  checkpoints/<step>/opt_state   orbax StandardSave of the optax state (absent in converted checkpoints)
  checkpoints/<step>/meta        JSON: step, best_val_loss, model_config, run config, provenance

Orbax writes each step into a temporary directory and renames it only when complete, so a crash,
kill -9 or SIGTERM mid-save leaves the previous step restorable. A step damaged after that (an
interrupted copy, a full disk, a bad bucket sync) is skipped with one warning line: every loader goes
through restore_newest, which falls back to the newest step that restores and deletes nothing.
Restores always pass an abstract target with shardings, so a checkpoint written on any mesh loads onto
any other (or one device).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

from nanoloop_jax import log
from nanoloop_jax.config import run_config_of
from nanoloop_jax.errors import UserError
from nanoloop_jax.fileio import write_atomic
from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import abstract_params

CKPT_SUBDIR = "checkpoints"
UNREADABLE_SUBDIR = "unreadable_checkpoints"  # where train.py moves damaged steps out of orbax's way
logger = log.get(__name__)
T = TypeVar("T")


class CheckpointError(UserError):
    """A missing or unreadable checkpoint (one-line message)."""


@dataclasses.dataclass
class Loaded:
    """What load_params returns."""

    model_config: ModelConfig
    params: Any
    step: int
    best_val_loss: float
    meta: dict


def ckpt_dir(out_dir: str) -> str:
    return os.path.join(os.path.abspath(out_dir), CKPT_SUBDIR)


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    """The items of a step and their formats (registered, so item_metadata can name the items a step has)."""
    standard = ocp.StandardCheckpointHandler
    return {"params": standard(), "opt_state": standard(), "meta": ocp.JsonCheckpointHandler()}


def manager(out_dir: str, *, max_to_keep: int | None = None, async_save: bool = True) -> ocp.CheckpointManager:
    """The run's CheckpointManager (every process of a multi-host run must create it)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True)
    return ocp.CheckpointManager(ckpt_dir(out_dir), options=options, item_handlers=_handlers())


@contextlib.contextmanager
def _reader(out_dir: str):
    """A CheckpointManager for reading OUT_DIR's steps (creates nothing), closed on exit."""
    options = ocp.CheckpointManagerOptions(create=False)
    mngr = ocp.CheckpointManager(ckpt_dir(out_dir), options=options, item_handlers=_handlers())
    try:
        yield mngr
    finally:
        mngr.close()


def all_steps(out_dir: str) -> list[int]:
    """The complete checkpoint steps in OUT_DIR, newest first."""
    if not os.path.isdir(ckpt_dir(out_dir)):
        return []
    return sorted(ocp.utils.checkpoint_steps(ckpt_dir(out_dir)), reverse=True)


def latest_step(out_dir: str) -> int | None:
    """The newest complete checkpoint step in OUT_DIR, or None."""
    steps = all_steps(out_dir)
    return steps[0] if steps else None


def _reason(err: BaseException) -> str:
    """Why a restore failed, in one line: the innermost cause (orbax wraps tensorstore's precise message)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@contextlib.contextmanager
def _quiet_abandoned_reads():
    """Drop the reports of a failed restore's abandoned reads ('Exception ignored in <coroutine ...>',
    asyncio's 'Task exception was never retrieved'): hundreds of traceback lines for a failure that
    restore_newest reports in one line.

    Orbax abandons a damaged step's other read tasks; Python and asyncio report each as it is collected,
    possibly after this block, so once a restore has failed asyncio's error log stays off in this process.
    """
    hook, asyncio_log = sys.unraisablehook, logging.getLogger("asyncio")
    sys.unraisablehook = lambda unraisable: None
    was_disabled, asyncio_log.disabled = asyncio_log.disabled, True
    failed = True
    try:
        yield
        failed = False
    finally:
        gc.collect()
        sys.unraisablehook = hook
        asyncio_log.disabled = was_disabled or failed


def restore_newest(
    out_dir: str,
    attempt: Callable[[int], T],
    *,
    agree: Callable[[bool], bool] = lambda ok: ok,
    move_aside: bool = False,
) -> tuple[int, T]:
    """(step, attempt(step)) for the newest step whose attempt succeeds, newest first; nothing is deleted.

    Each newer step that fails gets one warning line naming it and why, logged once an older step has
    restored; with move_aside (a training run, process 0: orbax would not save over them) it is moved to
    unreadable_checkpoints/ and the line says where. If none restores, CheckpointError says so in one line.
    `agree(ok)` must return True only when every process restored this step (multi-host runs must all resume
    from the same one).
    """
    steps, where = all_steps(out_dir), ckpt_dir(out_dir)
    if not steps:
        raise CheckpointError(f"no checkpoint in {out_dir}; train one with train.py or convert a ckpt.pt")
    failures: list[tuple[int, str]] = []
    for step in steps:
        try:
            with _quiet_abandoned_reads():
                result, reason = attempt(step), None
        except UserError:  # the caller's verdict on this run (e.g. another architecture), not a damaged step
            raise
        except Exception as err:  # noqa: BLE001 -- orbax raises bare Exception for damaged tensorstore data
            result, reason = None, _reason(err)
        if agree(reason is None):
            for bad, why in failures:
                moved = f"; moved it to {set_aside(out_dir, bad)}" if move_aside else ""
                logger.warning(
                    f"warning: checkpoint step {bad} in {where} cannot be restored ({why}); using step {step}{moved}"
                )
            return step, result
        failures.append((step, reason or "another process could not restore it"))
    listed = ", ".join(str(s) for s, _ in failures)
    newest, why = failures[0]
    raise CheckpointError(f"no checkpoint in {where} can be restored (steps {listed}); step {newest}: {why}")


def set_aside(out_dir: str, step: int) -> str:
    """Move an unrestorable step out of the checkpoint directory (so a new save of that step can happen); kept."""
    dest_root = os.path.join(os.path.abspath(out_dir), UNREADABLE_SUBDIR)
    os.makedirs(dest_root, exist_ok=True)
    dest, n = os.path.join(dest_root, str(step)), 1
    while os.path.exists(dest):
        dest, n = os.path.join(dest_root, f"{step}.{n}"), n + 1
    os.replace(os.path.join(ckpt_dir(out_dir), str(step)), dest)
    return dest


def config_to_dict(config: ModelConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: dict) -> ModelConfig:
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    values = {k: v for k, v in d.items() if k in fields}
    if values.get("loop_sampling", "fixed") == "fixed" and (values.get("bptt_k") or 0) > values["n_loop"]:
        values["bptt_k"] = None  # trained before bptt_k > n_loop was refused: it meant full backprop
    return ModelConfig(**values).validate()


def save(mngr: ocp.CheckpointManager, step: int, *, params, opt_state, meta: dict) -> None:
    """Save params, optimizer state and JSON meta at `step` (asynchronously where enabled)."""
    items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
    if opt_state is not None:
        items["opt_state"] = ocp.args.StandardSave(opt_state)
    mngr.save(step, args=ocp.args.Composite(**items), force=True)


def read_meta(out_dir: str, step: int | None = None) -> dict:
    """The JSON meta of a checkpoint (latest by default)."""
    step = latest_step(out_dir) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint in {out_dir}; train one with train.py or convert a ckpt.pt")
    with _reader(out_dir) as mngr:
        return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _abstract(tree, shardings):
    """ShapeDtypeStructs carrying the target shardings, for orbax's resharding restore."""
    return jax.tree_util.tree_map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore(
    mngr: ocp.CheckpointManager,
    step: int,
    *,
    abstract_params,
    param_shardings,
    abstract_opt_state=None,
    opt_shardings=None,
) -> tuple[Any, Any, dict]:
    """Restore (params, opt_state, meta) onto the given shardings; opt_state is None when not asked for or
    when the step saved none (converted weights: item_metadata names the items a step has)."""
    items = {
        "params": ocp.args.StandardRestore(_abstract(abstract_params, param_shardings)),
        "meta": ocp.args.JsonRestore(),
    }
    with_opt = abstract_opt_state is not None and "opt_state" in mngr.item_metadata(step).keys()
    if with_opt:
        items["opt_state"] = ocp.args.StandardRestore(_abstract(abstract_opt_state, opt_shardings))
    out = mngr.restore(step, args=ocp.args.Composite(**items))
    return out["params"], out["opt_state"] if with_opt else None, out["meta"]


def load_params(out_dir: str, *, step: int | None = None, sharding: jax.sharding.Sharding | None = None) -> Loaded:
    """Params of a checkpoint (the newest that restores, by default) onto one device or the given sharding."""
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def attempt(s: int) -> Loaded:
        meta = read_meta(out_dir, s)
        config = config_from_dict(meta["model_config"])
        shapes = abstract_params(config)
        with _reader(out_dir) as mngr:
            params, _, _ = restore(
                mngr, s, abstract_params=shapes, param_shardings=jax.tree_util.tree_map(lambda _: sharding, shapes)
            )
        return Loaded(config, params, int(meta["step"]), float(meta.get("best_val_loss", float("inf"))), meta)

    if step is not None:
        return attempt(step)
    return restore_newest(out_dir, attempt)[1]


def write_run_config(out_dir: str, config: ConfigDict) -> None:
    """OUT_DIR/config.json: the run config (base_config's schema), readable, written atomically."""
    write_atomic(os.path.join(out_dir, "config.json"), config.to_json_best_effort(indent=2).encode())


def config_json(config: ConfigDict) -> dict:
    """A run config as the JSON dict a checkpoint's meta records (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def write_params_only(
    out_dir: str,
    model: ModelConfig,
    params,
    *,
    step: int,
    best_val_loss: float,
    source: dict | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
) -> None:
    """A checkpoint without optimizer state (converted weights): sample.py reads it, train.py resumes from it.

    Its run config (meta and config.json) is base_config with this model and data (run_config_of), so
    every checkpoint records the same schema; `source` records where the weights came from.
    """
    run_config = run_config_of(model, dataset, data_dir)
    meta = {
        "step": int(step),
        "best_val_loss": float(best_val_loss),
        "model_config": config_to_dict(model),
        "config": config_json(run_config),
        "source": source or {},
    }
    mngr = manager(out_dir, async_save=False)
    try:
        save(mngr, int(step), params=jax.tree_util.tree_map(np.asarray, params), opt_state=None, meta=meta)
        mngr.wait_until_finished()
    finally:
        mngr.close()
    write_run_config(out_dir, run_config)
