"""Progress of a slow loop: tqdm's bar on a terminal, plain lines in a pipe or a file.

A bar redraws itself with carriage returns, which a log file or `| tee` keeps as one long line of fragments;
so where the stream is not a terminal, `bar` prints `desc: n/total unit` lines instead, at most one every
`interval_s` seconds (and a last one when the loop ends, if it printed any).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

PLAIN_INTERVAL_S = 30.0  # seconds between two plain progress lines


def _is_tty(stream: IO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class PlainProgress:
    """tqdm's update/close/iteration interface, written as whole lines."""

    def __init__(
        self,
        iterable: Iterable | None,
        total: int | None,
        desc: str,
        unit: str,
        delay: float,
        file: IO,
        interval_s: float,
        disable: bool,
    ) -> None:
        self.iterable, self.desc, self.unit, self.file = iterable, desc, unit, file
        self.total = total if total is not None or iterable is None else _len(iterable)
        self.delay, self.interval_s, self.disable = delay, interval_s, disable
        self.n, self.t0 = 0, time.monotonic()
        self.last, self.shown = None, None  # when the last line was printed, and the count it showed

    def _line(self) -> None:
        of = f"/{self.total}" if self.total is not None else ""
        elapsed = time.monotonic() - self.t0
        print(f"{self.desc}: {self.n}{of} {self.unit} ({elapsed:.0f} s)", file=self.file, flush=True)
        self.last, self.shown = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        if now - self.t0 >= self.delay and (self.last is None or now - self.last >= self.interval_s):
            self._line()

    def close(self) -> None:
        """The final count, if a line was printed before and the count moved since."""
        if not self.disable and self.shown is not None and self.n != self.shown:
            self._line()

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _len(iterable: Iterable) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str,
    unit: str = "it",
    delay: float = 0.0,
    leave: bool = True,
    file: IO | None = None,
    disable: bool = False,
    interval_s: float = PLAIN_INTERVAL_S,
) -> tqdm | PlainProgress:
    """A progress bar on `file` (stderr by default): tqdm on a terminal, else PlainProgress lines."""
    file = sys.stderr if file is None else file
    if _is_tty(file):
        return tqdm(iterable, total=total, desc=desc, unit=unit, delay=delay, leave=leave, file=file, disable=disable)
    return PlainProgress(iterable, total, desc, unit, delay, file, interval_s, disable)
