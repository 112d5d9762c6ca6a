"""Reading directory records without decoding every entry.

Restores, listings, find and the re-backup comparison walk records far
larger than memory should hold, and most of their entries need no more
than a name, a kind and a few fixed fields.  This module cuts a record,
given piece by piece, into entries (``entry_spans``, ``RecordPieces``) and
parses an entry only as far as asked (``entry_head``, ``RawEntry``); the
full encoding is records.py's.  Pure: no file system access.
"""

import struct
from typing import Iterable, Iterator, List, Tuple

from .records import (FIELD_LENGTH, FIXED_FIELDS, FLAG_INLINE, FLAG_PACKED, KIND_BYTES,
                      LENGTH_KIND_FLAGS, NAME_AT, PACKREF, RECORD_HEADER, Entry, RecordError, check_record_header,
                      decode_chunks, decode_entry)


def entry_spans(pieces: Iterable[bytes]) -> Iterator[Tuple[bytes, int]]:
    """(buffer, offset) of each entry of a record given as consecutive pieces.

    The pieces are the record's chunks, in order; entries may straddle
    them.  Only the current piece and the entry straddling into it are held,
    so a directory of any size is read in bounded memory.  The buffer holds
    the whole entry at the offset (decode_entry or RawEntry parse it).
    """
    record = RecordPieces()
    for piece in pieces:
        yield from record.spans(piece)
    record.finish()


class RecordPieces:
    """A record read piece by piece: the entries each piece completes.

    What is carried from one piece to the next (whether the header was
    read, and the start of an entry that straddles into the next piece) is
    ``state``: the same state and the same piece always give the same
    entries and the same next state, so a reader may remember what a piece
    held and skip it, by its digest, when a later record has it too.
    """

    __slots__ = ("started", "rest")

    def __init__(self) -> None:
        self.started = False
        self.rest = b""

    @property
    def state(self) -> Tuple[bool, bytes]:
        return self.started, self.rest

    @state.setter
    def state(self, value: Tuple[bool, bytes]) -> None:
        self.started, self.rest = value

    def spans(self, piece: bytes) -> Iterator[Tuple[bytes, int]]:
        """(buffer, offset) of each entry that ends in ``piece``, the next piece."""
        buf = self.rest + piece if self.rest else piece
        pos = 0
        if not self.started:
            if len(buf) < RECORD_HEADER.size:
                self.rest = buf
                return
            pos = check_record_header(buf)
            self.started = True
        length = len(buf)
        while length - pos >= FIELD_LENGTH.size:
            (total,) = FIELD_LENGTH.unpack_from(buf, pos)
            if total < FIXED_FIELDS.size:
                raise RecordError("entry claims %d bytes" % total)
            if pos + total > length:
                break
            yield buf, pos
            pos += total
        self.rest = buf[pos:] if pos < length else b""

    def finish(self) -> None:
        """Check that the record ended where an entry did."""
        if not self.started:
            check_record_header(self.rest)
        if self.rest:
            raise RecordError("truncated entry at the end of the record")


