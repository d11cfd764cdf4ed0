"""Flag parsing for the entry points: a config mistake is one `error:` line on stderr, not a traceback.

  app.run(main, flags_parser=cli.parse_flags)

ml_collections reports an unknown override (`--config.model.nloop=3`) as an AttributeError raised from
inside absl's parser, a missing config file as an OSError chain raised only when FLAGS.config is first
read, and an exception in get_config() as a traceback pasted into a flags.Error. parse_flags catches all
three at parse time and says which field or file is wrong.

The research tools (nanoloop_jax/tools/) run the same way through run_tool, and tests run them in-process
through call_tool on a FlagValues of their own: a tool defines its flags only when it runs, never at
import, because absl flags are process-wide and one test process imports several tools (and sample.py).
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections.config_flags.config_flags import is_config_flag  # not re-exported by the package

from nanoloop_jax.errors import UserError

# ml_collections' suggestion text: KeyError("'nloop'\nDid you mean \"n_loop\" instead of \"nloop\"?")
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"')
_KEY = re.compile(r"'([^'\\]+)")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _config_flag_names(flag_values: flags.FlagValues) -> list[str]:
    """Names of the ml_collections config flags defined by the running program (usually just 'config')."""
    return sorted(name for name in flag_values if is_config_flag(flag_values[name]))


def _spec_of(argv: list[str], name: str) -> str | None:
    """The value given as --NAME=path[:variant] (or --NAME path[:variant]) on the command line, or None."""
    for i, arg in enumerate(argv[1:], start=1):
        m = re.match(rf"^--?{name}=(.*)$", arg)
        if m:
            return m.group(1)
        if re.match(rf"^--?{name}$", arg) and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _file_of(argv: list[str], name: str) -> str | None:
    """The config file path of --NAME (without its :variant), or None."""
    spec = _spec_of(argv, name)
    return spec.split(":", 1)[0] if spec is not None else None


def missing_file_message(path: str) -> str:
    """`no config file X; DIR/ has: a.py, b.py` (the sibling .py files, so the right name is one glance away)."""
    folder = os.path.dirname(path) or "."
    if os.path.isdir(folder):
        names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_"))
        listing = ", ".join(names) if names else "no .py files"
        return f"no config file {path}; {folder.rstrip('/')}/ has: {listing}"
    return f"no config file {path} (no directory {folder})"


def field_hint(key: str, config_flag: str = "config") -> str:
    """` (did you mean --config.train.max_iters?)` for a nanoGPT-style name that is a field of a config section."""
    from nanoloop_jax.config import base_config  # the schema; imported only to phrase this error

    schema = base_config()
    paths = [f"{section}.{key}" for section, sub in schema.items() if hasattr(sub, "keys") and key in sub]
    if not paths:
        return ""
    return " (did you mean " + " or ".join(f"--{config_flag}.{p}" for p in paths) + "?)"


def unknown_field_message(argv: list[str], name: str, error: BaseException) -> str:
    """`unknown field model.nloop (did you mean model.n_loop?)` from ml_collections' KeyError text."""
    text = str(error.args[0] if error.args else error)
    m = _DID_YOU_MEAN.search(text)
    key = m.group(2) if m else (_KEY.search(text).group(1) if _KEY.search(text) else None)
    for arg in argv[1:]:
        override = re.match(rf"^--?{name}\.([^=]+)", arg)
        if override is None or key is None:
            continue
        parts = override.group(1).split(".")
        if key in parts:
            path = ".".join(parts[: parts.index(key) + 1])
            hint = f" (did you mean {path[: -len(key)]}{m.group(1)}?)" if m else ""
            if path == key:  # a top-level name: nanoGPT's flat config (--config.max_iters)
                hint = field_hint(key, name) or hint
            return f"unknown field {path}{hint}"
    return f"unknown config field: {_one_line(text)}"


