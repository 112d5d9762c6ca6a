"""How long a backup still takes: the estimate behind the progress line's ETA.

A backup is two stages joined by a queue (pipeline.StorePipeline): the
backup thread opens, reads, cuts and hashes files; the store's workers
compress and write what it hands over.  Which stage is the slower one
changes within a run: thousands of small files keep the reader busy while
the store idles; a big file fills the queue and the reader waits for the
store.  One rate (files or bytes per second) measured over one part of a
run predicts another part badly, so each stage gets its own costs, measured
over the last WINDOW seconds:

* the reader: ``a`` seconds per file and ``b`` per byte, fitted by least
  squares to the reader's own time (the time it waited for room in the
  store's queue is the store's, and left out).  When the samples cannot
  tell the two apart (only big files, or files all of a size), a file is
  taken to cost as much as PER_FILE_BYTES of data.
* the store: seconds per byte while it had work waiting for every worker
  (at least SATURATED bytes queued), so a spell of small files that left
  it idle says nothing of its pace.  Its workers report in lumps (several
  big chunks done at once), so the pace is taken from the first to the
  last lump of each busy spell, not from the spell's edges.  Until it has
  been busy MIN_BUSY seconds, its pace is the time a worker took per byte
  while it was not, over the number of workers that run at once.  Once
  the reader is done, the core it kept busy while the store was busy goes
  to the store: what is queued at the end drains that much faster.

The work left (with the full report, the size of every file still to come,
in input order) is cut into BLOCKS pieces and run through the two stages:
the store starts with what is queued and follows the reader, which runs
at most a queue's worth ahead.  Small files first and big ones last then
cost the reader's time for the small ones plus the store's for the big
ones, not the larger of the two.
"""

import collections
from typing import Deque, Iterator, List, NamedTuple, Optional, Sequence, Tuple

WINDOW = 20.0
# Opening, reading and recording a file costs about as much as reading this
# much data (the guess when the samples cannot tell).
PER_FILE_BYTES = 64 * 1024
# A quarter of the store's queue (pipeline.DEFAULT_MAX_BYTES): every worker has work.
SATURATED = 16 * 1024 * 1024
MIN_BUSY = 2.0
# A pause (another program flushing the disk, say) must not make the ETA
# explode: the store's pace is never taken below this share of its pace
# over the whole run.
STALL_FLOOR = 0.5
# The store's pace once the reader is done is taken as no faster than twice
# its pace while the reader ran (the reader took a core at most).
DRAIN_FLOOR = 0.5
# Pieces the work left is cut into: enough to follow where small and big
# files lie, few enough to do twice a second.
BLOCKS = 64
# Least squares tells the per-file cost from the per-byte cost only when
# files and bytes do not grow in step: 1 - (their cosine)^2 at least this.
INDEPENDENT = 0.05


class Sample(NamedTuple):
    """What the backup has done by ``time``; every count is cumulative."""

    time: float
    files: int        # paths done
    read: int         # bytes read, of the files done and the one being read
    written: int      # bytes the store has compressed and written
    queued: int       # bytes handed to the store and not yet written
    waited: float     # seconds the reader spent waiting for room in the queue
    store_seconds: float  # seconds the store's workers spent, summed over workers


class Work:
    """What a backup has to do: its paths, and with the full report their sizes in order."""

    def __init__(self, files: int, ends: Optional[Sequence[int]] = None) -> None:
        self.files = files
        # ends[i]: bytes of the first i+1 files (regular files' sizes, in input order).
        self.ends = ends

    @property
    def total_bytes(self) -> Optional[int]:
        if self.ends is None:
            return None
        return self.ends[-1] if len(self.ends) else 0

    def blocks(self, files_done: int, read: int, count: int) -> Iterator[Tuple[int, int]]:
        """(files, bytes) of up to ``count`` consecutive pieces of what is left."""
        ends = self.ends
        if ends is None or files_done >= self.files:
            return
        left = self.files - files_done
        start = files_done
        position = read  # bytes read so far, the file being read included
        for number in range(1, count + 1):
            end = files_done + (left * number + count - 1) // count
            if end <= start:
                continue
            size = max(0, ends[end - 1] - position)
            yield end - start, size
            start, position = end, max(position, ends[end - 1])


