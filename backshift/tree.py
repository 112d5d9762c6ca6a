"""Reading a backup's tree of directory records.

A backup record's ``root`` is the chunk list of a *top record*: a directory
record holding exactly one entry, named ``b""``, for the backup's root
directory.  Each directory entry's chunk list is its own record, or the
record itself is in the entry (INLINE, for small directories).  A
directory may appear in its parent more than once (fragments, when the input
was not in find order); walking merges them.
"""

from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

from .chunking import Chunker
from .compression import Compressor
from .objectstore import ObjectError, ObjectStore
from .records import (FLAG_IMPLICIT, FLAG_INLINE, KIND_DIR, ChunkRef, Entry, RecordError,
                      encode_entry, iter_entries, record_header)

# on_damage(directory path, reason): a directory record that cannot be read.
DamageHandler = Callable[[bytes, str], None]


def split_path(path: bytes) -> List[bytes]:
    """Components of a backup path: leading '/' and './' dropped, '.' and '' skipped.

    '..' is refused: a backup path never climbs out of its root.
    """
    components = [part for part in path.split(b"/") if part not in (b"", b".")]
    if b".." in components:
        raise ValueError("path %r contains '..'" % path)
    return components


def join_path(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


class TreeReader:
    """Loads directory records of one save directory's object store."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def read_record(self, chunks: Sequence[ChunkRef]) -> bytes:
        return b"".join(self.objects.get(digest) for digest, _length in chunks)

    def entries(self, chunks: Sequence[ChunkRef]) -> Iterator[Entry]:
        return self.parse(self.read_record(chunks))

    def dir_entries(self, directory: Entry) -> Iterator[Entry]:
        """Entries of a directory, whose record is inline in its entry or in chunks."""
        if directory.flags & FLAG_INLINE:
            return self.parse(directory.inline or b"")
        return self.entries(directory.chunks)

    def parse(self, record: bytes) -> Iterator[Entry]:
        """Entries of a record's bytes (a hook for readers that look ahead)."""
        return iter_entries(record)

    def root_entries(self, root: Sequence[ChunkRef]) -> List[Entry]:
        """The root directory entry (normally one) of a backup's top record."""
        return [entry for entry in self.entries(root) if entry.name == b""]

    def lookup(self, root: Sequence[ChunkRef], path: bytes) -> List[Entry]:
        """Every entry (directory fragments included) stored at ``path``."""
        current = self.root_entries(root)
        for name in split_path(path):
            found = []
            for directory in current:
                if directory.kind != KIND_DIR:
                    continue
                found.extend(entry for entry in self.dir_entries(directory)
                             if entry.name == name)
            current = found
            if not current:
                break
        return current

    def walk(self, root: Sequence[ChunkRef], start: bytes = b"",
             include_implicit: bool = False, recursive: bool = True,
             on_damage: Optional[DamageHandler] = None) -> Iterator[Tuple[bytes, Entry]]:
        """(path, entry) pairs at and below ``start`` in stored order, parents first.

        Paths are relative, without a leading '/'; the backup's root itself
        has the path b"".  Directories never named in the input (IMPLICIT)
        are skipped unless ``include_implicit``.  Not ``recursive``: only
        ``start`` and, if it is a directory, its immediate entries.  A
        directory record that cannot be read raises, or with ``on_damage``
        is reported as ``on_damage(directory path, reason)`` and the walk
        goes on with the rest of the tree.
        """
        prefix = b"/".join(split_path(start))
        for entry in self.lookup(root, start):
            yield from self._walk_entry(prefix, entry, include_implicit, recursive, on_damage)

    def _walk_entry(self, path: bytes, entry: Entry, include_implicit: bool,
                    recursive: bool,
                    on_damage: Optional[DamageHandler]) -> Iterator[Tuple[bytes, Entry]]:
        if include_implicit or not entry.flags & FLAG_IMPLICIT:
            yield path, entry
        if entry.kind == KIND_DIR:
            # Depth-first with an explicit stack of record iterators keeps
            # deep trees off the Python call stack.
            stack: List[Tuple[bytes, Iterator[Entry]]] = []
            self._push(stack, path, entry, on_damage)
            while stack:
                parent, children = stack[-1]
                try:
                    child: Optional[Entry] = next(children, None)
                except RecordError as exc:
                    if on_damage is None:
                        raise
                    on_damage(parent, "directory record does not parse (%s); "
                                      "the rest of this directory is lost" % exc)
                    child = None
                if child is None:
                    stack.pop()
                    continue
                child_path = join_path(parent, child.name)
                if include_implicit or not child.flags & FLAG_IMPLICIT:
                    yield child_path, child
                if child.kind == KIND_DIR and recursive:
                    self._push(stack, child_path, child, on_damage)

    def _push(self, stack: List[Tuple[bytes, Iterator[Entry]]], path: bytes,
              directory: Entry, on_damage: Optional[DamageHandler]) -> None:
        try:
            stack.append((path, self.dir_entries(directory)))
        except ObjectError as exc:
            if on_damage is None:
                raise
            on_damage(path, "directory contents lost: %s (object %s)"
                      % (exc.reason, exc.digest.hex()))


class RecordWriter:
    """Builds one directory record as a stream, storing chunks as it grows.

    Memory stays at about two metadata chunks per open directory however
    many entries it has.  Chunk boundaries are those the chunker would find
    on the whole record, so an unchanged directory stores nothing new.
    """

    def __init__(self, objects: ObjectStore, chunker: Chunker, compressor: Compressor) -> None:
        self._objects = objects
        self._chunker = chunker
        self._compressor = compressor
        self._buffer = bytearray(record_header())
        self._flush_at = 2 * chunker.params.max_size
        self.chunks: List[ChunkRef] = []
        self.count = 0

    def add(self, entry: Union[Entry, bytes]) -> None:
        """Add an entry, or an entry already encoded (bytes of a stored record)."""
        self._buffer += entry if isinstance(entry, bytes) else encode_entry(entry)
        self.count += 1
        if len(self._buffer) >= self._flush_at:
            pieces = self._chunker.split(bytes(self._buffer))
            # The last piece ends only because the buffer does: keep it.
            for piece in pieces[:-1]:
                self._store(piece)
            self._buffer = bytearray(pieces[-1])

    def add_all(self, entries: Sequence[Union[Entry, bytes]]) -> None:
        for entry in entries:
            self.add(entry)

    def _store(self, piece: bytes) -> None:
        self.chunks.append((self._objects.put(piece, self._compressor), len(piece)))

    def finish_small(self, limit: int) -> Optional[bytes]:
        """The whole record, not stored, if it is at most ``limit`` bytes; else None."""
        if self.chunks or len(self._buffer) > limit:
            return None
        record = bytes(self._buffer)
        self._buffer = bytearray()
        return record

    def finish(self) -> List[ChunkRef]:
        """Store the rest; return the record's chunk list."""
        for piece in self._chunker.split(bytes(self._buffer)):
            self._store(piece)
        self._buffer = bytearray()
        return self.chunks

    def snapshot(self, extra: Sequence[Entry] = ()) -> List[ChunkRef]:
        """The chunk list of the record so far plus ``extra``, leaving the writer as it was."""
        tail = bytes(self._buffer) + b"".join(encode_entry(entry) for entry in extra)
        digest = self._objects.put(tail, self._compressor)
        return self.chunks + [(digest, len(tail))]


def store_top_record(objects: ObjectStore, compressor: Compressor, root: Entry) -> List[ChunkRef]:
    """Store the one-entry record naming a backup's root directory."""
    record = record_header() + encode_entry(root)
    return [(objects.put(record, compressor), len(record))]
