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
The ETA divides the work left by the rate of the last RATE_WINDOW seconds,
so a run of small files at the start does not promise the big ones will go
as fast (or as slowly).  Bytes read but still queued for compression and
writing count as work left: the end of a backup with slow compression is
the queue draining, and the line says so.  The report is redrawn in place
every TICK_SECONDS while anything is going on.
"""

import collections
import os
import threading
import time
from typing import Callable, Deque, Iterable, Iterator, List, Optional, TextIO, Tuple

from .report import Reporter, StatusLine, human_bytes, human_duration

LEVELS = ("none", "minimal", "moderate", "full")
PER_FILE_BYTES = 64 * 1024
RATE_WINDOW = 8.0
TICK_SECONDS = 0.5
QUEUE_SHOWN_BYTES = 1024 * 1024


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
    """A Reporter that also keeps a one-line progress report redrawn on its stream.

    The backup only counts (``file_done``); a ticker thread redraws the line
    every TICK_SECONDS from those counts, so it stays fresh while a big file
    is read and while the write queue drains at the end.
    """

    def __init__(self, stream: TextIO, level: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(stream)
        self.level = level
        self.clock = clock
        self.started = clock()
        self.files_done = 0
        self.bytes_done = 0
        self.paths_read = 0
        self.total_files: Optional[int] = None
        self.total_bytes: Optional[int] = None
        self._queued: Callable[[], int] = lambda: 0
        # (time, work done) samples of the last RATE_WINDOW seconds.
        self._samples: Deque[Tuple[float, float]] = collections.deque()
        self._line = StatusLine(stream, enabled=True, clock=clock)
        self._lock = threading.Lock()  # the ticker and the backup both write
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="backshift-progress",
                                        daemon=True)
        self._ticker.start()

    def watch_queue(self, queued: Callable[[], int]) -> None:
        """Count ``queued()`` bytes (read, not yet compressed and written) as work left."""
        self._queued = queued

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
            self.paths_read += 1
            if weigh:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if st.st_mode & 0o170000 == 0o100000:
                    total += st.st_size
        with self._lock:
            if weigh:
                self.total_bytes = total
            self.total_files = len(inhaled)
            self._line.clear()
            self.stream.write("backshift: %d paths to back up\n" % self.total_files)
            self.stream.flush()
            self._samples.clear()
        return inhaled

    def note(self, path: bytes, reason: str) -> None:
        with self._lock:
            self._line.clear()
            super().note(path, reason)

    def file_done(self, path: bytes, size: int) -> None:
        self.files_done += 1
        self.bytes_done += size

    def _work(self, files: int, size: int) -> float:
        """Work in the estimate's unit: bytes plus a per-file cost (files if sizes are unknown)."""
        if self.total_bytes is None:
            return float(files)
        return size + files * PER_FILE_BYTES

    def _work_done(self, queued: int) -> float:
        if self.total_bytes is None:
            return float(self.files_done)
        return self._work(self.files_done, max(0, self.bytes_done - queued))

    def _rate(self, now: float, done: float) -> float:
        """Work per second over the last RATE_WINDOW seconds."""
        samples = self._samples
        samples.append((now, done))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        then, done_then = samples[0]
        return (done - done_then) / (now - then) if now > then else 0.0

    def status_line(self, now: float) -> str:
        queued = self._queued()
        done = self._work_done(queued)
        rate = self._rate(now, done)
        if self.total_files is None and self.paths_read and self.files_done == 0:
            return "reading the path list: %d paths" % self.paths_read
        parts: List[str] = []
        total = None
        if self.total_files is not None:
            total = self._work(self.total_files, self.total_bytes or 0)
            parts.append("%5.1f%%" % (100 * min(1.0, done / total) if total else 100.0))
        files = "%d" % self.files_done
        if self.total_files is not None:
            files += "/%d" % self.total_files
        parts.append(files + " files")
        size = human_bytes(self.bytes_done)
        if self.total_bytes is not None:
            size += "/" + human_bytes(self.total_bytes)
        parts.append(size)
        elapsed = max(now - self.started, 1e-6)
        parts.append(human_bytes(self.bytes_done / elapsed) + "/s")
        if total is not None and self.files_done >= self.total_files:  # type: ignore[operator]
            parts.append("all read; %s waiting to be compressed and written" % human_bytes(queued)
                         if queued else "all written; flushing to disk")
        elif queued >= QUEUE_SHOWN_BYTES:
            parts.append("%s queued" % human_bytes(queued))
        if total is not None:
            left = max(0.0, total - done)
            if not left:
                parts.append("ETA " + human_duration(0))
            elif rate > 0:
                parts.append("ETA " + human_duration(left / rate))
        return " ".join(parts)

    def _tick(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            self._line.show(self.status_line(self.clock()), force=True)

    def finish(self) -> None:
        """Stop the ticker and draw the last state (once; later calls do nothing)."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._ticker.join()
        self._draw()
        with self._lock:
            self.stream.write("\n")
            self.stream.flush()


def make_reporter(level: str, stream: TextIO) -> Tuple[Reporter, bool]:
    """The reporter for a level, and whether the path list must be inhaled."""
    if level == "none":
        return Reporter(stream), False
    return ProgressReporter(stream, level), level in ("moderate", "full")
