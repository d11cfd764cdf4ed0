"""What a resumed run may change from the run config its checkpoint recorded.

The architecture is the checkpoint's: a command that asks for another one (`--config.model.n_loop=8` on an
out_dir trained at 4) is one error naming each field, both values and the fix, never a run that quietly keeps
the old value. Every other setting (learning rate, max_iters, batch size, dropout, bptt_k, ...) may change: one
line lists what changed, applied from the resumed step on.
"""

from __future__ import annotations

import dataclasses

from nanoloop_jax.ckpt.checkpoint import config_json
from nanoloop_jax.errors import UserError
from nanoloop_jax.model.config import FUNCTION_FIELDS, ModelConfig

# where the run lives, how it first started and how its processes find each other: not settings of the training
NOT_SETTINGS = ("out_dir", "init_from", "distributed.")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


class ResumeError(UserError):
    """A resumed run asks for another architecture than its checkpoint's."""


def _flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """{'opt.learning_rate': 0.001, ...} of a run config's JSON dict."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_architecture(config, meta: dict, out_dir: str) -> None:
    """Raise ResumeError if the command's config.model asks for another architecture than checkpoint meta's run.

    Compared with the run config the checkpoint recorded (so the command that made a run, imported weights
    included, resumes it unchanged); the values named are the checkpoint model's own."""
    recorded = (meta.get("config") or {}).get("model") or meta["model_config"]  # older checkpoints: the model
    requested, model = config_json(config)["model"], meta["model_config"]
    changed = [
        k for k in FUNCTION_FIELDS if k in requested and requested[k] != recorded.get(k, model.get(k, _DEFAULTS[k]))
    ]
    if not changed:
        return
    what = "; ".join(f"model.{k} is {model.get(k, _DEFAULTS[k])!r} there, {requested[k]!r} asked for" for k in changed)
    flags = " ".join(f"--config.model.{k}" for k in changed)
    raise ResumeError(
        f"{out_dir} holds a checkpoint (step {meta['step']}) of another architecture: {what}. A resumed run keeps "
        f"its checkpoint's architecture: drop {flags} (or change the config file back), or use a new out_dir"
    )


def changed_settings_line(config, meta: dict) -> str | None:
    """One line naming every setting changed since the checkpoint's run config, applied from its step on; None
    if nothing changed (or the checkpoint recorded no run config)."""
    if not meta.get("config"):
        return None
    before, now = _flat(meta["config"]), _flat(config_json(config))
    changed = [
        f"{k} {before[k]!r} -> {v!r}"
        for k, v in now.items()
        # a field the checkpoint's config lacks is newer than the run: its default, not a change
        if k in before
        and before[k] != v
        and not k.startswith(NOT_SETTINGS)
        and k not in (f"model.{a}" for a in FUNCTION_FIELDS)
    ]
    if not changed:
        return None
    return f"resuming with changed settings, applied from step {meta['step']} on: {', '.join(changed)}"
