"""Publishing a running backup's tree as an unfinished backup record.

Every ``interval`` seconds the tree so far is published, so an interrupted
backup's work is reused by the next run (seed feature 6), and the record's
mtime tells ``--expire`` that the backup is alive (FORMAT.md, "Expiry").
A published tree refers only to durable objects.
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

    def tick(self, partial: Optional[Callable[[], Entry]] = None) -> None:
        """At a consistent point: publish the tree if a checkpoint is due.

        ``partial`` makes the entry of a file being read, if one is.
        """
        if time.monotonic() - self._published_at < self._interval:
            return
        root = self._snapshot(partial() if partial is not None else None)
        self._store.sync()  # publish only chunks already durable
        self._record.root = root
        self._update(self._record)
        self._record.checkpoints += 1
        self._catalog.write(self._record)
        self._published_at = time.monotonic()
