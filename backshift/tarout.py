"""How tar is produced: a backup (or a subtree of it) as a tar stream.

File data is streamed chunk by chunk straight from the object store, so no
file is ever held whole in memory and nothing is written to disk.  Names
are relative: the backup's root is ``./``; the tree walker (tree.py) lets
through only valid names, each under a directory, so no member climbs out
or lies below a non-directory member.  A hard link names only a member
this stream wrote earlier as a regular file; any other is written as a
regular file from its own data.
Symlink targets are written exactly as stored.  A chunk that is missing or
damaged is reported and replaced by zeros of its length, so the stream
stays well formed.

What each format keeps (see also README):

* ``gnu`` (default): everything but extended attributes, ACLs and
  sub-second times; long names as GNU ``L``/``K`` members, big numbers in
  base-256, sparse files as old GNU sparse members (type ``S``).
* ``pax``: everything.  Extended headers carry the path, link target,
  names, big ids and sizes, ``mtime`` in ns, ``SCHILY.xattr.<name>`` for
  each extended attribute, ``SCHILY.acl.access``/``.default`` for ACLs,
  and sparse files as GNU sparse 1.0.
* ``ustar``: seconds only, no attributes; sparse files are written out
  with their holes as zeros.  An entry it cannot hold (long name, 8 GiB or
  more, big ids) is reported and skipped.

Headers other than PAX come from the standard library's ``tarfile``.  PAX
extended headers are built here because ``tarfile`` takes only text
values: extended attribute values are arbitrary bytes, their names need
GNU tar's ``%``-escaping, and sparse members need GNU's own keywords.
"""

import collections
import os
import struct
import tarfile
from typing import BinaryIO, Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .objectstore import ObjectError, ObjectReader
from .pipeline import Prefetcher, ReadAheadTreeReader
from .records import (FLAG_INLINE, FLAG_PACKED, FLAG_PARTIAL, FLAG_SPARSE, KIND_BLOCK,
                      KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_HARDLINK, KIND_SYMLINK,
                      SPARSE_KEY, XATTR_PREFIX, ChunkRef, Entry, Extent, RecordError, decode_extents)
from .tree import is_relative_path

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
# Entries held back while their chunks are fetched ahead (pipeline.Prefetcher).
LOOKAHEAD_ENTRIES = 256
# Packs kept decompressed while writing: the files of a directory come from
# a few packs, unchanged ones from earlier backups' packs, new ones from
# this backup's; a pack evicted too early is decompressed again.
PACKS_CACHED = 8
_TYPES = {KIND_FILE: tarfile.REGTYPE, KIND_DIR: tarfile.DIRTYPE, KIND_SYMLINK: tarfile.SYMTYPE,
          KIND_HARDLINK: tarfile.LNKTYPE, KIND_FIFO: tarfile.FIFOTYPE,
          KIND_CHAR: tarfile.CHRTYPE, KIND_BLOCK: tarfile.BLKTYPE}
_ACL_KEYS = {b"system.posix_acl_access": b"SCHILY.acl.access",
             b"system.posix_acl_default": b"SCHILY.acl.default"}
# Old GNU sparse header: four (offset, numbytes) pairs of 12-byte numbers at
# 386, the "isextended" flag at 482 and the real size at 483; extension
# blocks hold 21 pairs and their own flag at 504.
_GNU_SPARSE_AT, _GNU_SPARSE_IN_HEADER, _GNU_SPARSE_PER_BLOCK = 386, 4, 21


class TarFormatError(Exception):
    """An entry the chosen tar format cannot represent."""


def safe_member(path: bytes) -> bool:
    """Is ``path`` the root (b"") or valid entry names joined by '/'?"""
    return not path or is_relative_path(path)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _number(value: int, digits: int) -> bytes:
    """A GNU numeric field (octal, or base-256 when too big) as tarfile writes it."""
    return tarfile.itn(value, digits, tarfile.GNU_FORMAT)


