"""Metadata records: how one directory's entries are encoded.

A directory record is the byte stream ``b"BSDR" u32:version`` followed by
entries, each self-delimiting.  Entries appear in the order the backup met
them (find order), so an unchanged directory backed up twice in the same
order encodes to the same bytes and deduplicates.  The stream is cut into
objects by the chunker like file data (see FORMAT.md, "Directory records").

One entry::

    u32  total length of the entry, this field included
    u8   kind     (b'f' file, b'd' directory, b'l' symlink, b'h' hard link,
                   b'p' fifo, b'c' char device, b'b' block device)
    u8   flags    (INLINE, PARTIAL, IMPLICIT, SPARSE, PACKED)
    u16  reserved, zero
    u32  mode     (permission and special bits, st_mode & 0o7777)
    u32  uid, u32 gid
    i64  mtime_ns, i64 ctime_ns
    u64  inode, u64 size
    u32  nlink, u32 rdev major, u32 rdev minor
    then six length-prefixed (u32) byte strings:
    name, uname, gname, target, data, extras

``data`` is, when INLINE is set, the file's content or the directory's
whole record; when PACKED, a reference into a pack (u32 offset, one chunk
list item naming the pack, and the file content's 16-byte BLAKE2b digest);
otherwise a chunk list: 36-byte items of a 32-byte digest and a u32 length,
for a directory the chunk list of the child directory's own record.  ``extras`` holds
optional key/value pairs (u16 key length, key, u32 value length, value),
keys sorted, e.g. ``xattr.user.foo`` or ``sparse``.

All integers are little-endian.  The module is pure: no file system access.
"""

import stat
import struct
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

RECORD_MAGIC = b"BSDR"
RECORD_VERSION = 1
RECORD_HEADER = struct.Struct("<4sI")

KIND_FILE = b"f"
KIND_DIR = b"d"
KIND_SYMLINK = b"l"
KIND_HARDLINK = b"h"
KIND_FIFO = b"p"
KIND_CHAR = b"c"
KIND_BLOCK = b"b"
KINDS = (KIND_FILE, KIND_DIR, KIND_SYMLINK, KIND_HARDLINK, KIND_FIFO, KIND_CHAR, KIND_BLOCK)

FLAG_INLINE = 0x01        # data is the content itself, not a chunk list
FLAG_PARTIAL = 0x02       # checkpoint of a file still being read: chunks cover a prefix
FLAG_IMPLICIT = 0x04      # directory never named in the input: no metadata of its own
FLAG_SPARSE = 0x10        # extras["sparse"] lists the data extents; chunks cover only those
FLAG_PACKED = 0x20        # content is bytes offset..offset+size of the one chunk (a pack)
# Every flag this version knows; a reader treats an entry with any other bit as damage.
KNOWN_FLAGS = FLAG_INLINE | FLAG_PARTIAL | FLAG_IMPLICIT | FLAG_SPARSE | FLAG_PACKED

# Keys of Entry.extras (see FORMAT.md, "Extras").
XATTR_PREFIX = b"xattr."  # + attribute name -> raw value, as lgetxattr returns it
SPARSE_KEY = b"sparse"    # data extents of a SPARSE file (encode_extents)

_FIXED = struct.Struct("<IBBHIIIqqQQIII")
_LEN = struct.Struct("<I")
_CHUNK = struct.Struct("<32sI")
# For readers that compare entries in place (earlier.EarlierCursor): the
# fixed fields and the name's length in one unpack, then the name at NAME_AT;
# the length field alone; the size of one chunk list item; the least an
# entry can take (the fixed fields and six empty strings).
FIXED_AND_NAME_LENGTH = struct.Struct(_FIXED.format + "I")
NAME_AT = FIXED_AND_NAME_LENGTH.size
LENGTH_AND_NAME_LENGTH = struct.Struct("<I%dxI" % (_FIXED.size - _LEN.size))
LENGTH_KIND_FLAGS = struct.Struct("<IBB")
FIELD_LENGTH = _LEN
FIXED_FIELDS = _FIXED
CHUNKREF_SIZE = _CHUNK.size
ENTRY_MIN = _FIXED.size + 6 * _LEN.size
# offset in the pack, pack digest, pack length, digest of the file's content
_PACKREF = struct.Struct("<I32sI16s")
PACKREF_SIZE = _PACKREF.size
PACKREF = _PACKREF
_KEYLEN = struct.Struct("<H")

