"""Listing backups and the contents of one backup, for people and for scripts.

Every line format and the JSON encoding of backups and entries are here, so
``--list-backups``, ``--list-backup``, ``--find`` and ``--diff`` agree.
"""

import base64
import datetime
import json
import re
import time
from typing import Any, BinaryIO, Dict, Optional, Sequence, Tuple

from .catalog import BackupRecord
from .records import (FLAG_PARTIAL, FLAG_SPARSE, KIND_BLOCK, KIND_CHAR, KIND_DIR, KIND_FIFO,
                      KIND_FILE, KIND_HARDLINK, KIND_SYMLINK, XATTR_PREFIX, ChunkRef, Entry,
                      mode_string)
from .report import human_bytes, human_duration
from .tree import DamageHandler, TreeReader


# Printable ASCII but the backslash: a name that needs no escape (the common case).
_PLAIN = re.compile(rb"[\x20-\x5b\x5d-\x7e]*").fullmatch


def quote_name(name: bytes) -> bytes:
    """A name safe for one line of output, escaped as GNU tar's default style.

    Control characters and backslashes become C escapes; bytes that are not
    valid UTF-8 become octal escapes; everything else is kept as is.
    """
    if _PLAIN(name):
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


def _time(moment: Optional[datetime.datetime]) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""


def _finished(record: BackupRecord) -> str:
    """When the backup finished, or its state if it did not complete."""
    return _time(record.finished) if record.complete else record.state


def _text(value: str) -> str:
    """A host or subset name made safe for one field of one line."""
    return quote_name(value.encode("utf-8", "surrogateescape")).decode("utf-8", "replace")


BACKUP_HEADER = ("ID", "HOST", "SUBSET", "STARTED", "FINISHED", "FILES", "SIZE", "ADDED")


def backup_fields(record: BackupRecord, human: bool = False) -> Tuple[str, ...]:
    """id, host, subset, start, finish (or state), files, bytes, bytes added (the sizes
    human-sized if ``human``)."""
    size = human_bytes if human else str
    return (record.backup_id, _text(record.hostname), _text(record.subset),
            _time(record.started), _finished(record), str(record.files),
            size(record.bytes), size(record.bytes_added))


def list_backups(records: Sequence[BackupRecord], out: BinaryIO, form: str = "tsv") -> None:
    """One line per backup: ``table`` (header, aligned columns, for a terminal),
    ``tsv`` (tab-separated fields, for scripts), or ``json`` (JSON Lines, every field)."""
    if form == "json":
        for record in records:
            out.write(json_line(json.loads(record.to_json())))
        return
    rows = [backup_fields(record, human=form == "table") for record in records]
    if form == "table":
        rows.insert(0, BACKUP_HEADER)
        widths = [max(len(row[column]) for row in rows) for column in range(len(BACKUP_HEADER))]
        for row in rows:
            cells = [cell.rjust(width) if column >= 5 else cell.ljust(width)
                     for column, (cell, width) in enumerate(zip(row, widths))]
            out.write(("  ".join(cells).rstrip() + "\n").encode("utf-8"))
        return
    for row in rows:
        out.write(("\t".join(row) + "\n").encode("utf-8"))


def backup_totals(record: BackupRecord) -> Dict[str, Any]:
    """What ``--backup --json`` prints of the backup just made."""
    return {"id": record.backup_id, "state": record.state, "files": record.files,
            "bytes": record.bytes, "bytes_read": record.bytes_read,
            "bytes_added": record.bytes_added, "errors": record.errors,
            "seconds": round(_seconds(record), 3)}


def _seconds(record: BackupRecord) -> float:
    end = record.finished or record.updated
    return max(0.0, (end - record.started).total_seconds())


def backup_summary(record: BackupRecord) -> str:
    """The line a backup ends with on a terminal: totals, then the new backup's id."""
    errors = ", %d errors" % record.errors if record.errors else ""
    return "%d files, %s read, %s added, %s elapsed%s; backup %s" % (
        record.files, human_bytes(record.bytes_read), human_bytes(record.bytes_added),
        human_duration(_seconds(record)), errors, record.backup_id)


# Entry kinds as JSON and find name them.
KIND_NAMES = {KIND_FILE: "file", KIND_DIR: "dir", KIND_SYMLINK: "symlink",
              KIND_HARDLINK: "hardlink", KIND_FIFO: "fifo", KIND_CHAR: "char",
              KIND_BLOCK: "block"}


