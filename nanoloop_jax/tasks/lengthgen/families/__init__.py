"""The problem families of the difficulty-graded task (config.lengthgen.task), one module each; base.py says
what a family gives (vocabulary, layout, generator)."""

from __future__ import annotations

from nanoloop_jax.errors import ConfigError
from nanoloop_jax.tasks.lengthgen.families import addition, maze, multiadd, parity, phop, sudoku
from nanoloop_jax.tasks.lengthgen.families.base import Family

FAMILIES: dict[str, Family] = {m.FAMILY.name: m.FAMILY for m in (parity, addition, phop, multiadd, maze, sudoku)}


def family(name: str) -> Family:
    """The family registered as `name` (lengthgen.task)."""
    if name not in FAMILIES:
        raise ConfigError(f"lengthgen.task must be one of {tuple(FAMILIES)}, got {name!r}")
    return FAMILIES[name]
