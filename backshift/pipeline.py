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
  it.  Each object still goes through ``ObjectStore.put``, so an object that
  is already present is touched (expiry relies on that), not rewritten.

* ``RecordCache`` reads directory records of earlier backups ahead of a
  backup's walk: when a directory's earlier record has been read, those of
  its subdirectories are read and decompressed in the background, so that
  comparing an unchanged tree waits little for the disk or for xz.

* ``ReadAhead`` asks the kernel to start reading the next files named on
  the input while the current one is handled: a backup that reads one small
  file after another otherwise waits one disk round trip per file.  It
  pauses while the backup reads nothing (files reused unread).

* ``Prefetcher`` does the reverse for restores: while tar data of one chunk
  is written to stdout, the next chunks are read, decompressed and verified
  by worker threads, up to ``max_bytes`` ahead, in the order they will be
  asked for.

A worker's exception (a full disk, say) is raised in the calling thread at
its next call, so errors are not lost.
"""

import collections
import os
import queue
import stat
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
# Paths read ahead of the one being backed up, and how much of each file
# the kernel is asked to fetch (its own readahead continues from there).
READAHEAD_PATHS = 128
READAHEAD_BYTES = 1024 * 1024
# How often a caller waiting for the store's workers is called back (on_wait).
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
        workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backshift-store")
        self.cores = min(workers, os.cpu_count() or 1)  # how many workers compress at once
        # Objects handed over and not yet known to be written, oldest first,
        # with their sizes and numbers in the order handed over.
        self._pending: Dict[bytes, Tuple["Future[bytes]", int, int]] = {}
        self.submitted = 0  # objects handed over so far
        # Called every WAIT_TICK seconds while put, drain or sync waits for
        # a worker (a backup's checkpoints must go on meanwhile).
        self.on_wait: Optional[Callable[[], None]] = None
        self._pending_bytes = 0
        self.peak_bytes = 0
        # All bytes ever handed over, those of them written, and the time
        # the workers spent on them: the progress report reads these (and
        # ``waited``) from its own thread.
        self.handed_bytes = 0
        self.written_bytes = 0
        self.store_seconds = 0.0
        self._written_lock = threading.Lock()
        # (seconds waited before the wait going on, when that began or None),
        # replaced whole so that another thread reads a consistent pair.
        self._waits: Tuple[float, Optional[float]] = (0.0, None)
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
        if digest in self._pending:
            return digest  # the same content is already on its way
        self._reap()
        while self._pending and self._pending_bytes + len(data) > self.max_bytes:
            self._wait_oldest()
        future = self._pool.submit(self._store, data, compressor, digest)
        self._pending[digest] = (future, len(data), self.submitted)
        self.submitted += 1
        self._pending_bytes += len(data)
        self.handed_bytes += len(data)
        self.peak_bytes = max(self.peak_bytes, self._pending_bytes)
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

    def _store(self, data: bytes, compressor: Compressor, digest: bytes) -> bytes:
        """A worker's task: store one object, and count it and the time it took."""
        started = time.monotonic()
        try:
            return self.objects.put(data, compressor, digest)
        finally:
            with self._written_lock:  # workers finish at the same time
                self.written_bytes += len(data)
                self.store_seconds += time.monotonic() - started

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
                while not wait([future], WAIT_TICK).done:
                    if self.on_wait is not None:
                        self.on_wait()
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


