"""Progress reports on stderr during a backup (seed feature 5 and its notes).

Levels:
  none      nothing but errors; paths stream through with bounded memory.
  minimal   counts of files and bytes done and the rate; still streaming.
  moderate  the path list is read first; percent and ETA assume every file
            takes the same time, as the seed's program did.
  full      the path list is read first and every path lstat'ed, so percent
            and ETA weigh files by size: each file costs its bytes and a
            cost per file, both measured as the backup goes.
The ETA is estimate.Estimator's: the reader's cost per file and per byte
and the store's pace, each measured over the last seconds, run over the
work left (at the full level, every file's size in input order) and over
what is still queued for compression and writing (pipeline.StorePipeline
counts what it was handed and what it has written, which also shows a big
file's progress before the file is done).  So a run of small files at the
start does not make the big ones look quick or slow, and the end of a
backup with slow compression is the queue draining, which the line says.
The percentage is the share of the run the ETA implies.  The line is
redrawn every TICK_SECONDS by a thread of its own while anything goes on.
"""

import array
import os
import threading
import time
from typing import Callable, Iterable, Iterator, List, Optional, Protocol, TextIO, Tuple

from .estimate import Estimator, Sample, Work
from .report import Reporter, StatusLine, human_bytes, human_duration

LEVELS = ("none", "minimal", "moderate", "full")
TICK_SECONDS = 0.5
QUEUE_SHOWN_BYTES = 1024 * 1024


class PathList:
    """An inhaled path list, packed: one buffer of NUL-terminated paths.

    A list of bytes objects costs about 40 bytes per path beyond the names
    themselves; packed, 300,000 paths cost little more than their names
    (and, weighed, 8 bytes each for the sizes the estimate needs).
    """

    def __init__(self, weigh: bool = False) -> None:
        self._buffer = bytearray()
        self.count = 0
        # Weighed (the full level): the bytes of the paths so far, after each.
        self.ends = array.array("Q") if weigh else None

    def append(self, path: bytes, size: int = 0) -> None:
        self._buffer += path
        self._buffer += b"\0"
        self.count += 1
        if self.ends is not None:
            self.ends.append((self.ends[-1] if self.count > 1 else 0) + size)

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
        self._work: Optional[Work] = None
        self._store: Optional[StoreGauge] = None
        self._estimator: Optional[Estimator] = None
        self._read_at_done = 0
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
        self._store = store

    def inhale(self, paths: Iterable[bytes]) -> PathList:
        """Read the whole path list first (moderate and full levels).

        At the full level every path is lstat'ed as it is read, so the
        estimate weighs files by size (stat is cheap next to reading).
        """
        weigh = self.level == "full"
        inhaled = PathList(weigh)
        for path in paths:
            size = 0
            if weigh:
                try:
                    st = os.lstat(path)
                except OSError:
                    pass
                else:
                    if st.st_mode & 0o170000 == 0o100000:
                        size = st.st_size
            inhaled.append(path, size)
            self.paths_read += 1
        with self._lock:
            self._work = Work(len(inhaled), inhaled.ends)
            self.total_bytes = self._work.total_bytes
            self.total_files = len(inhaled)
            self._line.clear()
            self.stream.write("backshift: %d paths to back up\n" % self.total_files)
            self.stream.flush()
        return inhaled

    def note(self, path: bytes, reason: str) -> None:
        with self._lock:
            self._line.clear()
            super().note(path, reason)

    def file_done(self, path: bytes, size: int) -> None:
        self.files_done += 1
        self.bytes_done += size
        self._read_at_done = self._handed()

    def _handed(self) -> int:
        return self._store.handed_bytes if self._store is not None else 0

    def _queued(self) -> int:
        store = self._store
        return max(0, store.handed_bytes - store.written_bytes) if store is not None else 0

    def _bytes_progress(self) -> int:
        """Bytes of the files done, and of the file being read so far (roughly:
        what the store was handed since the last file was done)."""
        return self.bytes_done + max(0, self._handed() - self._read_at_done)

    def eta(self, now: float) -> Optional[float]:
        """Seconds left (None while unknown): see estimate.py."""
        store = self._store
        if self._work is None or store is None:
            return None
        if self._estimator is None:
            self._estimator = Estimator(self._work, store.cores, store.max_bytes)
        written = store.written_bytes
        self._estimator.add(Sample(now, self.files_done, self._bytes_progress(), written,
                                   max(0, store.handed_bytes - written), store.waited,
                                   store.store_seconds))
        return self._estimator.seconds_left()

    def status_line(self, now: float) -> str:
        queued = self._queued()
        eta = self.eta(now)
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
    waited: float      # seconds the backup waited for room in the queue
    store_seconds: float  # seconds the workers spent storing, summed over workers
    cores: int         # CPUs the workers may use at once
    max_bytes: int     # the queue's size


def make_reporter(level: str, stream: TextIO) -> Tuple[Reporter, bool]:
    """The reporter for a level, and whether the path list must be inhaled."""
    if level == "none":
        return Reporter(stream), False
    return ProgressReporter(stream, level), level in ("moderate", "full")
