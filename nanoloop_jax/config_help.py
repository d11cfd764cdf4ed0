"""`train.py --config=FILE --help_config`: every field of the run config, its value, and its comment.

The comments are the ones the config files carry on each field's line (`c.model.n_loop = 4  # iterations ...`):
base_config's (nanoloop_jax/config.py, which has one for every field) and the task section's defaults, then
what the config file and the configs it imports say about the fields they change, in brackets.
"""

from __future__ import annotations

import ast
import inspect
import os
import re

from ml_collections import ConfigDict

# `c.model.n_loop = 4  # comment` (any name for the dict); the path after the name, and the comment
_FIELD_LINE = re.compile(r"^\s*[A-Za-z_]\w*((?:\.[A-Za-z_]\w*)+)\s*=(?!=)\s*(.*?)\s+#\s*(.+?)\s*$")
_IMPORTS = re.compile(r"^from configs import (.+)$", re.M)
BASE_FILE = os.path.join(os.path.dirname(__file__), "config.py")


_NOT_A_LITERAL = object()


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return _NOT_A_LITERAL


def field_comments(path: str, section: str = "") -> dict[str, tuple[object, str]]:
    """'model.n_loop' -> (the value, if a literal, and the comment) of the first line that sets it in the Python
    file at `path` (fields of a section's own defaults file get the section's name in front)."""
    prefix, comments = f"{section}." if section else "", {}
    with open(path, encoding="utf-8") as f:
        for m in filter(None, map(_FIELD_LINE.match, f)):
            comments.setdefault(f"{prefix}{m.group(1)[1:]}", (_literal(m.group(2)), m.group(3)))
    return comments


def config_chain(path: str) -> list[str]:
    """The config file and the configs/ files it imports (`from configs import a, b`), those first."""
    chain: list[str] = []

    def visit(p: str) -> None:
        if p in chain or not os.path.isfile(p):
            return
        with open(p, encoding="utf-8") as f:
            text = f.read()
        for names in _IMPORTS.findall(text):
            for name in names.split(","):
                visit(os.path.join(os.path.dirname(p), name.split(" as ")[0].strip() + ".py"))
        chain.append(p)

    visit(path)
    return chain


def _leaves(config: ConfigDict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def help_text(config: ConfigDict, config_path: str) -> str:
    """One line per field: `path = value  # comment [file: the config file's comment]`."""
    from nanoloop_jax.tasks import task_class

    base = {k: c for k, (_, c) in field_comments(BASE_FILE).items()}
    task = task_class(config.task)
    if task.section is not None:
        base.update({k: c for k, (_, c) in field_comments(inspect.getsourcefile(task.defaults), task.section).items()})
    own: dict[str, tuple[str, object, str]] = {}
    for path in config_chain(config_path.split(":", 1)[0]):  # without its :variant
        own.update({k: (os.path.basename(path), *vc) for k, vc in field_comments(path).items()})
    lines = [f"fields of {config_path} (override any with --config.<field>=value):"]
    for path, value in _leaves(config):
        comment = base.get(path, "")
        if path in own:
            name, set_to, why = own[path]
            # a file's comment explains the value it sets: not shown where another value is in effect
            if why != comment and (set_to is _NOT_A_LITERAL or set_to == value):
                comment = f"{comment} [{name}: {why}]".strip()
        lines.append(f"{path} = {value!r}" + (f"  # {comment}" if comment else ""))
    return "\n".join(lines)