class ReadAhead:
    """Hints the kernel to read the files of upcoming paths (POSIX_FADV_WILLNEED).

    ``paths`` passes the input through unchanged and without delay: a
    thread takes paths from the input as they arrive (at most ``depth``
    ahead of the backup, so memory stays bounded) and another lstats each
    and, for a regular file, opens it (O_NOFOLLOW, O_NONBLOCK) just long
    enough to give the hint.  Nothing is read into this process, nothing is
    changed, errors are ignored: the backup's own safe open decides
    everything.  A plain pass-through where posix_fadvise is missing.
    """

    def __init__(self, depth: int = READAHEAD_PATHS) -> None:
        self.depth = depth
        self.advised = 0
        self._hints: "queue.SimpleQueue[Optional[Tuple[int, bytes]]]" = queue.SimpleQueue()
        self._done = 0  # index of the next path the backup will take
        self._last_read = 0  # index of the last path whose content the backup read
        self._threads: List[threading.Thread] = []
        self._stop = threading.Event()
        # Called every WAIT_TICK seconds while the backup waits for input
        # (behind a slow find, its checkpoints must go on meanwhile).
        self.on_wait: Optional[Callable[[], None]] = None

    @property
    def _reading(self) -> bool:
        """Has the backup read a file lately?  If not (an unchanged tree,
        reused from earlier backups), hints would cost a lstat and an open
        per path and save nothing."""
        return self._done - self._last_read <= self.depth

    def note_read(self) -> None:
        """The backup is reading the current path's content (hints are worth giving)."""
        self._last_read = self._done

    def paths(self, paths: Iterable[bytes]) -> Iterator[bytes]:
        if not hasattr(os, "posix_fadvise"):
            yield from paths
            return
        feed = _Feed(self.depth)
        # Not daemon threads: one blocked reading stdin at interpreter exit
        # would abort Python.  Stopped, the reader quits at its next path.
        try:
            for target, args in ((self._hint, ()), (self._take, (paths, feed))):
                thread = threading.Thread(target=target, args=args, name="backshift-readahead")
                thread.start()
                self._threads.append(thread)
            while True:
                for item in feed.take_all(self.on_wait):
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        raise item  # reading the input failed: as if read here
                    for path in item:  # type: ignore[attr-defined]
                        self._done += 1
                        yield path
        finally:
            self._stop.set()
            # Ends the hint thread even if the reader never started (an
            # interrupt between the two starts would leave it waiting).
            self._hints.put(None)

    def _take(self, paths: Iterable[bytes], feed: "_Feed") -> None:
        # Paths go over in batches where the input offers them so (NulPaths:
        # what each read completed), else one by one.
        batches = getattr(paths, "batches", None)
        source = batches() if batches is not None else ([path] for path in paths)
        index = 0
        try:
            for batch in source:
                if self._reading:
                    for offset, path in enumerate(batch):
                        self._hints.put((index + offset, path))
                index += len(batch)
                if not feed.put(batch, len(batch), self._stop):
                    return
        except BaseException as exc:  # handed to the consumer
            feed.put(exc, 0, self._stop)
        finally:
            self._hints.put(None)
            feed.put(_END, 0, self._stop)

    def _hint(self) -> None:
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
            | getattr(os, "O_NOCTTY", 0)
        while True:
            item = self._hints.get()
            if item is None:
                return
            index, path = item
            if index < self._done or not self._reading:
                continue  # the backup got there first, or reads nothing
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                    continue
                fd = os.open(path, flags)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, min(st.st_size, READAHEAD_BYTES),
                                 os.POSIX_FADV_WILLNEED)
                self.advised += 1
            except OSError:
                pass
            finally:
                os.close(fd)


_END = object()


class _Feed:
    """Batches of paths from the input thread to the backup, a bounded number waiting.

    The backup takes all that wait at once (a queue operation per path
    would cost as much as comparing an unchanged file), while the input
    thread hands paths over the moment it has them: a slow find is
    followed path by path.  At most ``limit`` paths wait, or one batch.
    """

    def __init__(self, limit: int) -> None:
        self._items: Deque[Tuple[object, int]] = collections.deque()
        self._waiting = 0  # paths in _items
        self._limit = limit
        self._changed = threading.Condition()

    def put(self, item: object, paths: int, stop: threading.Event) -> bool:
        """Hand over ``item`` holding ``paths`` paths; False if ``stop`` was set meanwhile."""
        with self._changed:
            while self._items and self._waiting + paths > self._limit:
                if stop.is_set():
                    return False
                self._changed.wait(0.1)
            self._items.append((item, paths))
            self._waiting += paths
            self._changed.notify()
        return True

    def take_all(self, on_wait: Optional[Callable[[], None]] = None) -> List[object]:
        """Everything handed over and not yet taken, waiting for at least one item
        (calling ``on_wait`` every WAIT_TICK seconds meanwhile, if given)."""
        while True:
            with self._changed:
                if not self._items:
                    self._changed.wait(None if on_wait is None else WAIT_TICK)
                if self._items:
                    items = [item for item, _paths in self._items]
                    self._items.clear()
                    self._waiting = 0
                    self._changed.notify()
                    return items
            if on_wait is not None:
                on_wait()  # outside the lock: the input thread goes on meanwhile
