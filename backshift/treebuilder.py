"""Building a backup's directory records as entries arrive.

Each open directory has a RecordWriter collecting its entries.  A small
file's entry cannot be encoded until its pack is cut and named
(packing.py): it is *pending* (``Entry.pending``), and everything after it
in its directory's record waits behind it in that directory's queue.  So
may a directory already left whose record holds such entries: its own
entry is pending in its parent until the cut.  Every cut resolves all of
them at once (``resolve``).  Small directories' records are held inline in
their entry.
"""

from typing import List, Optional, Sequence, Set, Tuple, Union

from .chunking import Chunker
from .compression import Compressor
from .earlier import PreviousDir
from .objectstore import Objects, ObjectStore
from .records import FLAG_IMPLICIT, FLAG_INLINE, KIND_DIR, ChunkRef, Entry
from .recordwriter import FrozenRecord, RecordWriter, store_top_record

# Directory records up to this size are held in their directory's entry, in
# the parent's record: most directories are small, and an object each would
# cost a file, a block and an fsync, and a read when the next backup compares.
DIR_INLINE_MAX = 4096


class OpenDir:
    """A directory the input is inside, or one left whose record waits for a pack.

    ``queue`` holds entries that cannot be added yet, in order: the first
    is pending (a packed file whose pack is still open, or a directory
    whose own record waits); the rest (Entry, or bytes already encoded)
    wait behind it.
    """

    __slots__ = ("name", "meta", "writer", "previous", "queue", "names", "before")

    def __init__(self, name: bytes, writer: RecordWriter, previous: Optional[PreviousDir]) -> None:
        self.name = name
        self.meta: Optional[Entry] = None  # its own entry, once the input named it
        self.writer = writer
        self.previous = previous
        self.queue: List[Union[Entry, bytes]] = []
        # Names recorded in this fragment, as name_key values (dirstack.py),
        # and, if the input left this directory and came back, its earlier
        # fragments in this same backup.
        self.names: Set[int] = set()
        self.before: Optional[PreviousDir] = None


class TreeBuilder:
    """Turns the entries of open directories into stored directory records."""

    def __init__(self, store: ObjectStore, chunker: Chunker, compressor: Compressor) -> None:
        self._store = store
        self._chunker = chunker
        self._compressor = compressor
        # Directories already left whose records wait for a pack cut, with
        # their entries, children before parents.
        self._waiting: List[Tuple[OpenDir, Entry]] = []

    def open(self, name: bytes, previous: Optional[PreviousDir]) -> OpenDir:
        return OpenDir(name, RecordWriter(self._store, self._chunker, self._compressor),
                       previous)

    @staticmethod
    def add(directory: OpenDir, entry: Union[Entry, bytes]) -> None:
        """Add to a directory's record, or queue behind entries still pending."""
        if directory.queue or (isinstance(entry, Entry) and entry.pending):
            directory.queue.append(entry)
        else:
            directory.writer.add(entry)

    def close(self, directory: OpenDir, parent: OpenDir) -> None:
        """The input left ``directory``: its entry goes into ``parent``."""
        entry = _dir_entry(directory, [])
        if directory.queue:
            entry.pending = True
            self._waiting.append((directory, entry))
        else:
            _finish_dir(directory, entry)
        self.add(parent, entry)

    def resolve(self, open_dirs: Sequence[OpenDir]) -> None:
        """Every pending entry has its pack now: encode what was queued."""
        for directory, entry in self._waiting:  # children before parents
            directory.writer.add_all(directory.queue)
            directory.queue = []
            _finish_dir(directory, entry)
            entry.pending = False
        self._waiting = []
        for directory in open_dirs:
            directory.writer.add_all(directory.queue)
            directory.queue = []

    def finish_root(self, root: OpenDir) -> List[ChunkRef]:
        """Store the root's record and the top record naming it (FORMAT.md)."""
        return store_top_record(self._store, self._compressor,
                                _dir_entry(root, root.writer.finish()))

    @staticmethod
    def freeze(open_dirs: Sequence[OpenDir]) -> "FrozenTree":
        """The tree so far, to be stored now or later (a checkpoint).

        The open directories go on unchanged; no entry may be pending (cut
        the pack first).
        """
        return FrozenTree([(_dir_entry_copy(directory, []), directory.writer.freeze())
                           for directory in open_dirs])


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


def _finish_dir(directory: OpenDir, entry: Entry) -> None:
    """Give a directory's entry its record: inline if small, else stored chunks."""
    record = directory.writer.finish_small(DIR_INLINE_MAX)
    if record is not None:
        entry.flags |= FLAG_INLINE
        entry.inline = record
    else:
        entry.chunks = directory.writer.finish()


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