def pax_records(items: Sequence[Tuple[bytes, bytes]]) -> bytes:
    """POSIX extended header records: ``"<len> <keyword>=<value>\\n"``, values raw bytes."""
    out = []
    for keyword, value in items:
        body = b" " + keyword + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length = len(str(length)) + len(body)
        out.append(str(length).encode("ascii") + body)
    return b"".join(out)


def xattr_keyword(name: bytes) -> bytes:
    """``SCHILY.xattr.<name>``, escaped only where GNU tar needs it.

    A keyword ends at the first '=', so GNU tar writes '=' as %3D and '%'
    as %25 and decodes those two sequences on reading.  bsdtar does not
    decode them, so names that need no escaping (no '=', no "%3D" or
    "%25" already in them) are written as they are and restore with both.
    """
    if b"=" in name or b"%3D" in name or b"%25" in name:
        name = name.replace(b"%", b"%25").replace(b"=", b"%3D")
    return b"SCHILY.xattr." + name


def acl_text(value: bytes) -> Optional[bytes]:
    """The text form GNU tar and bsdtar restore (``user:1000:rw-`` lines) of a
    ``system.posix_acl_*`` attribute, ids kept numeric as stored; None if malformed."""
    tags = {0x01: b"user", 0x02: b"user", 0x04: b"group", 0x08: b"group", 0x10: b"mask",
            0x20: b"other"}
    if len(value) < 4 or (len(value) - 4) % 8 or struct.unpack_from("<I", value)[0] != 2:
        return None
    lines = []
    for offset in range(4, len(value), 8):
        tag, perm, ident = struct.unpack_from("<HHI", value, offset)
        if tag not in tags:
            return None
        qualifier = b"%d" % ident if tag in (0x02, 0x08) else b""
        perms = bytes(char if perm & bit else ord("-") for char, bit in
                      ((ord("r"), 4), (ord("w"), 2), (ord("x"), 1)))
        lines.append(tags[tag] + b":" + qualifier + b":" + perms + b"\n")
    return b"".join(lines)


def _pax_time(ns: int) -> bytes:
    sign = b"-" if ns < 0 else b""
    seconds, fraction = divmod(abs(ns), 1_000_000_000)
    if not fraction:
        return sign + b"%d" % seconds
    return sign + (b"%d.%09d" % (seconds, fraction)).rstrip(b"0")


def _fits_ustar(value: bytes, length: int) -> bool:
    return len(value) <= length and all(byte < 128 for byte in value)


def _ascii_fallback(value: bytes, length: int) -> str:
    """A stand-in for a name held in the extended header, for tars that ignore it."""
    return value[-length:].decode("ascii", "replace").replace("\ufffd", "_")


class _Member:
    """What one tar member holds, whatever the format."""

    __slots__ = ("path", "entry", "type", "name", "linkname", "size", "sparse")

    def __init__(self, path: bytes, entry: Entry, type_: bytes, linkname: bytes = b"") -> None:
        self.path = path
        self.entry = entry
        self.type = type_
        name = path or b"."
        self.name = name + b"/" if type_ == tarfile.DIRTYPE else name
        self.linkname = linkname
        # Bytes of content in the archive, and for a sparse file its map
        # (with a closing empty extent when it ends in a hole, as GNU tar
        # needs to restore the full size).
        self.size = 0
        self.sparse: Optional[List[Extent]] = None


