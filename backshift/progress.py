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
The ETA is the slower of two estimates, each at the pace of the last
RATE_WINDOW seconds: reading what is left (bytes plus a cost per file), and
compressing and writing what is left plus what is already queued for it
(pipeline.StorePipeline counts what it was handed and what it has written,
which also shows a big file's progress before the file is done).  So a run
of small files at the start does not make the big ones look quick, and the
end of a backup with slow compression is the queue draining, which the line
says.  The percentage is the share of the run the ETA implies.  The line is
redrawn every TICK_SECONDS by a thread of its own while anything goes on.
"""

import collections
import os
import threading
import time
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Protocol, TextIO, Tuple

from .report import Reporter, StatusLine, human_bytes, human_duration

LEVELS = ("none", "minimal", "moderate", "full")
PER_FILE_BYTES = 64 * 1024
RATE_WINDOW = 15.0
STALL_FLOOR = 0.5
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
        self._read: Callable[[], int] = lambda: 0
        self._read_at_done = 0
        # (time, reading work done, bytes written) of the last RATE_WINDOW seconds.
        self._samples: Deque[Tuple[float, float, int]] = collections.deque()
        self._line = StatusLine(stream, enabled=True, clock=clock)
        self._lock = threading.Lock()  # the ticker and the backup both write
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, name="backshift-progress",
                                        daemon=True)
        self._ticker.start()

    def watch(self, store: "StoreGauge") -> None:
        """Follow the data through ``store`` (pipeline.StorePipeline): what it
        has been handed shows a big file's progress before the file is done;
        what it still holds is work left."""
        self._queued = lambda: max(0, store.handed_bytes - store.written_bytes)
        self._read = lambda: store.handed_bytes

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
        self._read_at_done = self._read()

    def _bytes_progress(self) -> int:
        """Bytes of the files done, and of the file being read so far (roughly:
        what the store was handed since the last file was done)."""
        return self.bytes_done + max(0, self._read() - self._read_at_done)

    def _work(self, files: int, size: int) -> float:
        """Reading work: bytes plus a per-file cost (files if sizes are unknown)."""
        if self.total_bytes is None:
            return float(files)
        return size + files * PER_FILE_BYTES

    def _rates(self, now: float, read: float, written: int) -> Tuple[float, float]:
        """Reading work and bytes written per second, over the last RATE_WINDOW seconds."""
        samples = self._samples
        samples.append((now, read, written))
        while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
            samples.popleft()
        then, read_then, written_then = samples[0]
        if now <= then:
            return 0.0, 0.0
        # A pause (another program flushing the disk, say) must not make the
        # ETA explode: never below a fraction of the whole run's average.
        run = max(now - self.started, 1e-6)
        return (max((read - read_then) / (now - then), STALL_FLOOR * read / run),
                max((written - written_then) / (now - then), STALL_FLOOR * written / run))

    def eta(self, now: float, queued: int) -> Optional[float]:
        """Seconds left: the slower of reading what is left, and writing what is
        left and what is queued, each at its pace over the last seconds."""
        if self.total_files is None:
            return None
        progress = self._bytes_progress()
        read = self._work(self.files_done, progress)
        written = max(0, progress - queued)
        read_rate, write_rate = self._rates(now, read, written)
        to_read = max(0.0, self._work(self.total_files, self.total_bytes or 0) - read)
        to_write = max(0, (self.total_bytes or 0) - progress) + queued
        if not to_read and not to_write:
            return 0.0
        estimates = []
        if to_read:
            estimates.append(to_read / read_rate if read_rate > 0 else None)
        if to_write and self.total_bytes is not None:
            estimates.append(to_write / write_rate if write_rate > 0 else None)
        return None if None in estimates else max(estimates)  # type: ignore[type-var]

    def status_line(self, now: float) -> str:
        queued = self._queued()
        eta = self.eta(now, queued)
        if self.total_files is None and self.paths_read and self.files_done == 0:
            return "reading the path list: %d paths" % self.paths_read
        parts: List[str] = []
        elapsed = max(now - self.started, 1e-6)
        if self.total_files is not None:
            # The share of the time the whole run takes, as the ETA sees it.
            fraction = elapsed / (elapsed + eta) if eta is not None else \
                self.files_done / self.total_files if self.total_files else 1.0
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
        if self.total_files is not None and self.files_done >= self.total_files:
            parts.append("all read; %s waiting to be compressed and written" % human_bytes(queued)
                         if queued else "all written; flushing to disk")
        elif queued >= QUEUE_SHOWN_BYTES:
            parts.append("%s queued" % human_bytes(queued))
        if eta is not None:
            parts.append("ETA " + human_duration(eta))
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


class StoreGauge(Protocol):
    """What the report reads of the store pipeline, from its own thread."""

    handed_bytes: int
    written_bytes: int


def make_reporter(level: str, stream: TextIO) -> Tuple[Reporter, bool]:
    """The reporter for a level, and whether the path list must be inhaled."""
    if level == "none":
        return Reporter(stream), False
    return ProgressReporter(stream, level), level in ("moderate", "full")
