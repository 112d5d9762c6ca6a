"""Building a backup's directory records as entries arrive.

Each open directory has a RecordWriter collecting its entries.  A small
file's entry cannot be encoded until its pack is cut and named
(packing.py): it is *pending* (``Entry.pending``), and everything after it
in its directory's record waits behind it in that directory's queue.  So
may a directory already left whose record holds such entries: its own
entry is pending in its parent until the cut.  Every cut resolves all of
them at once (``resolve``).  Small directories' records are held inline in
their entry.

A directory that did not change is not encoded again: while the entries
added to it are, byte for byte, those of its earlier record (the one its
EarlierCursor walks), they are only counted; if all of them come, that
record's chunk list (or inline bytes) is its record again.  At the first
difference the entries so far are written out and it goes on as any other.
"""

from typing import Callable, List, Optional, Sequence, Set, Tuple, Union

from .chunking import Chunker
from .compression import Compressor
from .earlier import EarlierCursor, PreviousDir
from .objectstore import Objects, ObjectStore
from .records import (FLAG_IMPLICIT, FLAG_INLINE, KIND_DIR, RECORD_HEADER, ChunkRef, Entry,
                      encode_entry)
from .recordwriter import FrozenRecord, RecordWriter, store_top_record

# Directory records up to this size are held in their directory's entry, in
# the parent's record: most directories are small, and an object each would
# cost a file, a block and an fsync, and a read when the next backup compares.
# A change inside an inline record rewrites the parent's chunk that holds it,
# as it would rewrite that chunk for the child's new chunk list anyway; so a
# limit near the metadata chunks' size (64 KiB) costs no deduplication and
# saves the child's own objects (4 KiB before: six versions of a source tree
# took 0.13 MB less du at 16 KiB and 0.04 MB less again at 64 KiB).
DIR_INLINE_MAX = 64 * 1024


class OpenDir:
    """A directory the input is inside, or one left whose record waits for a pack.

    ``queue`` holds entries that cannot be added yet, in order: the first
    is pending (a packed file whose pack is still open, or a directory
    whose own record waits); the rest (Entry, or bytes already encoded)
    wait behind it.
    """

    __slots__ = ("name", "meta", "writer", "previous", "queue", "names", "before", "cursor",
                 "same")

    def __init__(self, name: bytes, writer: RecordWriter, previous: Optional[PreviousDir]) -> None:
        self.name = name
        self.meta: Optional[Entry] = None  # its own entry, once the input named it
        self.writer = writer
        self.previous = previous
        self.cursor: Optional[EarlierCursor] = previous.cursor if previous is not None else None
        # While the record so far is the first ``same`` bytes of the cursor's
        # record, nothing is given to the writer; -1 once it differs.
        self.same = RECORD_HEADER.size if self.cursor is not None and self.cursor.whole else -1
        self.queue: List[Union[Entry, bytes]] = []
        # Names recorded in this fragment, as name_key values (dirstack.py),
        # and, if the input left this directory and came back, its earlier
        # fragments in this same backup.
        self.names: Set[int] = set()
        self.before: Optional[PreviousDir] = None


