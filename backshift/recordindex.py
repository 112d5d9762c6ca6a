"""A compact by-name index of one large directory record of an earlier backup.

A re-backup looks up each file it meets among its directory's entries in
earlier backups (earlier.PreviousDir).  Most directories are small and sit
in a dict by name; one whose record is large (LARGE_RECORD bytes, about
6,000 entries) would cost some 800 bytes per entry so.  RecordIndex keeps
8 bytes per entry instead (a 32-bit hash of the name and the entry's offset
in the record, sorted) and reads the record's chunks again when an entry is
asked for, keeping up to KEPT_BYTES of them.  In find order consecutive names lie in
the same chunk, so each chunk is read about once more.
"""

import array
import bisect
import collections
import struct
from typing import Callable, Iterator, List, Sequence

from .records import KIND_DIR, RECORD_HEADER, ChunkRef, RecordError
from .recordscan import RawEntry, entry_spans

# Records from this size on are indexed so.
LARGE_RECORD = 1 << 20
# Bytes of a large record's chunks kept decompressed for lookups: in find
# order only the last one or two are used; in another order (randomize)
# a record up to this size is read only once more.
KEPT_BYTES = 4 << 20
# Chunks of a record asked for ahead of reading it: its subdirectories'
# first ones as they are met, the next ones of a large record as it is read.
CHUNKS_AHEAD = 4
_LEN = struct.Struct("<I")
_LOW32 = 0xFFFFFFFF

Fetch = Callable[[bytes], bytes]  # digest -> object content
Prefetch = Callable[[List[ChunkRef]], None]


def read_ahead(fetch: Fetch, chunks: Sequence[ChunkRef], prefetch: Prefetch) -> Iterator[bytes]:
    """A record's chunks in order, each asking for the next CHUNKS_AHEAD as it is read."""
    for number, (digest, _length) in enumerate(chunks):
        prefetch(list(chunks[number + 1:number + 1 + CHUNKS_AHEAD]))
        yield fetch(digest)


class RecordIndex:
    """Entries of one large record by name, in 8 bytes each (see the module docstring)."""

    def __init__(self, fetch: Fetch, chunks: Sequence[ChunkRef], prefetch: Prefetch) -> None:
        self._fetch = fetch
        self._chunks = list(chunks)
        self._starts = array.array("Q")  # offset in the record of each chunk
        at = 0
        for _digest, length in self._chunks:
            self._starts.append(at)
            at += length
        if at > _LOW32:
            raise RecordError("record of %d bytes too large to index" % at)
        self._kept: "collections.OrderedDict[int, bytes]" = collections.OrderedDict()
        self._kept_bytes = 0
        keys = array.array("Q")
        offset = RECORD_HEADER.size
        for buf, start in entry_spans(read_ahead(fetch, self._chunks, prefetch)):
            entry = RawEntry(buf, start)
            if entry.kind == KIND_DIR:
                prefetch(entry.decode().chunks[:CHUNKS_AHEAD])
            keys.append((hash(entry.name) & _LOW32) << 32 | offset)
            offset += entry.end - start
        self._keys = array.array("Q", sorted(keys))

    def find(self, name: bytes) -> List[RawEntry]:
        """The entries named ``name`` (none if their chunks cannot be read)."""
        keys = self._keys
        wanted = hash(name) & _LOW32
        at = bisect.bisect_left(keys, wanted << 32)
        found = []
        while at < len(keys) and keys[at] >> 32 == wanted:
            try:
                entry = self._entry_at(keys[at] & _LOW32)
            except Exception:  # a damaged earlier backup only costs us re-reading
                entry = None
            if entry is not None and entry.name == name:
                found.append(entry)
            at += 1
        return found

    def _entry_at(self, offset: int) -> RawEntry:
        number = bisect.bisect_right(self._starts, offset) - 1
        buf = self._chunk(number)
        start = offset - self._starts[number]
        if start + _LEN.size <= len(buf):
            (total,) = _LEN.unpack_from(buf, start)
            if start + total <= len(buf):
                return RawEntry(buf, start)
        # The entry straddles chunks: join it from them.
        data = buf[start:]
        while len(data) < _LEN.size or len(data) < _LEN.unpack_from(data)[0]:
            number += 1
            data += self._chunk(number)
        return RawEntry(data, 0)

    def _chunk(self, number: int) -> bytes:
        kept = self._kept.get(number)
        if kept is not None:
            self._kept.move_to_end(number)
            return kept
        data = self._fetch(self._chunks[number][0])
        self._kept[number] = data
        self._kept_bytes += len(data)
        while self._kept_bytes > KEPT_BYTES and len(self._kept) > 1:
            self._kept_bytes -= len(self._kept.popitem(last=False)[1])
        return data