class TarWriter:
    """Writes entries of one backup as a tar stream."""

    def __init__(self, out: BinaryIO, fetch: Callable[[bytes], bytes], tar_format: str = "gnu",
                 on_damage: Optional[Callable[[bytes, str], None]] = None,
                 on_skip: Optional[Callable[[bytes, str], None]] = None) -> None:
        self.out = out
        # Where chunk contents come from (an object store's get, or a Prefetcher's).
        self.fetch = fetch
        self.format = FORMATS[tar_format]
        self.format_name = tar_format
        self.on_damage = on_damage or (lambda path, reason: None)
        self.on_skip = on_skip
        self.written = 0
        self.damaged = 0
        self.skipped = 0
        # Entries whose extended attributes (ACLs included) this format drops.
        self.attrs_dropped = 0
        # Paths of multiply linked files already written, and where a link
        # to a target outside the stream was written with its data instead.
        self._link_targets: Set[bytes] = set()
        self._link_moved: Dict[bytes, bytes] = {}
        # Packs recently read (PackCache): the small files of a directory share a few.
        self._packs = PackCache(PACKS_CACHED)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def add(self, path: bytes, entry: Entry) -> None:
        """Write one entry; one that cannot be written is reported and skipped."""
        try:
            member = self._member(path, entry)
            header = self._header(member)
        except TarFormatError as exc:
            self._skip(path, str(exc))
            return
        self._write(header)
        if member.type in (tarfile.REGTYPE, tarfile.GNUTYPE_SPARSE):
            if entry.kind == KIND_HARDLINK:
                self._link_moved[entry.target] = path
            if entry.kind == KIND_HARDLINK or entry.nlink > 1:
                self._link_targets.add(path)
            self._write_content(member)

    def _member(self, path: bytes, entry: Entry) -> _Member:
        if not safe_member(path):
            raise TarFormatError("%s: unsafe member name (absolute, or with an empty, "
                                 "'.' or '..' component, or NUL); skipped" % os.fsdecode(path))
        if entry.kind == KIND_HARDLINK:
            target = self._link_moved.get(entry.target, entry.target)
            if target in self._link_targets:
                return _Member(path, entry, tarfile.LNKTYPE, target)
            # Only a member this stream wrote as a regular file is linked to
            # (a target elsewhere could be a symlink's path, or outside):
            # the first link inside the stream carries the data.
        elif entry.kind == KIND_SYMLINK:
            return _Member(path, entry, tarfile.SYMTYPE, entry.target)
        elif entry.kind != KIND_FILE:
            return _Member(path, entry, _TYPES[entry.kind])
        member = _Member(path, entry, tarfile.REGTYPE)
        member.size = entry.size
        if entry.flags & FLAG_SPARSE and self.format != tarfile.USTAR_FORMAT:
            try:
                extents = decode_extents(entry.extras.get(SPARSE_KEY, b""), entry.size)
            except RecordError as exc:
                raise TarFormatError("%s: %s" % (os.fsdecode(path), exc)) from None
            member.size = sum(length for _, length in extents)
            if not extents or sum(extents[-1]) < entry.size:
                extents.append((entry.size, 0))
            member.sparse = extents
        return member

    def _skip(self, path: bytes, reason: str) -> None:
        self.skipped += 1
        if self.on_skip is None:
            raise TarFormatError(reason)
        self.on_skip(path, reason)

    # -- headers -------------------------------------------------------------

    def _header(self, member: _Member) -> bytes:
        build = {tarfile.PAX_FORMAT: self._pax_header, tarfile.GNU_FORMAT: self._gnu_header,
                 tarfile.USTAR_FORMAT: self._ustar_header}[self.format]
        try:
            header = build(member)
        except ValueError as exc:
            raise TarFormatError("%s: cannot be stored in %s format: %s; skipped"
                                 % (os.fsdecode(member.path), self.format_name, exc)) from None
        # Sub-second times are not counted: nearly every file has them, and
        # gnu and ustar users expect whole seconds, as from GNU tar itself.
        if self.format != tarfile.PAX_FORMAT and member.type != tarfile.LNKTYPE and any(
                key.startswith(XATTR_PREFIX) for key in member.entry.extras):
            self.attrs_dropped += 1
        return header

    def _tarinfo(self, member: _Member) -> tarfile.TarInfo:
        entry = member.entry
        info = tarfile.TarInfo(_text(member.name))
        info.type = member.type
        info.mode = entry.mode
        info.uid = entry.uid
        info.gid = entry.gid
        # A name too long for the 32-byte field is left out rather than cut
        # (a cut name could be someone else's): tar falls back to the id.
        info.uname = _text(entry.uname) if len(entry.uname) <= 32 else ""
        info.gname = _text(entry.gname) if len(entry.gname) <= 32 else ""
        info.mtime = entry.mtime_ns // 1_000_000_000
        info.size = member.size
        info.linkname = _text(member.linkname)
        if entry.kind in (KIND_CHAR, KIND_BLOCK):
            info.devmajor = entry.rdev_major
            info.devminor = entry.rdev_minor
        return info

    def _ustar_header(self, member: _Member) -> bytes:
        return self._tarinfo(member).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")

    def _gnu_header(self, member: _Member) -> bytes:
        info = self._tarinfo(member)
        if member.sparse is None:
            return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
        info.type = tarfile.GNUTYPE_SPARSE
        header = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
        main = len(header) - BLOCK
        pairs = [_number(offset, 12) + _number(length, 12) for offset, length in member.sparse]
        first, rest = pairs[:_GNU_SPARSE_IN_HEADER], pairs[_GNU_SPARSE_IN_HEADER:]
        at = main + _GNU_SPARSE_AT
        header[at:at + 24 * len(first)] = b"".join(first)
        header[main + 482] = 1 if rest else 0
        header[main + 483:main + 495] = _number(member.entry.size, 12)
        header[main:] = _checksummed(bytes(header[main:]))
        extension = []
        while rest:
            block = bytearray(BLOCK)
            part, rest = rest[:_GNU_SPARSE_PER_BLOCK], rest[_GNU_SPARSE_PER_BLOCK:]
            block[:24 * len(part)] = b"".join(part)
            block[504] = 1 if rest else 0
            extension.append(bytes(block))
        return bytes(header) + b"".join(extension)

    def _pax_header(self, member: _Member) -> bytes:
        """A PAX extended header (built here: values are raw bytes) and a ustar block."""
        entry = member.entry
        info = self._tarinfo(member)
        records: List[Tuple[bytes, bytes]] = []
        binary = False
        if member.sparse is not None:
            records += [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                        (b"GNU.sparse.name", member.name),
                        (b"GNU.sparse.realsize", b"%d" % entry.size)]
            binary = _not_utf8(member.name)
            base = member.name.rpartition(b"/")[2]
            info.name = _ascii_fallback(b"GNUSparseFile.0/" + base, 99)
            info.size = member.size = len(_sparse_map_block(member.sparse)) + member.size
        elif not _fits_ustar(member.name, 100):
            records.append((b"path", member.name))
            binary = binary or _not_utf8(member.name)
            info.name = _ascii_fallback(member.name, 99)
        if not _fits_ustar(member.linkname, 100):
            records.append((b"linkpath", member.linkname))
            binary = binary or _not_utf8(member.linkname)
            info.linkname = _ascii_fallback(member.linkname, 100)
        for key, value, length in ((b"uname", entry.uname, 32), (b"gname", entry.gname, 32)):
            if not _fits_ustar(value, length):
                records.append((key, value))
                binary = binary or _not_utf8(value)
                setattr(info, key.decode(), "")
        for key, value, digits in ((b"uid", entry.uid, 8), (b"gid", entry.gid, 8),
                                   (b"size", info.size, 12)):
            if not 0 <= value < 8 ** (digits - 1):
                records.append((key, b"%d" % value))
                setattr(info, key.decode(), 0)
        if entry.mtime_ns % 1_000_000_000 or not 0 <= info.mtime < 8 ** 11:
            records.append((b"mtime", _pax_time(entry.mtime_ns)))
            info.mtime = min(max(info.mtime, 0), 8 ** 11 - 1)
        if member.type != tarfile.LNKTYPE:
            records += _xattr_records(entry.extras)
        if binary:
            # Names that are not UTF-8 go as raw bytes, as tarfile and GNU tar do.
            records.insert(0, (b"hdrcharset", b"BINARY"))
        main = info.tobuf(tarfile.USTAR_FORMAT, "ascii", "replace")
        if not records:
            return main
        data = pax_records(records)
        extended = tarfile.TarInfo("././@PaxHeader")
        extended.type = tarfile.XHDTYPE
        extended.size = len(data)
        return (extended.tobuf(tarfile.USTAR_FORMAT, "ascii", "replace") + data
                + bytes(-len(data) % BLOCK) + main)

    # -- content -------------------------------------------------------------

    def _write_content(self, member: _Member) -> None:
        entry = member.entry
        if member.sparse is not None:
            data_size = sum(length for _, length in member.sparse)
            if self.format == tarfile.PAX_FORMAT:
                self._write(_sparse_map_block(member.sparse))
            for piece in self._stored(member.path, entry, data_size):
                self._write(piece)
            self._write_zeros(-data_size % BLOCK)
            return
        if entry.flags & FLAG_SPARSE:  # ustar: holes written out as zeros
            self._write_expanded(member)
        else:
            for piece in self._stored(member.path, entry, entry.size):
                self._write(piece)
        self._write_zeros(-entry.size % BLOCK)

    def _write_expanded(self, member: _Member) -> None:
        entry = member.entry
        try:
            extents = decode_extents(entry.extras.get(SPARSE_KEY, b""), entry.size)
        except RecordError as exc:
            self.damage(member.path, str(exc))
            extents = []
        stored = self._stored(member.path, entry, sum(length for _, length in extents))
        pending = b""
        position = 0
        for offset, length in extents:
            self._write_zeros(offset - position)
            position = offset + length
            while length > 0:
                if not pending:
                    pending = next(stored)
                piece, pending = pending[:length], pending[length:]
                self._write(piece)
                length -= len(piece)
        self._write_zeros(entry.size - position)

    def _stored(self, path: bytes, entry: Entry, size: int) -> Iterator[bytes]:
        """Exactly ``size`` bytes of stored content, in pieces (zeros where damaged)."""
        remaining = size
        if entry.flags & (FLAG_INLINE | FLAG_PACKED):
            whole = (entry.inline or b"") if entry.flags & FLAG_INLINE else \
                self._packed(path, entry)
            data = whole[:remaining]
            if data:
                yield data
            remaining -= len(data)
        else:
            for digest, length in entry.chunks:
                if remaining <= 0:
                    break
                try:
                    data = self.fetch(digest)
                except ObjectError as exc:
                    self.damage(path, exc.reason + " (object %s)" % digest.hex())
                    data = bytes(length)
                data = data[:remaining]
                yield data
                remaining -= len(data)
        if remaining > 0:
            self.damage(path, "stored content is %d bytes short; padded with zeros" % remaining)
            step = 1 << 20
            while remaining > 0:
                yield bytes(min(remaining, step))
                remaining -= step

    def _packed(self, path: bytes, entry: Entry) -> bytes:
        """A packed file's content, or b"" if its pack is damaged (reported)."""
        (digest, _length), = entry.chunks
        pack = self._packs.get(digest)
        if pack is None:
            try:
                pack = self.fetch(digest)
            except ObjectError as exc:
                self.damage(path, exc.reason + " (pack %s)" % digest.hex())
                return b""
            self._packs.put(digest, pack)
        return pack[entry.offset:entry.offset + entry.size]

    def _write_zeros(self, count: int) -> None:
        step = 1 << 20
        while count > 0:
            piece = min(count, step)
            self._write(bytes(piece))
            count -= piece

    def damage(self, path: bytes, reason: str) -> None:
        self.damaged += 1
        self.on_damage(path, reason)

    def close(self) -> None:
        """Write the end-of-archive blocks and pad to a whole tar record."""
        self._write(bytes(2 * BLOCK))
        self._write_zeros(-self.written % RECORD)
        self.out.flush()


