"""Publishing a running backup's tree as an unfinished backup record.

Every ``interval`` seconds a newer tree is published (a *checkpoint*), so
an interrupted backup's work is reused by the next run (seed feature 6),
and the record's mtime tells ``--expire`` that the backup is alive
(FORMAT.md, "Expiry").

A published tree may refer only to durable objects, but the store's
workers may be far behind the reader (up to StorePipeline.max_bytes of
chunks, seconds of xz).  So a checkpoint is made in two steps.  At a point
where the tree is consistent (between paths, between chunks of a file)
the tree is *frozen*: the pack is cut and the open directories' records
are copied as they are, not yet stored.  That happens once an interval,
and while the workers are behind, once for each interval's worth of their
work handed over, so that frozen trees become ready about one an interval
as the workers catch up.  A frozen tree is *published* (its last records
stored, then the record written) when a checkpoint is due and every
object it names is written: the newest such tree.  Between paths that is
every object handed to the store before it.  Inside a file it is the
objects handed over before the file, and of the file's own chunks the
prefix already written: it is published as a PARTIAL entry (FORMAT.md)
that grows each interval while the workers catch up, so a checkpoint
comes every interval however large the file and however far behind the
workers are (as long as a chunk is written in an interval: the
pipeline's workers compress oldest first).  When no newer tree can be
published, the last one is written again: the record stays fresh
whatever the workers do.  The store calls ``on_wait`` while it makes the
backup wait, so this holds while the backup waits for room in the
pipeline or for its final sync.
"""

import bisect
import time
from typing import Callable, List, Optional

from .catalog import BackupRecord, Catalog
from .compression import Compressor, quick
from .pipeline import StorePipeline
from .records import FLAG_PARTIAL, KIND_FILE, ChunkRef, Entry
from .treebuilder import FrozenTree

# freeze(reading) -> the tree so far.  ``reading``: a file is being read,
# so what freezing stores (a pack cut) must be written at once, not queued
# behind the file's chunks.
Freeze = Callable[[bool], FrozenTree]
# Fills in the record's running totals before it is published.
Update = Callable[[BackupRecord], None]
# Frozen trees kept waiting for their objects: enough for one an interval
# while the workers are this many intervals behind; past that, the waiting
# ones are thinned out evenly.  Each holds the open directories' unstored
# record tails (memory).
MAX_FROZEN = 12


class FileInProgress:
    """A file being read into chunks, as a checkpoint may show it: a PARTIAL
    entry naming the prefix of its chunks already written."""

    def __init__(self, entry: Entry, done: List[ChunkRef], first: int) -> None:
        # Its metadata as when reading began: what the next run compares.
        self._entry = _partial(entry, [])
        self.chunks = list(done)
        self._done = len(done)  # an interrupted backup's prefix: durable already
        self.first = first  # objects handed to the store before its first chunk
        # For each chunk read: objects handed to the store once it was, so
        # it is written when that many are (StorePipeline.written_through).
        self._handed: List[int] = []

    def add(self, chunk: ChunkRef, handed: int) -> None:
        self.chunks.append(chunk)
        self._handed.append(handed)

    def written(self, written_through: int) -> int:
        """How many of its leading chunks are written."""
        return self._done + bisect.bisect_right(self._handed, written_through)

    def entry(self, count: int) -> Entry:
        """The PARTIAL entry of its first ``count`` chunks (FORMAT.md)."""
        return _partial(self._entry, self.chunks[:count])


def _partial(entry: Entry, chunks: List[ChunkRef]) -> Entry:
    return Entry(entry.name, KIND_FILE, flags=FLAG_PARTIAL, mode=entry.mode, uid=entry.uid,
                 gid=entry.gid, mtime_ns=entry.mtime_ns, ctime_ns=entry.ctime_ns,
                 ino=entry.ino, size=entry.size, nlink=entry.nlink, chunks=chunks)


class _Frozen:
    """A frozen tree waiting to be published, or the one published last."""

    __slots__ = ("tree", "needs", "file", "taken", "shown")

    def __init__(self, tree: FrozenTree, needs: int, file: Optional[FileInProgress],
                 taken: float) -> None:
        self.tree = tree
        self.needs = needs  # objects handed over before it that it names
        self.file = file  # the file being read when it was frozen
        self.taken = taken
        self.shown = -1  # chunks of ``file`` in the record published from it (0: no file)