ChunkRef = Tuple[bytes, int]  # (32-byte digest, uncompressed length)
# The kind byte as the one-byte string entries carry, without a new object per entry.
KIND_BYTES = [bytes((value,)) for value in range(256)]


class RecordError(ValueError):
    """A directory record that does not parse."""


class Entry:
    """One directory entry; see the module docstring for the encoding."""

    __slots__ = ("name", "kind", "flags", "mode", "uid", "gid", "mtime_ns", "ctime_ns",
                 "ino", "size", "nlink", "rdev_major", "rdev_minor", "uname", "gname",
                 "target", "inline", "chunks", "offset", "content_digest", "extras", "pending")

    def __init__(self, name: bytes, kind: bytes, *, flags: int = 0, mode: int = 0,
                 uid: int = 0, gid: int = 0, mtime_ns: int = 0, ctime_ns: int = 0,
                 ino: int = 0, size: int = 0, nlink: int = 1, rdev_major: int = 0,
                 rdev_minor: int = 0, uname: bytes = b"", gname: bytes = b"",
                 target: bytes = b"", inline: Optional[bytes] = None,
                 chunks: Optional[List[ChunkRef]] = None, offset: int = 0,
                 content_digest: bytes = b"", extras: Optional[Dict[bytes, bytes]] = None) -> None:
        self.name = name
        self.kind = kind
        self.flags = flags
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.ino = ino
        self.size = size
        self.nlink = nlink
        self.rdev_major = rdev_major
        self.rdev_minor = rdev_minor
        self.uname = uname
        self.gname = gname
        self.target = target
        self.inline = inline
        self.chunks = chunks if chunks is not None else []
        self.offset = offset  # where a PACKED file's content starts in its pack
        self.content_digest = content_digest  # of a PACKED file's content (16 bytes)
        self.extras = extras if extras is not None else {}
        # In memory only, never encoded: while a backup runs, the entry
        # waits for a pack to be cut (packing.py) before it can be encoded.
        self.pending = False

    def __repr__(self) -> str:
        return "Entry(%r, %r, size=%d, flags=%#x)" % (self.name, self.kind, self.size, self.flags)

    @property
    def is_inline(self) -> bool:
        return bool(self.flags & FLAG_INLINE)

    def stored_length(self) -> int:
        """Bytes of content held for this entry (inline or in chunks)."""
        if self.flags & FLAG_INLINE:
            return len(self.inline or b"")
        if self.flags & FLAG_PACKED:
            return self.size
        return sum(length for _, length in self.chunks)


def encode_chunks(chunks: Sequence[ChunkRef]) -> bytes:
    return b"".join(_CHUNK.pack(digest, length) for digest, length in chunks)


def decode_chunks(data: bytes) -> List[ChunkRef]:
    if len(data) % _CHUNK.size:
        raise RecordError("chunk list length %d is not a multiple of %d" % (len(data), _CHUNK.size))
    return [_CHUNK.unpack_from(data, offset) for offset in range(0, len(data), _CHUNK.size)]


Extent = Tuple[int, int]  # (offset in the file, length) of a data region
_EXTENT = struct.Struct("<QQ")


def encode_extents(extents: Sequence[Extent]) -> bytes:
    """The ``sparse`` extra: (u64 offset, u64 length) pairs, ascending."""
    return b"".join(_EXTENT.pack(offset, length) for offset, length in extents)


def decode_extents(data: bytes, size: int) -> List[Extent]:
    """Data extents of a sparse file of ``size`` bytes; checked to be ordered and in range."""
    if len(data) % _EXTENT.size:
        raise RecordError("sparse map length %d is not a multiple of %d" % (len(data), _EXTENT.size))
    extents = [_EXTENT.unpack_from(data, offset) for offset in range(0, len(data), _EXTENT.size)]
    end = 0
    for offset, length in extents:
        if offset < end or offset + length > size:
            raise RecordError("sparse map extent (%d, %d) out of order or past the end"
                              % (offset, length))
        end = offset + length
    return extents


def encode_extras(extras: Dict[bytes, bytes]) -> bytes:
    parts = []
    for key in sorted(extras):
        value = extras[key]
        parts.append(_KEYLEN.pack(len(key)) + key + _LEN.pack(len(value)) + value)
    return b"".join(parts)