def _not_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _checksummed(block: bytes) -> bytes:
    """A header block with its checksum field recomputed."""
    blank = block[:148] + b" " * 8 + block[156:]
    return blank[:148] + b"%06o\0 " % sum(blank) + blank[156:]


def _sparse_map_block(extents: Sequence[Extent]) -> bytes:
    """GNU sparse 1.0: the map in decimal lines before the data, padded to a block."""
    lines = [b"%d\n" % len(extents)]
    for offset, length in extents:
        lines.append(b"%d\n%d\n" % (offset, length))
    text = b"".join(lines)
    return text + bytes(-len(text) % BLOCK)


def _xattr_records(extras: Dict[bytes, bytes]) -> List[Tuple[bytes, bytes]]:
    """SCHILY.acl.* (what ``tar --acls`` and bsdtar restore) and SCHILY.xattr.* records."""
    records = []
    for key in sorted(extras):
        if not key.startswith(XATTR_PREFIX):
            continue
        name = key[len(XATTR_PREFIX):]
        if name in _ACL_KEYS:
            text = acl_text(extras[key])
            if text is not None:
                records.append((_ACL_KEYS[name], text))
        records.append((xattr_keyword(name), extras[key]))
    return records


def produce_tar(objects: ObjectReader, root: Sequence[ChunkRef], start: bytes, out: BinaryIO,
                tar_format: str = "gnu", on_damage: Optional[Callable[[bytes, str], None]] = None,
                on_skip: Optional[Callable[[bytes, str], None]] = None,
                recursive: bool = True) -> TarWriter:
    """Write every entry of a backup at or below ``start`` (in stored order) as tar.

    Returns the writer, whose counters say what was damaged or skipped.
    """
    # Chunks of the entries ahead are read and decompressed by worker
    # threads while the current one is written (pipeline.Prefetcher); the
    # entries waiting for their turn are held in ``ahead``.
    fetcher = Prefetcher(objects)
    writer = TarWriter(out, fetcher.get, tar_format, on_damage, on_skip)
    ahead: Deque[Tuple[bytes, Entry]] = collections.deque()
    # Which packs the writer will find in its cache: those are not fetched
    # again.  Fed the same sequence of packs, this copy of the writer's
    # PackCache (without the contents) stays in step with it.
    planned = PackCache(PACKS_CACHED)
    records = ReadAheadTreeReader(objects)  # directory records, read ahead too
    try:
        # Damage (an unreadable record, an entry breaking the format's
        # rules) costs only what is below it: reported like a damaged file
        # (exit 1), and the stream goes on well formed.
        for path, entry in records.walk(root, start, recursive=recursive,
                                        on_damage=writer.damage):
            if entry.flags & FLAG_PARTIAL:
                continue  # a checkpoint's prefix of a file still being read: not a file
            if entry.kind == KIND_FILE and entry.flags & FLAG_PACKED:
                if planned.get(entry.chunks[0][0]) is None:
                    fetcher.want(entry.chunks)
                    planned.put(entry.chunks[0][0], b"")
            elif entry.kind == KIND_FILE and not entry.flags & FLAG_INLINE:
                fetcher.want(entry.chunks)
            ahead.append((path, entry))
            while ahead and (not fetcher.has_room or len(ahead) > LOOKAHEAD_ENTRIES):
                writer.add(*ahead.popleft())
        while ahead:
            writer.add(*ahead.popleft())
    finally:
        fetcher.close()
        records.close()
    writer.close()
    return writer


class PackCache:
    """The most recently used packs' contents, by digest (least recently used dropped)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._packs: "collections.OrderedDict[bytes, bytes]" = collections.OrderedDict()

    def get(self, digest: bytes) -> Optional[bytes]:
        pack = self._packs.get(digest)
        if pack is not None:
            self._packs.move_to_end(digest)
        return pack

    def put(self, digest: bytes, pack: bytes) -> None:
        self._packs[digest] = pack
        if len(self._packs) > self.capacity:
            self._packs.popitem(last=False)

