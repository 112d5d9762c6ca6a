"""How tar is produced: a backup (or a subtree of it) as a tar stream.

File data is streamed chunk by chunk straight from the object store, so no
file is ever held whole in memory and nothing is written to disk.  Names
are relative: the backup's root is ``./``; the tree walker (tree.py) lets
through only valid names, each under a directory, so no member climbs out
or lies below a non-directory member.  A hard link names only a member
this stream wrote earlier as a regular file; any other is written as a
regular file from its own data.  Symlink targets are written exactly as
stored.  A chunk that is missing or
damaged is reported and replaced by zeros of its length, so the stream
stays well formed.

The tar headers themselves are encoded by tarheader.py, which does no I/O.
"""

import collections
import os
import tarfile
from typing import BinaryIO, Callable, Deque, Dict, Iterator, Optional, Sequence, Set, Tuple

from .objectstore import ObjectError, ObjectReader
from .pipeline import Prefetcher, ReadAheadTreeReader
from .records import (FLAG_INLINE, FLAG_PACKED, FLAG_PARTIAL, FLAG_SPARSE, KIND_BLOCK,
                      KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE, KIND_HARDLINK, KIND_SYMLINK,
                      SPARSE_KEY, XATTR_PREFIX, ChunkRef, Entry, RecordError, decode_extents)
from .tarheader import BLOCK, FORMATS, Member, encode_header, sparse_map_block
from .tree import is_relative_path

RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(BLOCK)
# Entries held back while their chunks are fetched ahead (pipeline.Prefetcher).
LOOKAHEAD_ENTRIES = 4096
# Packs kept decompressed while writing: the files of a directory come from
# a few packs, unchanged ones from earlier backups' packs, new ones from
# this backup's; a pack evicted too early is decompressed again.
PACKS_CACHED = 8
_TYPES = {KIND_FILE: tarfile.REGTYPE, KIND_DIR: tarfile.DIRTYPE, KIND_SYMLINK: tarfile.SYMTYPE,
          KIND_HARDLINK: tarfile.LNKTYPE, KIND_FIFO: tarfile.FIFOTYPE,
          KIND_CHAR: tarfile.CHRTYPE, KIND_BLOCK: tarfile.BLKTYPE}


class TarFormatError(Exception):
    """An entry the chosen tar format cannot represent."""


def safe_member(path: bytes) -> bool:
    """Is ``path`` the root (b"") or valid entry names joined by '/'?"""
    return not path or is_relative_path(path)


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
        if member.type not in (tarfile.REGTYPE, tarfile.GNUTYPE_SPARSE):
            self._write(header)
            return
        if entry.kind == KIND_HARDLINK:
            self._link_moved[entry.target] = path
        if entry.kind == KIND_HARDLINK or entry.nlink > 1:
            self._link_targets.add(path)
        if entry.flags & (FLAG_INLINE | FLAG_PACKED) and not entry.flags & FLAG_SPARSE:
            # A small file (most are): header, content and padding in one write.
            self._write(header + self._small_content(path, entry)
                        + _ZEROS[:-entry.size % BLOCK])
            return
        self._write(header)
        self._write_content(member)

    def _member(self, path: bytes, entry: Entry) -> Member:
        if not safe_member(path):
            raise TarFormatError("%s: unsafe member name (absolute, or with an empty, "
                                 "'.' or '..' component, or NUL); skipped" % os.fsdecode(path))
        if entry.kind == KIND_HARDLINK:
            target = self._link_moved.get(entry.target, entry.target)
            if target in self._link_targets:
                return Member(path, entry, tarfile.LNKTYPE, target)
            # Only a member this stream wrote as a regular file is linked to
            # (a target elsewhere could be a symlink's path, or outside):
            # the first link inside the stream carries the data.
        elif entry.kind == KIND_SYMLINK:
            return Member(path, entry, tarfile.SYMTYPE, entry.target)
        elif entry.kind != KIND_FILE:
            return Member(path, entry, _TYPES[entry.kind])
        member = Member(path, entry, tarfile.REGTYPE)
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

    def _header(self, member: Member) -> bytes:
        try:
            header = encode_header(member, self.format)
        except ValueError as exc:
            raise TarFormatError("%s: cannot be stored in %s format: %s; skipped"
                                 % (os.fsdecode(member.path), self.format_name, exc)) from None
        # Sub-second times are not counted: nearly every file has them, and
        # gnu and ustar users expect whole seconds, as from GNU tar itself.
        extras = member.entry.extras
        if self.format != tarfile.PAX_FORMAT and member.type != tarfile.LNKTYPE and extras \
                and any(key.startswith(XATTR_PREFIX) for key in extras):
            self.attrs_dropped += 1
        return header

    # -- content -------------------------------------------------------------

    def _write_content(self, member: Member) -> None:
        entry = member.entry
        if member.sparse is not None:
            data_size = sum(length for _, length in member.sparse)
            if self.format == tarfile.PAX_FORMAT:
                self._write(sparse_map_block(member.sparse))
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

    def _write_expanded(self, member: Member) -> None:
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
            data = self._small_content(path, entry)[:size]
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
            self._short(path, remaining)
            step = 1 << 20
            while remaining > 0:
                yield bytes(min(remaining, step))
                remaining -= step

    def _small_content(self, path: bytes, entry: Entry) -> bytes:
        """An inline or packed file's ``entry.size`` bytes (zeros where damaged)."""
        whole = (entry.inline or b"") if entry.flags & FLAG_INLINE else \
            self._packed(path, entry)
        data = whole[:entry.size]
        if len(data) < entry.size:
            self._short(path, entry.size - len(data))
            data += bytes(entry.size - len(data))
        return data

    def _short(self, path: bytes, missing: int) -> None:
        self.damage(path, "stored content is %d bytes short; padded with zeros" % missing)

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
    tree = ReadAheadTreeReader(objects)  # directory records, read ahead too
    try:
        # Damage (an unreadable record, an entry breaking the format's
        # rules) costs only what is below it: reported like a damaged file
        # (exit 1), and the stream goes on well formed.
        for path, entry in tree.walk(root, start, recursive=recursive,
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
        tree.close()
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