def decode_extras(data: bytes) -> Dict[bytes, bytes]:
    extras = {}
    offset = 0
    try:
        while offset < len(data):
            (key_len,) = _KEYLEN.unpack_from(data, offset)
            offset += 2
            key = data[offset:offset + key_len]
            offset += key_len
            (value_len,) = _LEN.unpack_from(data, offset)
            offset += 4
            extras[key] = data[offset:offset + value_len]
            offset += value_len
    except struct.error as exc:
        raise RecordError("truncated extras") from exc
    if offset != len(data):
        raise RecordError("extras overrun their field")
    return extras


def encode_entry(entry: Entry) -> bytes:
    """The bytes of one entry, length field included."""
    if entry.flags & FLAG_INLINE:
        data = entry.inline or b""
    elif entry.flags & FLAG_PACKED:
        (pack, pack_length), = entry.chunks
        if len(entry.content_digest) != 16:
            raise ValueError("packed entry %r has no 16-byte content digest" % entry.name)
        data = _PACKREF.pack(entry.offset, pack, pack_length, entry.content_digest)
    else:
        data = encode_chunks(entry.chunks)
    extras = encode_extras(entry.extras) if entry.extras else b""
    variable = b"".join(_LEN.pack(len(field)) + field for field in
                        (entry.name, entry.uname, entry.gname, entry.target, data, extras))
    total = _FIXED.size + len(variable)
    return _FIXED.pack(total, entry.kind[0], entry.flags, 0, entry.mode, entry.uid, entry.gid,
                       entry.mtime_ns, entry.ctime_ns, entry.ino, entry.size, entry.nlink,
                       entry.rdev_major, entry.rdev_minor) + variable


def decode_entry(buf: bytes, offset: int = 0) -> Tuple[Entry, int]:
    """Decode the entry at ``offset``; return it and the offset after it."""
    # Every reader decodes every entry it walks: the well-formed case is
    # read straight through (unrolled: a loop over the five fields after the
    # name costs an entry a microsecond more), and anything else is decoded
    # again by _decode_checked, which says what is wrong.
    try:
        (total, kind, flags, _reserved, mode, uid, gid, mtime_ns, ctime_ns, ino, size, nlink,
         rdev_major, rdev_minor, length) = FIXED_AND_NAME_LENGTH.unpack_from(buf, offset)
        unpack = _LEN.unpack_from
        pos = offset + NAME_AT
        name = buf[pos:pos + length]
        pos += length
        (length,) = unpack(buf, pos)
        uname = buf[pos + 4:pos + 4 + length]
        pos += 4 + length
        (length,) = unpack(buf, pos)
        gname = buf[pos + 4:pos + 4 + length]
        pos += 4 + length
        (length,) = unpack(buf, pos)
        target = buf[pos + 4:pos + 4 + length]
        pos += 4 + length
        (length,) = unpack(buf, pos)
        data = buf[pos + 4:pos + 4 + length]
        pos += 4 + length
        (length,) = unpack(buf, pos)
        extras = buf[pos + 4:pos + 4 + length]
        pos += 4 + length
    except struct.error:
        return _decode_checked(buf, offset)
    end = offset + total
    # Fields laid end to end that finish at the entry's end, within the
    # buffer, each lay within the entry.
    if pos != end or end > len(buf) or not isinstance(buf, bytes):
        return _decode_checked(buf, offset)
    return _entry(name, kind, flags, mode, uid, gid, mtime_ns, ctime_ns, ino, size, nlink,
                  rdev_major, rdev_minor, uname, gname, target, data, extras), end


