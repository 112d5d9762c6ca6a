"""How tar is produced: a backup (or a subtree of it) as a tar stream.

Headers come from the standard library's ``tarfile`` (GNU, PAX or ustar);
file data is streamed chunk by chunk straight from the object store, so no
file is ever held whole in memory and nothing is written to disk.  Names
are relative: the backup's root is ``./`` and nothing has a leading ``/``
or a ``..`` component.  A chunk that is missing or damaged is reported on
stderr and replaced by zeros of its length, so the stream stays well formed.
"""

import os
import stat
import tarfile
from typing import BinaryIO, Callable, Dict, Optional, Sequence, Set

from .objectstore import ObjectError, ObjectStore
from .records import (FLAG_INLINE, KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO, KIND_FILE,
                      KIND_HARDLINK, KIND_SYMLINK, ChunkRef, Entry)
from .tree import TreeReader

FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_TYPES = {KIND_FILE: tarfile.REGTYPE, KIND_DIR: tarfile.DIRTYPE, KIND_SYMLINK: tarfile.SYMTYPE,
          KIND_HARDLINK: tarfile.LNKTYPE, KIND_FIFO: tarfile.FIFOTYPE,
          KIND_CHAR: tarfile.CHRTYPE, KIND_BLOCK: tarfile.BLKTYPE}


class TarFormatError(Exception):
    """An entry the chosen tar format cannot represent."""


def member_name(path: bytes) -> str:
    """The tar name of a backup path (str with surrogate escapes for raw bytes)."""
    return os.fsdecode(path) if path else "."


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class TarWriter:
    """Writes entries of one backup as a tar stream."""

    def __init__(self, out: BinaryIO, objects: ObjectStore, tar_format: str = "gnu",
                 on_damage: Optional[Callable[[bytes, str], None]] = None) -> None:
        self.out = out
        self.objects = objects
        self.format = FORMATS[tar_format]
        self.format_name = tar_format
        self.on_damage = on_damage or (lambda path, reason: None)
        self.written = 0
        self.damaged = 0
        # Paths of multiply linked files already written, and where a link
        # to a target outside the stream was written with its data instead.
        self._link_targets: Set[bytes] = set()
        self._link_moved: Dict[bytes, bytes] = {}

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def add(self, path: bytes, entry: Entry) -> None:
        info = self._tarinfo(path, entry)
        if entry.kind == KIND_HARDLINK:
            target = self._link_moved.get(entry.target, entry.target)
            if target in self._link_targets:
                info.linkname = member_name(target)
                self._write_header(info, path)
                return
            # The first link inside the stream carries the data.
            info.type = tarfile.REGTYPE
            info.linkname = ""
            info.size = entry.size
            self._link_moved[entry.target] = path
            self._link_targets.add(path)
        elif entry.kind == KIND_FILE and entry.nlink > 1:
            self._link_targets.add(path)
        self._write_header(info, path)
        if info.type == tarfile.REGTYPE:
            self._write_content(path, entry)

    def _tarinfo(self, path: bytes, entry: Entry) -> tarfile.TarInfo:
        info = tarfile.TarInfo(member_name(path))
        info.type = _TYPES[entry.kind]
        info.mode = entry.mode
        info.uid = entry.uid
        info.gid = entry.gid
        info.uname = _text(entry.uname)
        info.gname = _text(entry.gname)
        info.mtime = entry.mtime_ns // 1_000_000_000
        if entry.kind == KIND_FILE:
            info.size = entry.size
        elif entry.kind in (KIND_SYMLINK, KIND_HARDLINK):
            info.linkname = _text(entry.target)
        elif entry.kind in (KIND_CHAR, KIND_BLOCK):
            info.devmajor = entry.rdev_major
            info.devminor = entry.rdev_minor
        return info

    def _write_header(self, info: tarfile.TarInfo, path: bytes) -> None:
        try:
            header = info.tobuf(self.format, "utf-8", "surrogateescape")
        except ValueError as exc:
            raise TarFormatError("%s: cannot be stored in %s format: %s"
                                 % (os.fsdecode(path), self.format_name, exc)) from None
        self._write(header)

    def _write_content(self, path: bytes, entry: Entry) -> None:
        remaining = entry.size
        if entry.flags & FLAG_INLINE:
            data = (entry.inline or b"")[:remaining]
            self._write(data)
            remaining -= len(data)
        else:
            for digest, length in entry.chunks:
                if remaining <= 0:
                    break
                try:
                    data = self.objects.get(digest)
                except ObjectError as exc:
                    self._damage(path, exc.reason + " (object %s)" % digest.hex())
                    data = bytes(length)
                data = data[:remaining]
                self._write(data)
                remaining -= len(data)
        if remaining > 0:
            self._damage(path, "stored content is %d bytes short; padded with zeros" % remaining)
            self._write_zeros(remaining)
        self._write_zeros(-entry.size % BLOCK)

    def _write_zeros(self, count: int) -> None:
        step = 1 << 20
        while count > 0:
            piece = min(count, step)
            self._write(bytes(piece))
            count -= piece

    def _damage(self, path: bytes, reason: str) -> None:
        self.damaged += 1
        self.on_damage(path, reason)

    def close(self) -> None:
        """Write the end-of-archive blocks and pad to a whole tar record."""
        self._write(bytes(2 * BLOCK))
        self._write_zeros(-self.written % RECORD)
        self.out.flush()


def produce_tar(reader: TreeReader, root: Sequence[ChunkRef], start: bytes, writer: TarWriter,
                recursive: bool = True) -> None:
    """Write every entry of a backup at or below ``start`` (in stored order)."""
    # A damaged directory record costs only what is below it: reported like
    # a damaged file (exit 1), and the stream goes on well formed.
    for path, entry in reader.walk(root, start, recursive=recursive,
                                   on_damage=writer._damage):
        writer.add(path, entry)
    writer.close()


def mode_string(entry: Entry) -> str:
    """``ls -l`` style mode of an entry, as tar -tv prints it."""
    kinds = {KIND_FILE: stat.S_IFREG, KIND_HARDLINK: stat.S_IFREG, KIND_DIR: stat.S_IFDIR,
             KIND_SYMLINK: stat.S_IFLNK, KIND_FIFO: stat.S_IFIFO, KIND_CHAR: stat.S_IFCHR,
             KIND_BLOCK: stat.S_IFBLK}
    return stat.filemode(kinds[entry.kind] | entry.mode)
