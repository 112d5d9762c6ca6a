"""Publishing a running backup's tree as an unfinished backup record.

Every ``interval`` seconds the tree so far is published, so an interrupted
backup's work is reused by the next run (seed feature 6), and the record's
mtime tells ``--expire`` that the backup is alive (FORMAT.md, "Expiry").

A published tree may refer only to durable objects, but the store's
workers may be far behind the reader (up to StorePipeline.max_bytes of
chunks, seconds of xz).  So a checkpoint is taken in two steps: at a point
where the tree is consistent (between paths, between chunks of a file) it
is *snapshotted* (the pack cut, the open records stored as they are), and
it is *published* once every object handed to the store before it is
written.  Until then, when the interval comes round, the last published
tree is published again: the record stays fresh whatever the workers do.
The store calls ``on_wait`` while it makes the backup wait, so this holds
while the backup waits for room in the pipeline or for its final sync.
"""

import time
from typing import Callable, List, Optional

from .catalog import BackupRecord, Catalog
from .pipeline import StorePipeline
from .records import ChunkRef, Entry

# snapshot(partial) -> the top record of the tree so far, with ``partial``
# (a file being read) in the directory open on top.
Snapshot = Callable[[Optional[Entry]], List[ChunkRef]]
# Fills in the record's running totals before it is published.
Update = Callable[[BackupRecord], None]


class Checkpointer:
    """Takes and publishes checkpoints of one backup at a fixed interval."""

    def __init__(self, interval: float, record: BackupRecord, catalog: Catalog,
                 store: StorePipeline, snapshot: Snapshot, update: Update) -> None:
        self._interval = interval
        self._record = record
        self._catalog = catalog
        self._store = store
        self._snapshot = snapshot
        self._update = update
        self._published_at = time.monotonic()
        # A snapshot not yet published: its top record, and how many
        # objects had been handed to the store when it was taken.
        self._waiting: Optional[List[ChunkRef]] = None
        self._waiting_for = 0
        store.on_wait = self.on_wait

    def tick(self, partial: Optional[Callable[[], Entry]] = None) -> None:
        """At a consistent point: snapshot the tree if one is due, publish what is ready.

        ``partial`` makes the entry of a file being read, if one is.
        """
        if self._waiting is None:
            if not self._due():
                return  # the common case, once per path: nothing to do
            self._waiting = self._snapshot(partial() if partial is not None else None)
            self._waiting_for = self._store.submitted
        self.on_wait()

    def on_wait(self) -> None:
        """Publish the snapshot if its objects are written, else refresh the record if due.

        Safe while the tree is half-way through a change: it only publishes.
        """
        if self._waiting is not None and self._store.written_through >= self._waiting_for:
            root, self._waiting = self._waiting, None
            self._publish(root)
        elif self._due():
            self._refresh()

    def _due(self) -> bool:
        return time.monotonic() - self._published_at >= self._interval

    def _refresh(self) -> None:
        """Write the record again with the last tree published: a heartbeat, not a
        checkpoint (``checkpoints`` counts trees published)."""
        self._catalog.write(self._record)
        self._published_at = time.monotonic()

    def _publish(self, root: Optional[List[ChunkRef]]) -> None:
        self._store.objects.sync()  # the renames of the objects it names are durable
        self._record.root = root
        self._update(self._record)
        self._record.checkpoints += 1
        self._catalog.write(self._record)
        self._published_at = time.monotonic()