def json_line(document: Dict[str, Any]) -> bytes:
    return (json.dumps(document, sort_keys=True, separators=(",", ":")) + "\n").encode("ascii")


def _put_name(document: Dict[str, Any], key: str, name: bytes) -> None:
    """``key``: the name as text; if it is not UTF-8, also ``key_b64``: its exact bytes.

    In the text, each byte that is not UTF-8 becomes U+FFFD, so every JSON
    reader can show it; the base64 field gives the bytes back exactly.
    """
    try:
        document[key] = name.decode("utf-8")
    except UnicodeDecodeError:
        document[key] = name.decode("utf-8", "replace")
        document[key + "_b64"] = base64.b64encode(name).decode("ascii")


def entry_json(path: bytes, entry: Entry, backup_id: Optional[str] = None) -> Dict[str, Any]:
    """Every field of an entry, for JSON Lines (``--list-backup --json``, ``--find --json``)."""
    document: Dict[str, Any] = {} if backup_id is None else {"backup": backup_id}
    _put_name(document, "path", b"/" + path)
    document.update(type=KIND_NAMES.get(entry.kind, entry.kind.decode("ascii", "replace")),
                    mode="%04o" % entry.mode, uid=entry.uid, gid=entry.gid,
                    size=entry.size, mtime_ns=entry.mtime_ns, ctime_ns=entry.ctime_ns,
                    mtime=_ns_time(entry.mtime_ns), inode=entry.ino, nlink=entry.nlink)
    _put_name(document, "user", entry.uname)
    _put_name(document, "group", entry.gname)
    if entry.kind in (KIND_SYMLINK, KIND_HARDLINK):
        _put_name(document, "target", entry.target)
    if entry.kind in (KIND_CHAR, KIND_BLOCK):
        document.update(rdev_major=entry.rdev_major, rdev_minor=entry.rdev_minor)
    xattrs = {key[len(XATTR_PREFIX):]: value for key, value in entry.extras.items()
              if key.startswith(XATTR_PREFIX)}
    if xattrs:
        # Attribute names are bytes too; values are binary: both as base64.
        document["xattrs_b64"] = {base64.b64encode(name).decode("ascii"):
                                  base64.b64encode(value).decode("ascii")
                                  for name, value in sorted(xattrs.items())}
    if entry.flags & FLAG_SPARSE:
        document["sparse"] = True
    return document


def _ns_time(ns: int) -> str:
    """A time in UTC, to the nanosecond, ISO 8601."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    try:
        moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % fraction


def find_line(backup_id: str, path: bytes, entry: Entry) -> bytes:
    """backup id, type, size, mtime, path: the path last, so no field can shift."""
    size = b"%d,%d" % (entry.rdev_major, entry.rdev_minor) \
        if entry.kind in (KIND_CHAR, KIND_BLOCK) else b"%d" % entry.size
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(entry.mtime_ns // 1_000_000_000))
    return b"%s %s %s %s %s\n" % (backup_id.encode("ascii", "replace"),
                                  KIND_NAMES.get(entry.kind, "?").encode(), size,
                                  when.encode(), shown_name(b"/" + path, entry))


def shown_name(path: bytes, entry: Entry) -> bytes:
    """A path as listings print it: quoted, '.' for the root, '/' after a directory."""
    name = quote_name(path) if path else b"."
    return name + b"/" if entry.kind == KIND_DIR and not name.endswith(b"/") else name


def list_backup(reader: TreeReader, root: Sequence[ChunkRef], start: bytes, out: BinaryIO,
                simply: bool = False, recursive: bool = True, as_json: bool = False,
                on_damage: Optional[DamageHandler] = None) -> None:
    """One line per entry; as ``tar tvf`` prints, names only when ``simply``, or JSON Lines.

    Damage is reported to ``on_damage`` and skipped (see TreeReader.walk)."""
    for path, entry in reader.walk(root, start, recursive=recursive, on_damage=on_damage):
        if entry.flags & FLAG_PARTIAL:
            continue  # a checkpoint's prefix of a file still being read: not a file
        if as_json:
            out.write(json_line(entry_json(path, entry)))
            continue
        name = shown_name(path, entry)
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
