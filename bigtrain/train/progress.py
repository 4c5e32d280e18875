"""Rank 0's console: parseable log lines, plus a live progress bar when stdout is a terminal.

Log lines are always printed whole (``step 120/600 | loss ... | eta 0:01:23``), so piping stdout to
a file or a log collector gives plain lines. Only on a TTY is a bar drawn below them on a line that
is rewritten in place (``\\r``) and cleared before each log line.
"""

from __future__ import annotations

import sys
from datetime import timedelta


def render_bar(step: int, total: int, eta_s: float | None, width: int = 30) -> str:
    """``[#########.....................] 123/600  20.5% | eta 0:01:23``"""
    frac = min(1.0, step / total) if total else 1.0
    filled = int(round(frac * width))
    eta = "?" if eta_s is None else str(timedelta(seconds=round(eta_s)))
    return f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} {100 * frac:5.1f}% | eta {eta}"


class Console:
    def __init__(self, stream=None, bar: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        isatty = getattr(self.stream, "isatty", None)
        self.bar = bar if bar is not None else bool(isatty and isatty())
        self.last_bar = ""

    def print(self, line: str) -> None:
        if self.bar and self.last_bar:
            self.stream.write("\r\x1b[K")
        self.stream.write(line + "\n")
        if self.bar and self.last_bar:
            self.stream.write(self.last_bar)
        self.stream.flush()

    def progress(self, step: int, total: int, eta_s: float | None) -> None:
        if not self.bar:
            return
        self.last_bar = render_bar(step, total, eta_s)
        self.stream.write("\r" + self.last_bar + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.bar and self.last_bar:
            self.stream.write("\n")
            self.stream.flush()
            self.last_bar = ""
