"""Listing backups and the contents of one backup."""

import time
from typing import BinaryIO, Iterable, Optional, Sequence

from .catalog import BackupRecord
from .records import (FLAG_PARTIAL, KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_HARDLINK, KIND_SYMLINK,
                      ChunkRef, mode_string)
from .tree import DamageHandler, TreeReader


def quote_name(name: bytes) -> bytes:
    """A name safe for one line of output, escaped as GNU tar's default style.

    Control characters and backslashes become C escapes; bytes that are not
    valid UTF-8 become octal escapes; everything else is kept as is.
    """
    if name.isascii() and not any(byte < 32 or byte in (92, 127) for byte in name):
        return name
    text = name.decode("utf-8", "surrogateescape")
    out = []
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "\b": "\\b", "\f": "\\f",
             "\v": "\\v", "\a": "\\a"}
    for char in text:
        code = ord(char)
        if char in named:
            out.append(named[char])
        elif code < 32 or code == 127:
            out.append("\\%03o" % code)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append("\\%03o" % (code - 0xDC00))
        else:
            out.append(char)
    return "".join(out).encode("utf-8")


def backup_line(record: BackupRecord) -> str:
    finished = record.finished.strftime("%Y-%m-%dT%H:%M:%SZ") if record.finished \
        else "unfinished"
    return "%s %s %s %s %s %d files %d bytes, %d bytes added" % (
        record.backup_id, record.hostname, record.subset,
        record.started.strftime("%Y-%m-%dT%H:%M:%SZ"), finished, record.files, record.bytes,
        record.bytes_added)


def list_backups(records: Iterable[BackupRecord], out: BinaryIO) -> None:
    for record in records:
        out.write((backup_line(record) + "\n").encode("utf-8", "surrogateescape"))


def list_backup(reader: TreeReader, root: Sequence[ChunkRef], start: bytes, out: BinaryIO,
                simply: bool = False, recursive: bool = True,
                on_damage: Optional[DamageHandler] = None) -> None:
    """One line per entry; as ``tar tvf`` prints, or names only when ``simply``.

    Damage is reported to ``on_damage`` and skipped (see TreeReader.walk)."""
    for path, entry in reader.walk(root, start, recursive=recursive, on_damage=on_damage):
        if entry.flags & FLAG_PARTIAL:
            continue  # a checkpoint's prefix of a file still being read: not a file
        name = quote_name(path) if path else b"."
        if entry.kind == KIND_DIR:
            name += b"/"
        if simply:
            out.write(name + b"\n")
            continue
        owner = b"%s/%s" % (entry.uname or str(entry.uid).encode(),
                            entry.gname or str(entry.gid).encode())
        if entry.kind in (KIND_CHAR, KIND_BLOCK):
            size = b"%d,%d" % (entry.rdev_major, entry.rdev_minor)
        elif entry.kind in (KIND_DIR, KIND_SYMLINK, KIND_HARDLINK):
            size = b"0"
        else:
            size = b"%d" % entry.size
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.mtime_ns // 1_000_000_000))
        line = b"%s %s %s %s %s" % (mode_string(entry).encode(),
                                    owner, size.rjust(max(1, 19 - len(owner) - 1)),
                                    when.encode(), name)
        if entry.kind == KIND_SYMLINK:
            line += b" -> " + quote_name(entry.target)
        elif entry.kind == KIND_HARDLINK:
            line += b" link to " + quote_name(entry.target)
        out.write(line + b"\n")
