"""Tar header encoding: a member's header blocks, without any I/O.

Like ``tarfile.TarInfo.tobuf``, these functions turn one member's metadata
into header bytes; tarout.py decides the members and writes headers and
content to the stream.

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
The common member (name and link target within their fields, numbers in
octal, not sparse) is encoded here directly, to the byte what ``tarfile``
would make of it (``plain_block``; tests/test_tar_fidelity.py compares
the two), in a fraction of the time: a restore writes one per file.
"""

import struct
import tarfile
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

from .records import KIND_BLOCK, KIND_CHAR, XATTR_PREFIX, Entry, Extent

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
BLOCK = tarfile.BLOCKSIZE
# Field sizes of a ustar header block (POSIX, "ustar Interchange Format").
NAME = 100              # name
LINKNAME = 100          # linkname
OWNER = 32              # uname, gname
ID = 8                  # uid, gid (digits and terminator)
NUMBER = 12             # size and mtime; also GNU sparse offsets and lengths
CHECKSUM_AT, CHECKSUM = 148, 8
# A stand-in name (for tars that ignore the extended header) stays one byte
# short of its field, so it always ends with a NUL.
STAND_IN_NAME = NAME - 1
# Old GNU sparse header (GNU tar's struct oldgnu_header): four (offset,
# numbytes) pairs of 12-byte numbers, the "isextended" flag and the real
# size; an extension block (struct sparse_header) holds 21 pairs and its
# own flag.
GNU_SPARSE_AT = 386
GNU_SPARSE_IN_HEADER = 4
GNU_ISEXTENDED_AT = 482
GNU_REALSIZE_AT = 483
GNU_SPARSE_PER_BLOCK = 21
GNU_EXTENSION_ISEXTENDED_AT = 504
_ACL_KEYS = {b"system.posix_acl_access": b"SCHILY.acl.access",
             b"system.posix_acl_default": b"SCHILY.acl.default"}


def encode_header(member: "Member", tar_format: int) -> bytes:
    """The header blocks of ``member`` in one of FORMATS; ValueError if it cannot hold it."""
    if tar_format != tarfile.PAX_FORMAT and member.sparse is None:
        block = plain_block(member, GNU_MAGIC if tar_format == tarfile.GNU_FORMAT
                            else tarfile.POSIX_MAGIC)
        if block is not None:
            return block
    build = {tarfile.PAX_FORMAT: pax_header, tarfile.GNU_FORMAT: gnu_header,
             tarfile.USTAR_FORMAT: ustar_header}[tar_format]
    return build(member)


# One header block (POSIX "ustar Interchange Format"), the checksum field
# blank (eight spaces), as tarfile lays it out.
_BLOCK = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
GNU_MAGIC = tarfile.GNU_MAGIC
_BLANK_CHECKSUM = b" " * CHECKSUM
_HALF = BLOCK // 2
_OCTAL_ID = 8 ** (ID - 1)        # ids and device numbers below this are octal
_OCTAL_NUMBER = 8 ** (NUMBER - 1)  # sizes and times below this are octal


def plain_block(member: "Member", magic: bytes) -> Optional[bytes]:
    """The one header block of a member whose fields all fit it as they are, with
    ``magic`` (GNU or ustar); None for any other (long names, big numbers, sparse).

    Equal to tarfile's ``TarInfo.tobuf`` of the same member (see ``_tarinfo``).
    """
    entry = member.entry
    name, linkname = member.name, member.linkname
    size, mode, uid, gid = member.size, entry.mode & 0o7777, entry.uid, entry.gid
    mtime = entry.mtime_ns // 1_000_000_000
    if (len(name) > NAME or len(linkname) > LINKNAME or not 0 <= uid < _OCTAL_ID
            or not 0 <= gid < _OCTAL_ID or not 0 <= size < _OCTAL_NUMBER
            or not 0 <= mtime < _OCTAL_NUMBER):
        return None
    major = minor = b""
    if member.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        if not (0 <= entry.rdev_major < _OCTAL_ID and 0 <= entry.rdev_minor < _OCTAL_ID):
            return None
        major, minor = b"%07o\0" % entry.rdev_major, b"%07o\0" % entry.rdev_minor
    uname, gname = entry.uname, entry.gname
    block = _BLOCK.pack(name, b"%07o\0" % mode, b"%07o\0" % uid, b"%07o\0" % gid,
                        b"%011o\0" % size, b"%011o\0" % mtime, _BLANK_CHECKSUM, member.type,
                        linkname, magic, uname if len(uname) <= OWNER else b"",
                        gname if len(gname) <= OWNER else b"", major, minor, b"")
    # The sum of the block's bytes: adler32's low half is 1 + the sum of its
    # input modulo 65521, exact for 256 bytes (at most 65,280).
    view = memoryview(block)
    checksum = (zlib.adler32(view[:_HALF]) & 0xFFFF) + (zlib.adler32(view[_HALF:]) & 0xFFFF) - 2
    return block[:CHECKSUM_AT] + b"%06o\0 " % checksum + block[CHECKSUM_AT + CHECKSUM:]


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


