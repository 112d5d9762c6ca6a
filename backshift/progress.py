"""Progress reports on stderr during a backup (seed feature 5 and its notes).

Levels:
  none      nothing but errors; paths stream through with bounded memory.
  minimal   counts of files and bytes done and the rate; still streaming.
  moderate  the path list is read first; percent and ETA assume every file
            takes the same time, as the seed's program did.
  full      the path list is read first and every path lstat'ed, so percent
            and ETA weigh files by size: each file counts as its bytes plus
            a fixed per-file cost (opening and recording a file costs about
            as much as reading PER_FILE_BYTES of data).
The report is redrawn in place at most REDRAW_SECONDS apart.
"""

import os
import time
from typing import Iterable, Iterator, List, Optional, TextIO, Tuple

from .report import REDRAW_SECONDS, Reporter, human_bytes, human_duration

LEVELS = ("none", "minimal", "moderate", "full")
PER_FILE_BYTES = 64 * 1024


class PathList:
    """An inhaled path list, packed: one buffer of NUL-terminated paths.

    A list of bytes objects costs about 40 bytes per path beyond the names
    themselves; packed, 300,000 paths cost little more than their names.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.count = 0

    def append(self, path: bytes) -> None:
        self._buffer += path
        self._buffer += b"\0"
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[bytes]:
        buffer, start = self._buffer, 0
        while start < len(buffer):
            end = buffer.index(b"\0", start)
            yield bytes(buffer[start:end])
            start = end + 1


class ProgressReporter(Reporter):
    """A Reporter that also draws a one-line progress report."""

    def __init__(self, stream: TextIO, level: str, clock=time.monotonic) -> None:
        super().__init__(stream)
        self.level = level
        self.clock = clock
        self.started = clock()
        self.last_draw = 0.0
        self.files_done = 0
        self.bytes_done = 0
        self.total_files: Optional[int] = None
        self.total_bytes: Optional[int] = None
        self._line_len = 0

    def inhale(self, paths: Iterable[bytes]) -> PathList:
        """Read the whole path list first (moderate and full levels).

        At the full level every path is lstat'ed as it is read, so the
        estimate weighs files by size (stat is cheap next to reading).
        """
        inhaled = PathList()
        total = 0
        weigh = self.level == "full"
        for path in paths:
            inhaled.append(path)
            if weigh:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if st.st_mode & 0o170000 == 0o100000:
                    total += st.st_size
        self.total_files = len(inhaled)
        if weigh:
            self.total_bytes = total
        self.stream.write("backshift: %d paths to back up\n" % self.total_files)
        return inhaled

    def note(self, path: bytes, reason: str) -> None:
        self._clear()
        super().note(path, reason)

    def file_done(self, path: bytes, size: int) -> None:
        self.files_done += 1
        self.bytes_done += size
        now = self.clock()
        if now - self.last_draw >= REDRAW_SECONDS:
            self.last_draw = now
            self._draw(now)

    def fraction_done(self) -> Optional[float]:
        if not self.total_files:
            return None
        if self.total_bytes is not None:
            total = self.total_bytes + self.total_files * PER_FILE_BYTES
            done = self.bytes_done + self.files_done * PER_FILE_BYTES
        else:
            total, done = self.total_files, self.files_done
        return min(1.0, done / total) if total else 1.0

    def status_line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        parts: List[str] = []
        fraction = self.fraction_done()
        if fraction is not None:
            parts.append("%5.1f%%" % (100 * fraction))
        files = "%d" % self.files_done
        if self.total_files is not None:
            files += "/%d" % self.total_files
        parts.append(files + " files")
        size = human_bytes(self.bytes_done)
        if self.total_bytes is not None:
            size += "/" + human_bytes(self.total_bytes)
        parts.append(size)
        parts.append(human_bytes(self.bytes_done / elapsed) + "/s")
        if fraction:
            parts.append("ETA " + human_duration(elapsed * (1 - fraction) / fraction))
        return " ".join(parts)

    def _draw(self, now: float) -> None:
        line = self.status_line(now)
        self.stream.write("\r" + line + " " * max(0, self._line_len - len(line)))
        self.stream.flush()
        self._line_len = len(line)

    def _clear(self) -> None:
        if self._line_len:
            self.stream.write("\r" + " " * self._line_len + "\r")
            self._line_len = 0

    def finish(self) -> None:
        self._draw(self.clock())
        self.stream.write("\n")
        self.stream.flush()


def make_reporter(level: str, stream: TextIO) -> Tuple[Reporter, bool]:
    """The reporter for a level, and whether the path list must be inhaled."""
    if level == "none":
        return Reporter(stream), False
    return ProgressReporter(stream, level), level in ("moderate", "full")