class Estimator:
    """Seconds left, from the samples of the last WINDOW seconds."""

    def __init__(self, work: Work, cores: int = 1, queue_bytes: int = 64 * 1024 * 1024) -> None:
        self.work = work
        self.cores = max(1, cores)
        self.queue_bytes = queue_bytes
        self._samples: Deque[Sample] = collections.deque()
        self._first: Optional[Sample] = None
        self._pace: Optional[float] = None  # the store's seconds per byte, last measured busy
        # What the pace becomes once the reader is done (a share of it).
        self._drain = 1.0

    def add(self, sample: Sample) -> None:
        if self._first is None:
            self._first = sample
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.time - self._samples[1].time >= WINDOW:
            self._samples.popleft()

    def seconds_left(self) -> Optional[float]:
        """The estimate after the last sample; None while it cannot be made."""
        if not self._samples:
            return None
        last = self._samples[-1]
        files_left = max(0, self.work.files - last.files)
        total_bytes = self.work.total_bytes
        bytes_left = 0 if total_bytes is None else max(0, total_bytes - last.read)
        if not files_left and not bytes_left and not last.queued:
            return 0.0
        pace = self.store_pace()
        if files_left and total_bytes is None:
            # Sizes unknown (the moderate report): the time per file so far,
            # then what is queued then.
            per_file = self._time_per_file()
            if per_file is None:
                return None
            return files_left * per_file + (last.queued * pace if pace is not None else 0.0)
        if not files_left and not bytes_left:
            return None if pace is None else last.queued * pace * self._drain
        costs = self.reader_costs()
        if costs is None or pace is None:
            return None
        return self._flow(costs, pace, last)

    # -- the two stages ---------------------------------------------------------

    def _intervals(self) -> List[Tuple[Sample, Sample]]:
        samples = list(self._samples)
        return [(a, b) for a, b in zip(samples, samples[1:]) if b.time > a.time]

    def reader_costs(self) -> Optional[Tuple[float, float]]:
        """(seconds per file, seconds per byte) of the reader's own time."""
        sff = sfx = sxx = sfy = sxy = 0.0
        for a, b in self._intervals():
            files, size = b.files - a.files, b.read - a.read
            busy = max(0.0, (b.time - a.time) - (b.waited - a.waited))
            sff += files * files
            sfx += files * size
            sxx += size * size
            sfy += files * busy
            sxy += size * busy
        if not sff and not sxx:
            return None  # nothing read in the window
        det = sff * sxx - sfx * sfx
        if sff and sxx and det > INDEPENDENT * sff * sxx:
            per_file = (sfy * sxx - sxy * sfx) / det
            per_byte = (sxy * sff - sfy * sfx) / det
            if per_file >= 0 and per_byte >= 0:
                return per_file, per_byte
            if per_file < 0:
                return 0.0, max(0.0, sxy / sxx)
            return max(0.0, sfy / sff), 0.0
        # One cost stands for both: a file as PER_FILE_BYTES of data.
        k = PER_FILE_BYTES
        szz = sxx + 2 * k * sfx + k * k * sff
        per_byte = max(0.0, (sxy + k * sfy) / szz)
        return k * per_byte, per_byte

    def _time_per_file(self) -> Optional[float]:
        intervals = self._intervals()
        files = sum(b.files - a.files for a, b in intervals)
        if not files:
            return None
        return sum(b.time - a.time for a, b in intervals) / files

    def store_pace(self) -> Optional[float]:
        """The store's seconds per byte (None before it has written anything)."""
        self._measure_pace()
        pace = self._pace
        if pace is None:
            worked = written = 0.0
            for a, b in self._intervals():
                if not _saturated(a, b):
                    worked += b.store_seconds - a.store_seconds
                    written += b.written - a.written
            if worked <= 0 or written <= 0:
                return None
            pace = worked / written / self.cores
        first, last = self._first, self._samples[-1]
        if first is not None and last.written > first.written:
            # A stall in the window: no slower than this share of the whole run.
            run = (last.time - first.time) / (last.written - first.written)
            pace = min(pace, run / STALL_FLOOR)
        return pace

    def _measure_pace(self) -> None:
        """The pace while the store was busy, from the first to the last lump
        written in each busy spell of the window (kept while it is idle)."""
        busy = written = 0.0
        spent = reader = 0.0  # time, and the reader's own time then
        lumps: List[Sample] = []  # the samples of the current spell that saw a lump
        for a, b in self._intervals() + [(self._samples[-1], self._samples[-1])]:
            if _saturated(a, b) and b.time > a.time:
                if b.written > a.written:
                    lumps.append(b)
                spent += b.time - a.time
                reader += max(0.0, (b.time - a.time) - (b.waited - a.waited))
                continue
            if len(lumps) > 1:
                busy += lumps[-1].time - lumps[0].time
                written += lumps[-1].written - lumps[0].written
            lumps = []
        if busy >= MIN_BUSY and written > 0:
            self._pace = busy / written
            # While the reader works it takes a core (and, in CPython, the
            # interpreter lock) from the store; once it is done they are the
            # store's: the queue left at the end drains faster.
            self._drain = max(DRAIN_FLOOR, 1.0 - reader / spent / self.cores)

    def _flow(self, costs: Tuple[float, float], pace: float, last: Sample) -> float:
        """When the store finishes: the work left, in pieces, through both stages.

        The store is first busy with what is queued, then stores each piece
        as the reader hands it over; the reader may run one queue ahead of
        the store, no more."""
        per_file, per_byte = costs
        reader = 0.0
        store = last.queued * pace
        # (bytes handed over, counted from the start of what is queued now;
        # when the store is done with them), piece by piece.
        done_at: List[Tuple[int, float]] = [(0, 0.0), (last.queued, store)]
        at = 1  # the first of done_at the reader may still wait for
        for files, size in self.work.blocks(last.files, last.read, BLOCKS):
            reader += per_file * files + per_byte * size
            # The piece fits in the queue once the store is done with all
            # but a queue's worth of what comes before its end.
            needed = done_at[-1][0] + size - self.queue_bytes
            if needed > 0:
                while at + 1 < len(done_at) and done_at[at][0] < needed:
                    at += 1
                (before, then), (after, when) = done_at[at - 1], done_at[at]
                share = min(1.0, (needed - before) / (after - before)) if after > before else 1.0
                reader = max(reader, then + share * (when - then))
            # The store follows the reader through the piece: done when it
            # has stored the piece, and not before the reader handed it all.
            store = max(store + pace * size, reader)
            done_at.append((done_at[-1][0] + size, store))
        return reader + max(0.0, store - reader) * self._drain


def _saturated(a: Sample, b: Sample) -> bool:
    """Had every worker of the store work from ``a`` to ``b``?"""
    return a.queued >= SATURATED and b.queued >= SATURATED
