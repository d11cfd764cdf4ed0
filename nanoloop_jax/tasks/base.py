"""What a task gives the training loop: its data, the depth of each step, its pure steps, evaluation and report.

The Trainer (train/trainer.py) runs one loop over a Task object; it never learns which task it is. A task is
a class in the registry (tasks/__init__.py) keyed by `config.task`, with its config section's defaults.

Every step has one signature, whatever the task:
  train step  (state, batch, key, depth) -> (state, metrics)    depth: a traced int32 (the step's loop depth)
  eval step   (params, batch, key, depth) -> device scalar loss
where batch = {'x', 'y'[, 'mask']} (train: with a leading micro-step axis), key a PRNG key (dropout / noise)
and depth what `depth(step)` or an eval job says. A step that runs a static depth ignores its depth argument.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import optax
from ml_collections import ConfigDict

from nanoloop_jax.model.config import ModelConfig
from nanoloop_jax.model.looped import LoopedGPT

Arrays = tuple[np.ndarray, ...]  # (x, y[, mask]) of this process's rows


class EvalJob(NamedTuple):
    """One evaluation reported as `name`: batch i -> (host arrays, depth), run by eval step `step`."""

    name: str
    step: Any  # key into Task.eval_steps()
    batch: Callable[[int], tuple[Arrays, int]]


class Steps(NamedTuple):
    """A task's pure steps, jitted (with shardings) by the Trainer."""

    train: Callable
    eval: dict[Any, Callable]


class Task:
    """Base class: the language-modelling behaviour lives in tasks/lm.py, the rest in the task packages."""

    section: str | None = None  # the config section the task reads (config[section]), if any

    @staticmethod
    def defaults() -> ConfigDict | None:
        """Defaults of the task's config section (base_config(task) adds them)."""
        return None

    @staticmethod
    def prepare(config) -> dict | None:
        """Make the task's data if missing (before the model exists); its meta.json (the vocabulary) or None."""
        raise NotImplementedError

    def __init__(self, config, model_config: ModelConfig) -> None:
        self.config, self.model_config = config, model_config

    # what the loop reads every step
    depth_varies: bool = False  # whether depth(step) changes from step to step (the log lines then show it)
    tokens_per_step: int  # tokens of one optimizer step (all processes)
    eval_tokens: int  # tokens of one eval batch (all processes)

    def batch_source(self):
        """An object with get(step) -> Arrays with a leading micro-step axis (the Prefetcher's source)."""
        raise NotImplementedError

    def depth(self, step: int) -> int:
        """The loop depth training step `step` runs."""
        raise NotImplementedError

    def steps(self, model: LoopedGPT, tx: optax.GradientTransformation, schedule: optax.Schedule) -> Steps:
        raise NotImplementedError

    def eval_jobs(self) -> list[EvalJob]:
        """What every evaluation reports; 'train' and 'val' come first ('val' chooses the best checkpoint)."""
        raise NotImplementedError

    def describe(self) -> str | None:
        """A line printed once at the start of training, or None."""
        return None

    def finish(self, model: LoopedGPT, params, step: int) -> dict:
        """Work after the last step (a final evaluation); its results join the run's summary."""
        return {}
