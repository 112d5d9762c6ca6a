"""Writing directory records: one streamed record per open directory, and the top record.

The reading side, with the rules every reader applies, is tree.py.
"""

from typing import List, Optional, Sequence, Union

from .chunking import Chunker
from .compression import Compressor
from .objectstore import Objects
from .records import ChunkRef, Entry, encode_entry, record_header


class RecordWriter:
    """Builds one directory record as a stream, storing chunks as it grows.

    Memory stays at about two metadata chunks per open directory however
    many entries it has.  Chunk boundaries are those the chunker would find
    on the whole record, so an unchanged directory stores nothing new.
    """

    def __init__(self, objects: Objects, chunker: Chunker, compressor: Compressor) -> None:
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

    def freeze(self) -> "FrozenRecord":
        """The record as it is now, to be stored later; the writer goes on unchanged."""
        return FrozenRecord(list(self.chunks), bytes(self._buffer))


class FrozenRecord:
    """A directory record as it was at one moment: its chunks stored then, and the rest."""

    __slots__ = ("chunks", "tail")

    def __init__(self, chunks: List[ChunkRef], tail: bytes) -> None:
        self.chunks = chunks
        self.tail = tail

    def store(self, objects: Objects, compressor: Compressor,
              extra: Sequence[Entry] = ()) -> List[ChunkRef]:
        """Store the rest, with ``extra`` entries after it; the record's chunk list."""
        tail = self.tail + b"".join(encode_entry(entry) for entry in extra)
        return self.chunks + [(objects.put(tail, compressor), len(tail))]


def store_top_record(objects: Objects, compressor: Compressor, root: Entry) -> List[ChunkRef]:
    """Store the one-entry record naming a backup's root directory."""
    record = record_header() + encode_entry(root)
    return [(objects.put(record, compressor), len(record))]
