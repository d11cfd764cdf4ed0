"""Tasks the Trainer runs, found by `config.task` in one plain dict (the Trainer imports no task by name).

Adding a task: a module (or package) with a tasks.base.Task subclass, one entry here, and configs/<task>_*.py
that call base_config('<task>').
"""

from __future__ import annotations

from nanoloop_jax.errors import UserError
from nanoloop_jax.tasks.base import Task
from nanoloop_jax.tasks.lengthgen.task import LengthGeneralization
from nanoloop_jax.tasks.lm import LanguageModelling

TASKS: dict[str, type[Task]] = {
    "lm": LanguageModelling,
    "lengthgen": LengthGeneralization,
}


def task_class(name: str) -> type[Task]:
    """The Task class registered as `name`."""
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; config.task must be one of {', '.join(TASKS)}")
    return TASKS[name]
