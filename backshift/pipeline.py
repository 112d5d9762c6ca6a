"""Using both cores: objects stored by worker threads, tar data fetched ahead.

CPython runs one thread of Python at a time, but BLAKE2b, zlib, lzma and
file I/O (read, write, fsync) release that lock on large buffers.  A backup
spends most of its time in exactly those calls, so:

* ``StorePipeline`` lets the backup thread go on reading and chunking while
  worker threads compress, write and fsync the chunks it produced.  The
  digest is computed by the caller (it is cheap next to compression, and a
  chunk list needs it at once), so a caller's chunk lists are complete and
  in order the moment ``put`` returns; only the writing is deferred.  At most
  ``max_bytes`` of chunks are in flight: memory stays bounded however fast
  the reader is.  ``drain`` waits until everything handed over is written;
  ``sync`` also makes the renames durable, so anything that *refers* to
  objects (a checkpoint, the final backup record) is published only after
  it.  Each object still goes through ``ObjectStore.put``'s steps, so an
  object that is already present is touched (expiry relies on that), not
  rewritten.  Compressions run one a core, oldest first, so objects are
  written about in the order handed over (``written_through``, which a
  checkpoint waits for, advances steadily); ``at_once`` stores in the
  calling thread, ahead of the queue (what a checkpoint itself needs).

* ``RecordCache`` reads directory records of earlier backups ahead of a
  backup's walk: when a directory's earlier record has been read, those of
  its subdirectories are read and decompressed in the background, so that
  comparing an unchanged tree waits little for the disk or for xz.

* ``Prefetcher`` does the reverse for restores: while tar data of one chunk
  is written to stdout, the next chunks are read, decompressed and verified
  by worker threads, up to ``max_bytes`` ahead, in the order they will be
  asked for.

A worker's exception (a full disk, say) is raised in the calling thread at
its next call, so errors are not lost.
"""

import collections
import contextlib
import heapq
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Callable, Deque, Dict, Iterable, Iterator, List, Optional, Tuple

from .compression import Compressor
from .objectstore import ObjectReader, ObjectStore, digest_of
from .records import Entry
from .tree import TreeReader

# Compression keeps every core busy; the extra threads wait in fsync (a disk
# round trip per object) without taking a core from compression.
EXTRA_IO_WORKERS = 6
# Enough chunks in flight for every worker to have the next one queued,
# small enough not to matter next to the rest of a backup's memory.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# How often a caller waiting for the store's workers, or for input
# (readahead.py), is called back (on_wait).
WAIT_TICK = 0.2


def default_workers() -> int:
    return (os.cpu_count() or 1) + EXTRA_IO_WORKERS