class Member:
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


def _tarinfo(member: Member) -> tarfile.TarInfo:
    entry = member.entry
    info = tarfile.TarInfo(_text(member.name))
    info.type = member.type
    info.mode = entry.mode
    info.uid = entry.uid
    info.gid = entry.gid
    # A name too long for the 32-byte field is left out rather than cut
    # (a cut name could be someone else's): tar falls back to the id.
    info.uname = _text(entry.uname) if len(entry.uname) <= OWNER else ""
    info.gname = _text(entry.gname) if len(entry.gname) <= OWNER else ""
    info.mtime = entry.mtime_ns // 1_000_000_000
    info.size = member.size
    info.linkname = _text(member.linkname)
    if entry.kind in (KIND_CHAR, KIND_BLOCK):
        info.devmajor = entry.rdev_major
        info.devminor = entry.rdev_minor
    return info

def ustar_header(member: Member) -> bytes:
    return _tarinfo(member).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")

def gnu_header(member: Member) -> bytes:
    info = _tarinfo(member)
    if member.sparse is None:
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"))
    main = len(header) - BLOCK
    pairs = [_number(offset, NUMBER) + _number(length, NUMBER)
             for offset, length in member.sparse]
    first, rest = pairs[:GNU_SPARSE_IN_HEADER], pairs[GNU_SPARSE_IN_HEADER:]
    at = main + GNU_SPARSE_AT
    header[at:at + 2 * NUMBER * len(first)] = b"".join(first)
    header[main + GNU_ISEXTENDED_AT] = 1 if rest else 0
    at = main + GNU_REALSIZE_AT
    header[at:at + NUMBER] = _number(member.entry.size, NUMBER)
    header[main:] = _checksummed(bytes(header[main:]))
    extension = []
    while rest:
        block = bytearray(BLOCK)
        part, rest = rest[:GNU_SPARSE_PER_BLOCK], rest[GNU_SPARSE_PER_BLOCK:]
        block[:2 * NUMBER * len(part)] = b"".join(part)
        block[GNU_EXTENSION_ISEXTENDED_AT] = 1 if rest else 0
        extension.append(bytes(block))
    return bytes(header) + b"".join(extension)

def pax_header(member: Member) -> bytes:
    """A PAX extended header (built here: values are raw bytes) and a ustar block."""
    entry = member.entry
    info = _tarinfo(member)
    records: List[Tuple[bytes, bytes]] = []
    binary = False
    if member.sparse is not None:
        records += [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                    (b"GNU.sparse.name", member.name),
                    (b"GNU.sparse.realsize", b"%d" % entry.size)]
        binary = _not_utf8(member.name)
        base = member.name.rpartition(b"/")[2]
        info.name = _ascii_fallback(b"GNUSparseFile.0/" + base, STAND_IN_NAME)
        info.size = member.size = len(sparse_map_block(member.sparse)) + member.size
    elif not _fits_ustar(member.name, NAME):
        records.append((b"path", member.name))
        binary = binary or _not_utf8(member.name)
        info.name = _ascii_fallback(member.name, STAND_IN_NAME)
    if not _fits_ustar(member.linkname, LINKNAME):
        records.append((b"linkpath", member.linkname))
        binary = binary or _not_utf8(member.linkname)
        info.linkname = _ascii_fallback(member.linkname, LINKNAME)
    for key, value, length in ((b"uname", entry.uname, OWNER), (b"gname", entry.gname, OWNER)):
        if not _fits_ustar(value, length):
            records.append((key, value))
            binary = binary or _not_utf8(value)
            setattr(info, key.decode(), "")
    for key, value, digits in ((b"uid", entry.uid, ID), (b"gid", entry.gid, ID),
                               (b"size", info.size, NUMBER)):
        if not 0 <= value < 8 ** (digits - 1):
            records.append((key, b"%d" % value))
            setattr(info, key.decode(), 0)
    if entry.mtime_ns % 1_000_000_000 or not 0 <= info.mtime < 8 ** (NUMBER - 1):
        records.append((b"mtime", _pax_time(entry.mtime_ns)))
        info.mtime = min(max(info.mtime, 0), 8 ** (NUMBER - 1) - 1)
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

def _not_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _checksummed(block: bytes) -> bytes:
    """A header block with its checksum field recomputed."""
    end = CHECKSUM_AT + CHECKSUM
    blank = block[:CHECKSUM_AT] + b" " * CHECKSUM + block[end:]
    return blank[:CHECKSUM_AT] + b"%06o\0 " % sum(blank) + blank[end:]


def sparse_map_block(extents: Sequence[Extent]) -> bytes:
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


