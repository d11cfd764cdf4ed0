"""Config mistakes on the command line: exactly one `error:` line on stderr and exit 1 (train.py, bench.py)."""

import os
import sys

import pytest
from absl import flags
from helpers import REPO_ROOT, run
from ml_collections import config_flags

from nanoloop_jax.cli import parse_flags

CONFIG = "configs/shakespeare_char_looped.py"
CONFIG_FILES = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.py") if not p.name.startswith("_"))
NLOOP = (
    [f"--config={CONFIG}:cpu", "--config.model.nloop=3"],
    "error: unknown field model.nloop (did you mean model.n_loop?)",
)
NOPE = (["--config=configs/nope.py"], f"error: no config file configs/nope.py; configs/ has: {', '.join(CONFIG_FILES)}")
MISTAKES = [
    NLOOP,
    NOPE,
    ([f"--config={CONFIG}", "--config.modle.n_loop=3"], "error: unknown field modle (did you mean model?)"),
    ([f"--config={CONFIG}", "--config.model.xyzzy=3"], "error: unknown field model.xyzzy"),
    ([f"--config={CONFIG}:gpu"], "unknown variant 'gpu' of shakespeare_char_looped; allowed: 'cpu'"),
    ([f"--config={CONFIG}", "--config.model.n_loop=abc"], "invalid literal for int() with base 10: 'abc'"),
    ([f"--config={CONFIG}", "--nope=1"], "error: unknown flag --nope"),
    # nanoGPT's flat flags: the field's place in our sections
    (
        [f"--config={CONFIG}", "--max_iters=400"],
        "error: unknown flag --max_iters (did you mean --config.train.max_iters?)",
    ),
    (
        [f"--config={CONFIG}", "--config.max_iters=400"],
        "error: unknown field max_iters (did you mean --config.train.max_iters?)",
    ),
    (
        [f"--config={CONFIG}", "--config.batch_size=8"],
        "error: unknown field batch_size (did you mean --config.data.batch_size?)",
    ),
]


def _flag_values(monkeypatch, argv: list[str]) -> flags.FlagValues:
    """A fresh --config flag as an entry point defines it; argv as a user types it (relative to the repo)."""
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", lock_config=True, flag_values=fv)
    return fv


def test_an_exception_in_the_config_file_is_one_line_with_its_place(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return 1 / 0\n")
    argv = ["prog", f"--config={bad}"]
    with pytest.raises(SystemExit):
        parse_flags(argv, _flag_values(monkeypatch, argv))
    assert capsys.readouterr().err == f"error: --config={bad}: ZeroDivisionError: division by zero ({bad}:2)\n"
    bad.write_text("def get_config(:\n")
    with pytest.raises(SystemExit):
        parse_flags(argv, _flag_values(monkeypatch, argv))
    assert capsys.readouterr().err == f"error: --config={bad}: SyntaxError: invalid syntax ({bad}:1)\n"


@pytest.mark.parametrize(("args", "want"), MISTAKES)
def test_parse_flags_turns_a_config_mistake_into_one_line(args, want, capsys, monkeypatch):
    fv = _flag_values(monkeypatch, ["prog", *args])
    with pytest.raises(SystemExit) as exit_info:
        parse_flags(["prog", *args], fv)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], lines


def test_good_flags_parse(monkeypatch):
    argv = ["prog", f"--config={CONFIG}:cpu", "--config.model.n_loop=3", "rest"]
    fv = _flag_values(monkeypatch, argv)
    assert parse_flags(argv, fv) == ["prog", "rest"]
    assert fv.config.model.n_loop == 3


@pytest.mark.parametrize("script", ["train.py", "bench.py"])
@pytest.mark.parametrize(("args", "want"), [NLOOP, NOPE, ([], "error: pass --config=configs/<name>.py (see configs/)")])
def test_entry_points_print_one_line(script, args, want):
    res = run([sys.executable, str(REPO_ROOT / script), *args], env={**os.environ}, timeout=120)
    assert res.returncode == 1 and res.stderr.splitlines() == [want], res.stderr


def test_help_config_lists_every_field_with_its_value_and_comment():
    """train.py --help_config: one line per field, its value in effect and a comment (base_config comments every
    field; the config file's own comment follows in brackets where it sets the value shown)."""
    from configs import parity_lengthgen, shakespeare_char_looped
    from nanoloop_jax.config_help import help_text

    config = shakespeare_char_looped.get_config("cpu")
    config.model.n_loop = 8  # an override: its value is shown
    lines = help_text(config, f"{CONFIG}:cpu").splitlines()
    assert lines[0] == f"fields of {CONFIG}:cpu (override any with --config.<field>=value):"
    fields = lines[1:]
    assert len(fields) == sum(len(section) if hasattr(section, "keys") else 1 for section in config.values())
    assert all("  # " in line for line in fields), [line for line in fields if "  # " not in line]
    assert "model.n_loop = 8  # iterations of the recurrent block" in fields
    assert (
        "model.bptt_k = 2  # backprop through the last k iterations (None or 0 = all) "
        "[shakespeare_char_looped.py: backprop through the last 2 of the 4 iterations]"
    ) in fields
    # a task's own section gets its defaults' comments; a file comment about a value not in effect is left out
    lines = help_text(parity_lengthgen.get_config(), "configs/parity_lengthgen.py").splitlines()
    assert (
        "lengthgen.depth_rule = 'linear'  # 'linear': T(n) = depth_scale·n + depth_offset | 'fixed': model.n_loop"
        in lines
    )
