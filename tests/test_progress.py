"""Progress bars: tqdm on a terminal, whole lines (no carriage returns) in a pipe or a log file."""

import io

from tqdm import tqdm

from nanoloop_jax import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_pipe_or_file_gets_plain_lines_and_a_terminal_gets_the_bar():
    log = io.StringIO()  # not a tty, as a file or `| tee`
    with progress.bar(total=5, desc="eval", unit="batch", file=log, interval_s=0.0) as bar:
        for _ in range(5):
            bar.update()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 5
    assert lines[0].startswith("eval: 1/5 batch (") and lines[-1].startswith("eval: 5/5 batch (")

    log = io.StringIO()  # the default interval: the first line after the delay, then the last count on close
    assert list(progress.bar(range(3), desc="writing x", file=log)) == [0, 1, 2]
    assert [line.split(" (")[0] for line in log.getvalue().splitlines()] == ["writing x: 1/3 it", "writing x: 3/3 it"]

    log = io.StringIO()  # still within its delay, or disabled: nothing
    with progress.bar(total=3, desc="eval", delay=60.0, file=log) as bar:
        bar.update(3)
    assert list(progress.bar(range(2), desc="x", file=log, disable=True)) == [0, 1] and log.getvalue() == ""

    assert isinstance(progress.bar(total=1, desc="eval", file=_Terminal()), tqdm)