class TreeBuilder:
    """Turns the entries of open directories into stored directory records."""

    def __init__(self, store: ObjectStore, chunker: Chunker, compressor: Compressor,
                 touch: Callable[[bytes], bool]) -> None:
        self._store = store
        self._chunker = chunker
        self._compressor = compressor
        self._touch = touch  # marks an earlier record's chunk as used again (False if gone)
        # Directories already left whose records wait for a pack cut, with
        # their entries, children before parents.
        self._waiting: List[Tuple[OpenDir, Entry]] = []

    def open(self, name: bytes, previous: Optional[PreviousDir]) -> OpenDir:
        return OpenDir(name, RecordWriter(self._store, self._chunker, self._compressor),
                       previous)

    @staticmethod
    def add(directory: OpenDir, entry: Union[Entry, bytes]) -> None:
        """Add to a directory's record, or queue behind entries still pending."""
        if directory.same >= 0:
            if isinstance(entry, Entry) and not entry.pending:
                entry = encode_entry(entry)
            if isinstance(entry, bytes):
                record = directory.cursor.record  # type: ignore[union-attr]
                if record.startswith(entry, directory.same):
                    directory.same += len(entry)
                    return
            _write_out(directory)
        if directory.queue or (isinstance(entry, Entry) and entry.pending):
            directory.queue.append(entry)
        else:
            directory.writer.add(entry)

    def reuse(self, directory: OpenDir, start: int, end: int) -> None:
        """Add bytes ``start:end`` of the directory's earlier record (its cursor's)."""
        if directory.same == start:
            directory.same = end
        else:
            self.add(directory, directory.cursor.record[start:end])  # type: ignore[union-attr]

    def close(self, directory: OpenDir, parent: OpenDir) -> None:
        """The input left ``directory``: its entry goes into ``parent``."""
        entry = _dir_entry(directory, [])
        if directory.queue:
            entry.pending = True
            self._waiting.append((directory, entry))
        else:
            self._finish_dir(directory, entry)
        self.add(parent, entry)

    def resolve(self, open_dirs: Sequence[OpenDir]) -> None:
        """Every pending entry has its pack now: encode what was queued."""
        for directory, entry in self._waiting:  # children before parents
            directory.writer.add_all(directory.queue)
            directory.queue = []
            self._finish_dir(directory, entry)
            entry.pending = False
        self._waiting = []
        for directory in open_dirs:
            directory.writer.add_all(directory.queue)
            directory.queue = []

    def finish_root(self, root: OpenDir) -> List[ChunkRef]:
        """Store the root's record and the top record naming it (FORMAT.md).

        A small root record is inline in the top record, as any small
        directory's is in its parent's: one object fewer per backup."""
        entry = _dir_entry(root, [])
        self._finish_dir(root, entry)
        return store_top_record(self._store, self._compressor, entry)

    @staticmethod
    def freeze(open_dirs: Sequence[OpenDir]) -> "FrozenTree":
        """The tree so far, to be stored now or later (a checkpoint).

        The open directories go on unchanged; no entry may be pending (cut
        the pack first).
        """
        return FrozenTree([(_dir_entry_copy(directory, []), _frozen_record(directory))
                           for directory in open_dirs])

    def _finish_dir(self, directory: OpenDir, entry: Entry) -> None:
        """Give a directory's entry its record: the earlier one if unchanged, inline if
        small, else stored chunks."""
        if self._unchanged(directory):
            earlier = directory.cursor.fragment  # type: ignore[union-attr]
            if earlier.flags & FLAG_INLINE:
                entry.flags |= FLAG_INLINE
                entry.inline = earlier.inline
            else:
                entry.chunks = list(earlier.chunks)
            return
        _write_out(directory)
        record = directory.writer.finish_small(DIR_INLINE_MAX)
        if record is not None:
            entry.flags |= FLAG_INLINE
            entry.inline = record
        else:
            entry.chunks = directory.writer.finish()

    def _unchanged(self, directory: OpenDir) -> bool:
        """Is the directory's record its cursor's, whole, with every chunk still there?"""
        cursor = directory.cursor
        if cursor is None or directory.same != len(cursor.record) or directory.queue:
            return False
        earlier = cursor.fragment
        return bool(earlier.flags & FLAG_INLINE) or all(
            self._touch(digest) for digest, _length in earlier.chunks)


class FrozenTree:
    """The open directories as they were at one moment, outermost first.

    Storing it gives the top record of a tree holding everything saved up
    to that moment, and optionally one more entry in the innermost
    directory (the file being read, PARTIAL).  Nothing is stored until
    then, so it may be stored later, or again with another last entry.
    """

    __slots__ = ("_dirs",)

    def __init__(self, dirs: List[Tuple[Entry, FrozenRecord]]) -> None:
        self._dirs = dirs

    def store(self, objects: Objects, compressor: Compressor,
              last: Optional[Entry] = None) -> List[ChunkRef]:
        """Store the records not yet stored; the top record (FORMAT.md)."""
        extra: List[Entry] = [last] if last is not None else []
        for entry, record in reversed(self._dirs):
            extra = [_with_chunks(entry, record.store(objects, compressor, extra))]
        return store_top_record(objects, compressor, extra[0])


def _frozen_record(directory: OpenDir) -> FrozenRecord:
    """A directory's record as it is now: its earlier record's prefix, if it still is."""
    cursor = directory.cursor
    if cursor is not None and directory.same >= 0:
        return FrozenRecord([], cursor.record[:directory.same])
    return directory.writer.freeze()


def _write_out(directory: OpenDir) -> None:
    """The record so far is no longer its earlier one's prefix: give it to the writer."""
    cursor = directory.cursor
    if cursor is not None and directory.same > RECORD_HEADER.size:
        directory.writer.add(cursor.record[RECORD_HEADER.size:directory.same])
    directory.same = -1


def _dir_entry(directory: OpenDir, chunks: List[ChunkRef]) -> Entry:
    if directory.meta is not None:
        entry = directory.meta
        entry.chunks = chunks
        return entry
    return Entry(directory.name, KIND_DIR, flags=FLAG_IMPLICIT, chunks=chunks)


def _dir_entry_copy(directory: OpenDir, chunks: List[ChunkRef]) -> Entry:
    if directory.meta is None:
        return Entry(directory.name, KIND_DIR, flags=FLAG_IMPLICIT, chunks=chunks)
    return _with_chunks(directory.meta, chunks)


def _with_chunks(meta: Entry, chunks: List[ChunkRef]) -> Entry:
    """A copy of a directory's entry, with its record in ``chunks``."""
    return Entry(meta.name, KIND_DIR, flags=meta.flags, mode=meta.mode, uid=meta.uid,
                 gid=meta.gid, mtime_ns=meta.mtime_ns, ctime_ns=meta.ctime_ns,
                 ino=meta.ino, size=meta.size, nlink=meta.nlink, uname=meta.uname,
                 gname=meta.gname, chunks=chunks, extras=dict(meta.extras))