class StorePipeline:
    """Stores objects from worker threads; ``put`` returns the digest at once.

    Has ``put`` with the signature of ``ObjectStore.put``, so code that
    writes records (recordwriter.RecordWriter) can be given either.
    """

    def __init__(self, objects: ObjectStore, workers: Optional[int] = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.objects = objects
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers or default_workers(),
                                        thread_name_prefix="backshift-store")
        # Objects handed over and not yet known to be written, oldest first,
        # with their sizes and numbers in the order handed over.
        self._pending: Dict[bytes, Tuple["Future[bytes]", int, int]] = {}
        self.submitted = 0  # objects handed over so far
        self._at_once = False  # put stores in the calling thread (``at_once``)
        self.cores = os.cpu_count() or 1  # compressions that run at once
        self._turns = _Turns(self.cores)
        # Called every WAIT_TICK seconds while put, drain or sync waits for
        # a worker (a backup's checkpoints must go on meanwhile).
        self.on_wait: Optional[Callable[[], None]] = None
        self._pending_bytes = 0
        self.peak_bytes = 0
        # All bytes ever handed over, those of them written, and the time
        # the workers spent compressing and writing them: the progress
        # report reads these (and ``waited``) from its own thread.
        self.handed_bytes = 0
        self.written_bytes = 0
        self.store_seconds = 0.0
        self._written_lock = threading.Lock()
        # (seconds waited before the wait going on, when that began or None),
        # replaced whole so that another thread reads a consistent pair.
        self._waits: Tuple[float, Optional[float]] = (0.0, None)
        # When on_wait is next due while callers wait (_wait_oldest).
        self._next_tick = time.monotonic() + WAIT_TICK
        # ObjectStore.put writes a file only for an object not present
        # (else it touches it): what it wrote since we began is our growth.
        self._written_before = objects.bytes_written

    @property
    def bytes_added(self) -> int:
        """Bytes of object files this pipeline added to the save directory (after ``sync``,
        all of those handed over)."""
        return self.objects.bytes_written - self._written_before

    def put(self, data: bytes, compressor: Compressor, digest: Optional[bytes] = None) -> bytes:
        """Hand ``data`` over for storing; return its digest."""
        if digest is None:
            digest = digest_of(data)
        if self._at_once:
            return self._put_here(data, compressor, digest)
        if digest in self._pending:
            return digest  # the same content is already on its way
        self._reap()
        while self._pending and self._pending_bytes + len(data) > self.max_bytes:
            self._wait_oldest()
        future = self._pool.submit(self._store, data, compressor, digest, self.submitted)
        self._pending[digest] = (future, len(data), self.submitted)
        self.submitted += 1
        self._pending_bytes += len(data)
        self.handed_bytes += len(data)
        future.add_done_callback(lambda _future, size=len(data): self._written(size))
        self.peak_bytes = max(self.peak_bytes, self._pending_bytes)
        return digest

    def _store(self, data: bytes, compressor: Compressor, digest: bytes, number: int) -> bytes:
        """In a worker: ``ObjectStore.put``, compressing in turn; the time from
        its turn on is counted in ``store_seconds``."""
        if not self.objects.touch_if_present(digest):
            with self._turns.turn(number):
                started = time.monotonic()
                codec, payload = compressor.compress(data)
            self.objects.put_encoded(digest, codec, len(data), payload)
            with self._written_lock:
                self.store_seconds += time.monotonic() - started
        return digest

    @contextlib.contextmanager
    def at_once(self) -> Iterator[None]:
        """Within this, ``put`` stores each object in the calling thread before it returns,
        ahead of the queue; such objects are not counted in ``submitted``."""
        self._at_once = True
        try:
            yield
        finally:
            self._at_once = False

    def _put_here(self, data: bytes, compressor: Compressor, digest: bytes) -> bytes:
        # An object also queued is written twice, which is success (atomic.py).
        self.objects.put(data, compressor, digest)
        self.handed_bytes += len(data)
        self._written(len(data))
        return digest

    @property
    def waited(self) -> float:
        """Seconds callers spent waiting for the workers, the wait going on included."""
        before, started = self._waits
        return before + (time.monotonic() - started if started is not None else 0.0)

    @property
    def in_flight(self) -> int:
        """Objects handed over and not yet collected."""
        return len(self._pending)

    def _written(self, size: int) -> None:
        with self._written_lock:  # workers finish at the same time
            self.written_bytes += size

    @property
    def written_through(self) -> int:
        """How many objects, counted from the first handed over, are all written.

        Looks past those written but not yet collected (nothing collects
        them while the backup waits for input): a failed write stops it.
        """
        for future, _size, number in self._pending.values():
            if not future.done() or future.exception() is not None:
                return number
        return self.submitted

    def _reap(self) -> None:
        """Collect finished objects at the front of the queue."""
        while self._pending:
            future, _size, _number = next(iter(self._pending.values()))
            if not future.done():
                return
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        digest = next(iter(self._pending))
        future, size, _number = self._pending[digest]
        if not future.done():
            before, started = self._waits[0], time.monotonic()
            self._waits = (before, started)
            try:
                # on_wait every WAIT_TICK of waiting, counted across the
                # objects waited for: each may finish within a tick of the
                # one before, and no single wait would time out.
                while True:
                    done = wait([future], max(0.0, self._next_tick - time.monotonic())).done
                    now = time.monotonic()
                    if now >= self._next_tick:
                        self._next_tick = now + WAIT_TICK
                        if self.on_wait is not None:
                            self.on_wait()
                    if done:
                        break
            finally:
                self._waits = (before + time.monotonic() - started, None)
        del self._pending[digest]
        self._pending_bytes -= size
        future.result()  # raises the worker's exception here

    def drain(self) -> None:
        """Wait until every object handed over is written (or raise its error)."""
        while self._pending:
            self._wait_oldest()

    def sync(self) -> None:
        """Make every object handed over durable; call before publishing references."""
        self.drain()
        self.objects.sync()

    def close(self) -> None:
        """Stop the workers; objects not yet written are abandoned."""
        for future, _size, _number in self._pending.values():
            future.cancel()
        self._pool.shutdown(wait=True)
        self._pending.clear()
        self._pending_bytes = 0


class _Turns:
    """Lets compressions run ``slots`` at a time (a core each), oldest first.

    More at once would only share the cores: all the objects in flight
    would be written late and together.  In turn, objects are written about
    in the order handed over and the oldest soon, which is what a checkpoint
    waits for (``written_through``).  The other workers meanwhile wait in
    fsync, or here.
    """

    def __init__(self, slots: int) -> None:
        self._slots = slots
        self._running = 0
        self._waiting: List[int] = []  # a heap of the numbers waiting for a turn
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def turn(self, number: int) -> Iterator[None]:
        with self._changed:
            heapq.heappush(self._waiting, number)
            while self._running >= self._slots or self._waiting[0] != number:
                self._changed.wait()
            heapq.heappop(self._waiting)
            self._running += 1
            self._changed.notify_all()  # the next oldest may have a slot too
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()