def _last_error_line(text: str) -> str:
    """The `Type: message` line that ends a traceback pasted into an error message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception): ", line):
            return line.split(": ", 1)[1]
    return _one_line(text)


def config_error_message(argv: list[str], error: BaseException, flag_values: flags.FlagValues = flags.FLAGS) -> str:
    """One line for an error raised while parsing argv or first reading a config flag."""
    names = _config_flag_names(flag_values)
    if isinstance(error, (AttributeError, KeyError)):
        for name in names:
            if any(re.match(rf"^--?{name}\.", a) for a in argv[1:]):
                return unknown_field_message(argv, name, error)
    for name in names:
        path = _file_of(argv, name)
        if path is not None and not os.path.isfile(path):
            return missing_file_message(path)
    if isinstance(error, flags.Error) and "Error whilst parsing config file" in str(error):
        # get_config() raised: keep its own message (e.g. "unknown variant 'gpu' ...; allowed: 'cpu'")
        flag = next((f"--{n}={_spec_of(argv, n)}" for n in names if _spec_of(argv, n)), "the config file")
        return f"{flag}: {_last_error_line(str(error))}"
    if isinstance(error, OSError) and "Failed loading config file" in str(error):
        return f"could not load the config file: {_last_error_line(str(error))}"
    if isinstance(error, flags.Error):
        unknown = re.search(r"Unknown command line flag '([^']+)'", str(error))
        if unknown and names:  # nanoGPT's --max_iters=400: name the config field
            return f"unknown flag --{unknown.group(1)}{field_hint(unknown.group(1), names[0])}"
        return _one_line(str(error))
    # anything else came from running the config file itself (a syntax error, an exception in get_config)
    given = [(n, _spec_of(argv, n)) for n in names if _spec_of(argv, n)]
    prefix = f"--{given[0][0]}={given[0][1]}: " if given else ""
    where = _location(error, _file_of(argv, given[0][0])) if given else ""
    text = error.msg if isinstance(error, SyntaxError) else str(error)  # str() of a SyntaxError repeats the place
    return f"{prefix}{type(error).__name__}: {_one_line(text)}{where}"


def _location(error: BaseException, path: str) -> str:
    """` (file:line)` of the error inside the config file, if it happened there."""
    if isinstance(error, SyntaxError) and error.filename:
        return f" ({error.filename}:{error.lineno})"
    path = os.path.abspath(path)
    here = [f for f in traceback.extract_tb(error.__traceback__) if os.path.abspath(f.filename) == path]
    return f" ({here[-1].filename}:{here[-1].lineno})" if here else ""


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl `flags_parser` for app.run: parse argv and load every config, or print one line and exit 1."""
    try:
        rest = flag_values(argv)
        for name in _config_flag_names(flag_values):
            if getattr(flag_values, name) is not None:  # None: not given (the entry point says so)
                getattr(flag_values, name).to_dict()  # a file that failed to load raises only when first used
    except Exception as err:  # noqa: BLE001 -- a config file is user code: whatever it raises, one line
        print(f"error: {config_error_message(argv, err, flag_values)}", file=sys.stderr)
        sys.exit(1)
    return rest


# A tool: define_flags(flag_values) defines its flags on the given FlagValues; main(flag_values, args) runs it
# on the parsed flags and the positional arguments, and returns the exit status.
DefineFlags = Callable[[flags.FlagValues], None]
ToolMain = Callable[[flags.FlagValues, list[str]], int]


def entry_point_error(argv: list[str], config) -> str | None:
    """The one-line error of an entry point (train.py, bench.py) run with stray arguments or no --config."""
    if len(argv) > 1:
        return f"unexpected arguments {argv[1:]}; use --config.<field>=value"
    if config is None:
        return "pass --config=configs/<name>.py (see configs/)"
    return None


def report_errors(fn: Callable[[], int | None]) -> int:
    """fn()'s exit status (None: 0), or 1 after one `error: ...` line on stderr if it raises a UserError
    (errors.py); anything else keeps its traceback."""
    try:
        status = fn()
    except UserError as err:
        print(f"error: {_one_line(str(err))}", file=sys.stderr)
        return 1
    return 0 if status is None else status


def _run_main(main: ToolMain, flag_values: flags.FlagValues, rest: list[str], takes_args: bool) -> int:
    if rest[1:] and not takes_args:
        print(f"error: unexpected arguments {rest[1:]}; flags are --name=value", file=sys.stderr)
        return 1
    from nanoloop_jax import log

    log.quiet_libraries()  # every tool: orbax logs each file it reads or writes at INFO
    return main(flag_values, rest[1:])


def run_tool(define_flags: DefineFlags, main: ToolMain, takes_args: bool = False) -> None:
    """`python -m nanoloop_jax.tools.NAME`: define the tool's flags now, parse them, exit with main's status."""
    define_flags(flags.FLAGS)
    app.run(lambda argv: sys.exit(_run_main(main, flags.FLAGS, argv, takes_args)), flags_parser=parse_flags)


def call_tool(define_flags: DefineFlags, main: ToolMain, argv: Sequence[str], takes_args: bool = False) -> int:
    """The same tool in this process, on a FlagValues of its own (tests); argv without the program name."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    rest = parse_flags([getattr(define_flags, "__module__", "tool"), *argv], flag_values)
    return _run_main(main, flag_values, rest, takes_args)