class RawEntry:
    """An entry of a stored record, its fixed fields parsed and the rest left encoded.

    Comparing an unchanged tree with an earlier backup needs little more
    than the times, size and inode of each entry; an entry found unchanged
    is copied as the bytes it was (``raw``), never decoded and re-encoded.
    """

    __slots__ = ("buf", "start", "end", "name", "kind", "flags", "mode", "uid", "gid",
                 "mtime_ns", "ctime_ns", "ino", "size", "nlink", "_owners_at", "_owners_end")

    def __init__(self, buf: bytes, start: int) -> None:
        try:
            (total, kind, self.flags, _reserved, self.mode, self.uid, self.gid, self.mtime_ns,
             self.ctime_ns, self.ino, self.size, self.nlink, _major, _minor) = \
                FIXED_FIELDS.unpack_from(buf, start)
            pos = start + FIXED_FIELDS.size
            (length,) = FIELD_LENGTH.unpack_from(buf, pos)
            owners = pos + 4 + length
            (uname_length,) = FIELD_LENGTH.unpack_from(buf, owners)
            (gname_length,) = FIELD_LENGTH.unpack_from(buf, owners + 4 + uname_length)
        except struct.error as exc:
            raise RecordError("truncated entry at offset %d" % start) from exc
        self.buf = buf
        self.start = start
        self.end = start + total
        self._owners_at = owners
        self._owners_end = owners + 8 + uname_length + gname_length
        if total < FIXED_FIELDS.size + 6 * FIELD_LENGTH.size or self.end > len(buf) \
                or self._owners_end + 8 > self.end:
            raise RecordError("entry at offset %d claims %d bytes" % (start, total))
        self.kind = bytes((kind,))
        self.name = bytes(buf[pos + 4:owners])

    def raw(self) -> bytes:
        return bytes(self.buf[self.start:self.end])

    def decode(self) -> Entry:
        return decode_entry(self.buf, self.start)[0]

    def has_owners(self, encoded: bytes) -> bool:
        """Are the entry's user and group names ``encode_owners(uname, gname)``?"""
        return self.buf[self._owners_at:self._owners_end] == encoded

    def target_length(self) -> int:
        """Length of the symlink target (or hard link path) field."""
        return FIELD_LENGTH.unpack_from(self.buf, self._owners_end)[0]

    def digests(self) -> List[bytes]:
        """Digests of the objects the entry names (none for INLINE)."""
        if self.flags & FLAG_INLINE:
            return []
        buf = self.buf
        (target_length,) = FIELD_LENGTH.unpack_from(buf, self._owners_end)
        data_at = self._owners_end + 4 + target_length
        (data_length,) = FIELD_LENGTH.unpack_from(buf, data_at)
        data_at += 4
        if data_at + data_length > self.end:
            raise RecordError("field overruns entry %r" % self.name)
        if self.flags & FLAG_PACKED:
            if data_length != PACKREF.size:
                raise RecordError("pack reference of %r is %d bytes" % (self.name, data_length))
            return [bytes(buf[data_at + 4:data_at + 36])]
        return [digest for digest, _length in decode_chunks(buf[data_at:data_at + data_length])]


def encode_owners(uname: bytes, gname: bytes) -> bytes:
    """The user and group name fields of an entry, as encoded (see RawEntry.has_owners)."""
    return FIELD_LENGTH.pack(len(uname)) + uname + FIELD_LENGTH.pack(len(gname)) + gname


def scan_entries(record: bytes) -> Iterator[RawEntry]:
    """Entries of a complete directory record, parsed only as far as RawEntry does."""
    offset = check_record_header(record)
    while offset < len(record):
        entry = RawEntry(record, offset)
        yield entry
        offset = entry.end




def entry_head(buf: bytes, offset: int) -> Tuple[int, bytes, int, bytes]:
    """(end, kind, flags, name) of the entry at ``offset``: all a first look needs.

    Checks that the entry's length and name lie within ``buf``; the other
    fields are checked when the entry is decoded."""
    try:
        total, kind, flags = LENGTH_KIND_FLAGS.unpack_from(buf, offset)
        (name_length,) = FIELD_LENGTH.unpack_from(buf, offset + FIXED_FIELDS.size)
    except struct.error as exc:
        raise RecordError("truncated entry at offset %d" % offset) from exc
    end = offset + total
    name_at = offset + NAME_AT
    if total < FIXED_FIELDS.size + 6 * FIELD_LENGTH.size or end > len(buf) or name_at + name_length > end:
        raise RecordError("entry at offset %d claims %d bytes" % (offset, total))
    return end, KIND_BYTES[kind], flags, buf[name_at:name_at + name_length]



def entry_length(buf: bytes, offset: int) -> int:
    """The length of the entry at ``offset`` (its first field; RawEntry checked it)."""
    return FIELD_LENGTH.unpack_from(buf, offset)[0]