class Checkpointer:
    """Takes and publishes checkpoints of one backup at a fixed interval."""

    def __init__(self, interval: float, record: BackupRecord, catalog: Catalog,
                 store: StorePipeline, freeze: Freeze, update: Update,
                 compressor: Compressor) -> None:
        self._interval = interval
        # For the last records of a tree, stored in the backup's thread when
        # it is published, while the workers may keep xz busy (PyPy runs one
        # at a time): the backup's last records replace them.
        self._compressor = quick(compressor)
        self._record = record
        self._catalog = catalog
        self._store = store
        self._freeze = freeze
        self._update = update
        now = time.monotonic()
        self._started = now
        self._written_at = now  # the record, checkpoint or not
        self._published_at = now  # the last checkpoint
        # The first consistent point freezes: a backup whose reader is done
        # before the first interval still has a tree to publish meanwhile.
        self._frozen_at = now - interval
        self._frozen_handed = 0  # StorePipeline.handed_bytes then
        self._frozen_file: Optional[FileInProgress] = None  # the last frozen while read
        self._frozen: List[_Frozen] = []  # oldest first
        store.on_wait = self.on_wait

    def tick(self, reading: Optional[FileInProgress] = None) -> None:
        """At a consistent point: freeze the tree if due, publish what is ready.

        ``reading`` is the file being read, if one is.
        """
        now = time.monotonic()
        if (reading is None or reading is not self._frozen_file) and self._freeze_due(now):
            self._take(reading, now)
        if now - self._published_at >= self._interval:
            self.on_wait()

    def _freeze_due(self, now: float) -> bool:
        """Once an interval; and, while the workers are behind the reader, once for each
        interval's worth of their work handed over (so that trees become ready for
        publishing one an interval as the workers catch up)."""
        if now - self._frozen_at >= self._interval:
            return True
        work = self._store.written_bytes * self._interval / max(now - self._started, 1e-3)
        return self._store.handed_bytes - self._frozen_handed >= \
            max(work, self._store.max_bytes / MAX_FROZEN)

    def _take(self, reading: Optional[FileInProgress], now: float) -> None:
        if reading is None:
            tree = self._freeze(False)
            needs = self._store.submitted  # the pack just cut included
        else:
            # One tree for the whole file: what it shows of the file grows.
            tree = self._freeze(True)
            needs = reading.first
            self._frozen_file = reading
        self._frozen.append(_Frozen(tree, needs, reading, now))
        self._frozen_at = now
        self._frozen_handed = self._store.handed_bytes
        if len(self._frozen) > MAX_FROZEN:
            self._thin_out()

    def _thin_out(self) -> None:
        """Drop the waiting tree whose loss leaves the shortest gap (never the
        oldest, next to be ready, nor the newest)."""
        frozen = self._frozen
        gaps = [frozen[i + 1].taken - frozen[i - 1].taken for i in range(1, len(frozen) - 1)]
        del frozen[1 + gaps.index(min(gaps))]

    def on_wait(self) -> None:
        """Publish the newest tree whose objects are written, if due and newer than the
        last published; else refresh the record if due.

        Safe while the tree is half-way through a change: it only publishes
        trees frozen before.
        """
        now = time.monotonic()
        if now - self._published_at >= self._interval and self._publish_newest():
            return
        if now - self._written_at >= self._interval:
            self._refresh()

    def _publish_newest(self) -> bool:
        written = self._store.written_through
        for index in range(len(self._frozen) - 1, -1, -1):
            frozen = self._frozen[index]
            if written < frozen.needs:
                continue
            del self._frozen[:index]  # older trees hold less
            count = frozen.file.written(written) if frozen.file is not None else 0
            if count == frozen.shown:
                return False  # the record shows it already
            frozen.shown = count
            last = frozen.file.entry(count) if frozen.file is not None else None
            self._publish(frozen.tree.store(self._store.objects, self._compressor, last))
            return True
        return False

    def _refresh(self) -> None:
        """Write the record again with the last tree published: a heartbeat, not a
        checkpoint (``checkpoints`` counts trees published)."""
        self._catalog.write(self._record)
        self._written_at = time.monotonic()

    def _publish(self, root: List[ChunkRef]) -> None:
        self._store.objects.sync()  # the renames of the objects it names are durable
        self._record.root = root
        self._update(self._record)
        self._record.checkpoints += 1
        self._catalog.write(self._record)
        self._written_at = self._published_at = time.monotonic()
