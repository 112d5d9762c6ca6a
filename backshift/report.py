"""What the program tells its user: exit status, error lines, status lines on a terminal.

Imports nothing of the backup, restore or check machinery, so any of them
(and the progress reports built on them) can use it.
"""

import os
import sys
import time
from typing import Callable, Optional, TextIO

# Exit status, as GNU tar uses it: 1 when some files were not saved, changed
# while being read, or are damaged in the save directory; 2 for a fatal error.
EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_FATAL = 2

# A status line is redrawn at most this often.
REDRAW_SECONDS = 0.25


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is a terminal; False for anything without a usable isatty."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return ("%d %s" if unit == "B" else "%.1f %s") % (count, unit)
        count /= 1024.0
    return "%.1f TiB" % count


def human_duration(seconds: float) -> str:
    """H:MM:SS, the spelling of every ETA and elapsed time shown."""
    seconds = max(0, int(round(seconds)))
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


class Reporter:
    """Where a backup says what went wrong, and the hook for progress."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.errors = 0

    def error(self, path: bytes, reason: str) -> None:
        self.errors += 1
        self.note(path, reason)

    def note(self, path: bytes, reason: str) -> None:
        self.stream.write("backshift: %s: %s\n" % (os.fsdecode(path), reason))
        self.stream.flush()

    def file_done(self, path: bytes, size: int) -> None:
        """Called once per path handled (progress reports override this)."""

    def finish(self) -> None:
        """Called at the end of the backup."""


class StatusLine:
    """One line redrawn in place on a terminal (``\\r``), at most every REDRAW_SECONDS.

    ``enabled`` False makes every call a no-op, so callers need not ask
    whether their stream is a terminal.
    """

    def __init__(self, stream: TextIO, enabled: Optional[bool] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.enabled = is_terminal(stream) if enabled is None else enabled
        self.clock = clock
        self.last_draw = float("-inf")
        self._width = 0

    def due(self) -> bool:
        """Whether a redraw now would not come too soon after the last."""
        return self.enabled and self.clock() - self.last_draw >= REDRAW_SECONDS

    def show(self, text: str, force: bool = False) -> None:
        if not self.enabled or not (force or self.due()):
            return
        self.last_draw = self.clock()
        self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
        self.stream.flush()
        self._width = len(text)

    def clear(self) -> None:
        """Blank the line, so that an ordinary line can be written."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