class RecordCache:
    """``get`` like ObjectStore's, from objects asked for ahead with ``prefetch``.

    Unlike Prefetcher, the order of use is not known (a walk enters a
    subdirectory's subdirectories before its next sibling), so fetched
    objects are kept by digest until taken; past ``max_bytes`` of announced
    lengths the oldest prefetches are dropped (and read again if wanted).
    """

    def __init__(self, objects: ObjectReader, workers: Optional[int] = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.objects = objects
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers or default_workers(),
                                        thread_name_prefix="backshift-records")
        self._waiting: "collections.OrderedDict[bytes, Tuple[Future[bytes], int]]" = \
            collections.OrderedDict()
        self._bytes = 0
        self.hits = 0

    def prefetch(self, chunks: Iterable[Tuple[bytes, int]]) -> None:
        """Start reading these objects (digest, length) in the background."""
        for digest, length in chunks:
            if digest in self._waiting or length > self.max_bytes:
                continue
            while self._waiting and self._bytes + length > self.max_bytes:
                _old, (future, old_length) = self._waiting.popitem(last=False)
                future.cancel()
                self._bytes -= old_length
            self._waiting[digest] = (self._pool.submit(self.objects.get, digest), length)
            self._bytes += length

    def get(self, digest: bytes, verify: bool = True) -> bytes:
        """The object's content, prefetched if it was; raises as ObjectStore.get."""
        waiting = self._waiting.pop(digest, None)
        if waiting is None:
            return self.objects.get(digest, verify)
        future, length = waiting
        self._bytes -= length
        self.hits += 1
        if future.cancel():
            # Not begun: the prefetches queued before it (a big directory's
            # subdirectories, say) would keep the walk waiting; read it now.
            return self.objects.get(digest, verify)
        return future.result()

    def close(self) -> None:
        for future, _length in self._waiting.values():
            future.cancel()
        self._waiting.clear()
        self._pool.shutdown(wait=True)


class ReadAheadTreeReader(TreeReader):
    """A TreeReader that, on judging a directory, starts reading its subdirectories' records.

    A depth-first walk reads a record just before it needs it; with this,
    decompressing and reading the next records overlaps with the work on
    the current one.
    """

    looks_ahead = True

    def __init__(self, objects: ObjectReader, workers: Optional[int] = None) -> None:
        self.cache = RecordCache(objects, workers)
        super().__init__(self.cache)

    def will_read(self, directory: Entry) -> None:
        self.cache.prefetch(directory.chunks)

    def close(self) -> None:
        self.cache.close()


class Prefetcher:
    """Fetches objects ahead of their use, in the order they will be asked for.

    ``want`` announces digests in order of use; ``get`` returns them in that
    same order.  Fetching runs ahead while at most ``max_bytes`` (by the
    lengths announced) are fetched and not yet taken.
    """

    def __init__(self, objects: ObjectReader, workers: Optional[int] = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.objects = objects
        self.max_bytes = max_bytes
        self._pool = ThreadPoolExecutor(max_workers=workers or default_workers(),
                                        thread_name_prefix="backshift-fetch")
        self._announced: Deque[Tuple[bytes, int]] = collections.deque()
        self._running: Deque[Tuple[bytes, int, "Future[bytes]"]] = collections.deque()
        self._running_bytes = 0

    def want(self, chunks: Iterable[Tuple[bytes, int]]) -> None:
        """Announce (digest, length) pairs that ``get`` will be asked for next."""
        self._announced.extend(chunks)
        self._start()

    def _start(self) -> None:
        while self._announced and (not self._running
                                   or self._running_bytes + self._announced[0][1]
                                   <= self.max_bytes):
            digest, length = self._announced.popleft()
            self._running.append((digest, length, self._pool.submit(self.objects.get, digest)))
            self._running_bytes += length

    @property
    def has_room(self) -> bool:
        """Would an announcement now start fetching at once?"""
        return not self._announced and self._running_bytes < self.max_bytes

    @property
    def running_bytes(self) -> int:
        """Announced lengths of the objects being fetched or fetched and not taken."""
        return self._running_bytes

    def get(self, digest: bytes) -> bytes:
        """The content of ``digest``, normally the next one announced.

        Announced objects before it are dropped (their reader stopped
        early); one never announced is read directly.  Raises what
        ``ObjectStore.get`` raises (ObjectError) for that object."""
        self._start()
        if not self._skip_to(digest):
            return self.objects.get(digest)
        _digest, length, future = self._running.popleft()
        self._running_bytes -= length
        try:
            return future.result()
        finally:
            self._start()

    def _skip_to(self, digest: bytes) -> bool:
        """Drop announcements before ``digest``; False if it was not announced."""
        if not any(item[0] == digest for item in self._running) \
                and not any(item[0] == digest for item in self._announced):
            return False
        while self._running[0][0] != digest:
            _digest, length, future = self._running.popleft()
            future.cancel()
            self._running_bytes -= length
            self._start()
        return True

    def close(self) -> None:
        for _digest, _length, future in self._running:
            future.cancel()
        self._running.clear()
        self._announced.clear()
        self._pool.shutdown(wait=True)
