"""Reading ahead of a backup: upcoming paths from the input, and their files.

``ReadAhead`` asks the kernel to start reading the next files named on the
input while the current one is handled: a backup that reads one small file
after another otherwise waits one disk round trip per file.  It pauses
while the backup reads nothing (files reused unread).  Taking the input in
a thread of its own, it also calls the backup back while the input keeps
it waiting, so that checkpoints go on behind a slow find.
"""

import collections
import os
import queue
import stat
import threading
from typing import Callable, Deque, Iterable, Iterator, List, Optional, Tuple

from .pipeline import WAIT_TICK

# Paths read ahead of the one being backed up, and how much of each file
# the kernel is asked to fetch (its own readahead continues from there).
READAHEAD_PATHS = 128
READAHEAD_BYTES = 1024 * 1024


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
            self.close()

    def close(self) -> None:
        """Stop the threads: the backup ends, having taken every path or not (an error
        raised while the input thread waits to hand over more would leave it waiting,
        and the process could not exit)."""
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