def _decode_checked(buf: bytes, offset: int) -> Tuple[Entry, int]:
    """decode_entry, checking each field as it goes (RecordError names the first fault)."""
    try:
        (total, kind, flags, _reserved, mode, uid, gid, mtime_ns, ctime_ns, ino, size, nlink,
         rdev_major, rdev_minor) = _FIXED.unpack_from(buf, offset)
    except struct.error as exc:
        raise RecordError("truncated entry header at offset %d" % offset) from exc
    end = offset + total
    if total < _FIXED.size or end > len(buf):
        raise RecordError("entry at offset %d claims %d bytes" % (offset, total))
    fields = []
    pos = offset + _FIXED.size
    for _ in range(6):
        if pos + 4 > end:
            raise RecordError("truncated entry at offset %d" % offset)
        (length,) = _LEN.unpack_from(buf, pos)
        pos += 4
        if pos + length > end:
            raise RecordError("field overruns entry at offset %d" % offset)
        fields.append(bytes(buf[pos:pos + length]))
        pos += length
    if pos != end:
        raise RecordError("entry at offset %d has %d stray bytes" % (offset, end - pos))
    return _entry(kind=kind, flags=flags, mode=mode, uid=uid, gid=gid, mtime_ns=mtime_ns,
                  ctime_ns=ctime_ns, ino=ino, size=size, nlink=nlink, rdev_major=rdev_major,
                  rdev_minor=rdev_minor, name=fields[0], uname=fields[1], gname=fields[2],
                  target=fields[3], data=fields[4], extras=fields[5]), end


def _entry(name: bytes, kind: int, flags: int, mode: int, uid: int, gid: int, mtime_ns: int,
           ctime_ns: int, ino: int, size: int, nlink: int, rdev_major: int, rdev_minor: int,
           uname: bytes, gname: bytes, target: bytes, data: bytes, extras: bytes) -> Entry:
    """An Entry of decoded fields; ``data`` and ``extras`` as stored."""
    # Filled slot by slot (as Entry.__init__ would, with the decoded
    # values): a call with twenty keywords costs four times as much.
    entry = _new_entry(Entry)
    entry.name = name
    # An unknown kind is decoded (the entry is self-delimiting); readers
    # judge it (tree.entry_problem) and skip that entry alone.
    entry.kind = KIND_BYTES[kind]
    entry.flags = flags
    entry.mode = mode
    entry.uid = uid
    entry.gid = gid
    entry.mtime_ns = mtime_ns
    entry.ctime_ns = ctime_ns
    entry.ino = ino
    entry.size = size
    entry.nlink = nlink
    entry.rdev_major = rdev_major
    entry.rdev_minor = rdev_minor
    entry.uname = uname
    entry.gname = gname
    entry.target = target
    entry.extras = decode_extras(extras) if extras else {}
    entry.pending = False
    entry.inline = None
    entry.offset = 0
    entry.content_digest = b""
    if flags & FLAG_INLINE:
        entry.inline = data
        entry.chunks = []
    elif flags & FLAG_PACKED:
        if len(data) != _PACKREF.size:
            raise RecordError("pack reference of %r is %d bytes, not %d"
                              % (name, len(data), _PACKREF.size))
        entry.offset, pack, pack_length, entry.content_digest = _PACKREF.unpack(data)
        if entry.offset + size > pack_length:
            raise RecordError("%r: bytes %d..%d lie past the end of its pack (%d bytes)"
                              % (name, entry.offset, entry.offset + size, pack_length))
        entry.chunks = [(pack, pack_length)]
    else:
        entry.chunks = decode_chunks(data)
    return entry


_new_entry = object.__new__


def record_header() -> bytes:
    return RECORD_HEADER.pack(RECORD_MAGIC, RECORD_VERSION)


def iter_entries(record: bytes) -> Iterator[Entry]:
    """Entries of a complete directory record, in stored order."""
    offset = check_record_header(record)
    while offset < len(record):
        entry, offset = decode_entry(record, offset)
        yield entry


def check_record_header(record: bytes) -> int:
    """Check a record's header; return the offset of its first entry."""
    if len(record) < RECORD_HEADER.size:
        raise RecordError("directory record too short")
    magic, version = RECORD_HEADER.unpack_from(record, 0)
    if magic != RECORD_MAGIC:
        raise RecordError("not a directory record (magic %r)" % magic)
    if version != RECORD_VERSION:
        raise RecordError("directory record version %d is not supported" % version)
    return RECORD_HEADER.size


def mode_string(entry: Entry) -> str:
    """``ls -l`` style mode of an entry, as tar -tv prints it."""
    kinds = {KIND_FILE: stat.S_IFREG, KIND_HARDLINK: stat.S_IFREG, KIND_DIR: stat.S_IFDIR,
             KIND_SYMLINK: stat.S_IFLNK, KIND_FIFO: stat.S_IFIFO, KIND_CHAR: stat.S_IFCHR,
             KIND_BLOCK: stat.S_IFBLK}
    return stat.filemode(kinds[entry.kind] | entry.mode)
