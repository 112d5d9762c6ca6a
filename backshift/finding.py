"""``--find``: entries whose path matches a shell pattern, across backups.

A path matches as ``find -path`` matches it: the pattern is a shell glob
(fnmatch, on bytes, so names that are not UTF-8 match too) over the path
with a leading ``/``, and ``*`` may cross ``/``.

Backups of a mostly unchanged tree share most directory records.  A
directory already searched at the same path with the same record (same
digests, or same inline bytes) is not read again: its matches are kept and
reported for the next backup too, so searching 30 such backups costs little
more than searching one.  A big directory that changed a little is stored
as chunks most of which its earlier record had too: what each chunk held
of interest (its matches and subdirectories) is remembered by the chunk's
digest, and only the chunks that changed are read.  Entries are decoded
only when they match or are directories; for the others, the name is all
that is looked at.
"""

import fnmatch
import re
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from .catalog import BackupRecord
from .objectstore import ObjectError
from .records import (FLAG_IMPLICIT, FLAG_INLINE, FLAG_PARTIAL, KIND_DIR, Entry, RecordError,
                      decode_entry)
from .recordscan import RecordPieces, entry_head
from .tree import DamageHandler, TreeReader, join_path, name_problem, split_path

Match = Tuple[bytes, Entry]  # (path relative to the backup's root, entry)
# on_match(backup record, path, entry)
MatchHandler = Callable[[BackupRecord, bytes, Entry], None]
# (path, entry, whether it matches) of an entry that matches or is a directory
Found = Tuple[bytes, Entry, bool]
# What one chunk of a record held of interest, and the reading state after it.
Piece = Tuple[List[Found], Tuple[bool, bytes]]

# Entries that are not shown in a listing (a placeholder, a checkpoint's prefix).
HIDDEN = FLAG_IMPLICIT | FLAG_PARTIAL
# How many remembered entries the chunks of changed directories may hold, in all.
KEEP_FOUND = 1 << 18


def children(reader: TreeReader, path: bytes, directory: Entry,
             on_damage: DamageHandler) -> Iterator[Match]:
    """(path, entry) of one directory's entries, damage reported and skipped.

    A name the format does not allow (tree.name_problem: one that could
    leave its directory) is damage too: no path built from it is shown.
    """
    try:
        for child in reader.dir_entries(directory):
            problem = name_problem(child.name)
            if problem:
                on_damage(path, "entry skipped: %s" % problem)
                continue
            yield join_path(path, child.name), child
    except ObjectError as exc:
        on_damage(path, "directory contents lost: %s (object %s)"
                  % (exc.reason, exc.digest.hex()))
    except RecordError as exc:
        on_damage(path, "directory record does not parse (%s); "
                        "the rest of this directory is lost" % exc)


def start_entries(reader: TreeReader, record: BackupRecord, start: bytes,
                  on_damage: DamageHandler) -> List[Match]:
    """The entries (directory fragments included) at ``start`` in one backup."""
    prefix = b"/".join(split_path(start))
    try:
        return [(prefix, entry) for entry in reader.lookup(record.root or [], start, on_damage)]
    except ObjectError as exc:
        on_damage(prefix, "not searched: %s (object %s)" % (exc.reason, exc.digest.hex()))
    except RecordError as exc:
        on_damage(prefix, "not searched: directory record does not parse (%s)" % exc)
    return []


def shown(entry: Entry) -> bool:
    """Whether an entry is one a listing shows (not a placeholder or a checkpoint's prefix)."""
    return not entry.flags & HIDDEN


class Finder:
    """Searches backups for one pattern, remembering what each directory record held."""

    def __init__(self, reader: TreeReader, pattern: bytes, on_damage: DamageHandler) -> None:
        self.reader = reader
        self.pattern = pattern
        # As fnmatch does for bytes, compiled once: it runs for every entry read.
        self._match = re.compile(fnmatch.translate(pattern.decode("latin-1"))
                                 .encode("latin-1")).match
        self.on_damage = on_damage
        # (path, record key) -> the matches below that directory.
        self._searched: Dict[Tuple[bytes, bytes], List[Match]] = {}
        # (path, chunk digest, reading state before it) -> what the chunk held,
        # for chunks of records of more than one chunk, oldest first.
        self._pieces: Dict[Tuple[bytes, bytes, Tuple[bool, bytes]], Piece] = {}
        self._pieces_found = 0
        self.records_read = 0

    def matches(self, path: bytes) -> bool:
        return self._match(b"/" + path) is not None

    def search(self, record: BackupRecord, start: bytes = b"") -> List[Match]:
        """Every match at or below ``start`` in one backup, parents before children."""
        found: List[Match] = []
        for path, entry in start_entries(self.reader, record, start, self.on_damage):
            if shown(entry) and self.matches(path):
                found.append((path, entry))
            if entry.kind == KIND_DIR:
                found.extend(self._below(path, entry))
        return found

    def _below(self, path: bytes, directory: Entry) -> List[Match]:
        # Depth-first with an explicit stack keeps deep trees off the Python
        # call stack.  A frame: (key, matches so far, children left).
        key = (path, self.reader.directory_key(directory))
        if key in self._searched:
            return self._searched[key]
        top: List[Match] = []
        stack = [(key, top, self._children(path, directory))]
        while stack:
            frame_key, found, pending = stack[-1]
            step = next(pending, None)
            if step is None:
                stack.pop()
                self._searched[frame_key] = found
                if stack:
                    stack[-1][1].extend(found)
                continue
            child_path, child, matched = step
            if matched:
                found.append((child_path, child))
            if child.kind != KIND_DIR:
                continue
            child_key = (child_path, self.reader.directory_key(child))
            if child_key in self._searched:
                found.extend(self._searched[child_key])
            else:
                stack.append((child_key, [], self._children(child_path, child)))
        return top

    def _children(self, path: bytes, directory: Entry) -> Iterator[Found]:
        """The entries of one directory that match or are directories; damage reported."""
        self.records_read += 1
        record = RecordPieces()
        try:
            if directory.flags & FLAG_INLINE:
                yield from self._scan(path, record, directory.inline or b"")
            else:
                remember = len(directory.chunks) > 1
                for digest, _length in directory.chunks:
                    key = (path, digest, record.state)
                    piece = self._pieces.get(key)
                    if piece is None:
                        found = []
                        for item in self._scan(path, record, self.reader.read_chunk(digest)):
                            found.append(item)
                            yield item
                        if remember:
                            self._remember(key, (found, record.state))
                    else:
                        found, record.state = piece
                        yield from found
            record.finish()
        except ObjectError as exc:
            self.on_damage(path, "directory contents lost: %s (object %s)"
                           % (exc.reason, exc.digest.hex()))
        except RecordError as exc:
            self.on_damage(path, "directory record does not parse (%s); "
                                 "the rest of this directory is lost" % exc)

    def _scan(self, path: bytes, record: RecordPieces, piece: bytes) -> Iterator[Found]:
        """The entries a piece of a record completes that match or are directories.

        Only the name of an entry is read unless it matches or is a
        directory: most entries of a big directory are neither."""
        prefix = b"/" + path + b"/" if path else b"/"
        match = self._match
        for buf, offset in record.spans(piece):
            _end, kind, flags, name = entry_head(buf, offset)
            problem = name_problem(name)
            if problem:
                self.on_damage(path, "entry skipped: %s" % problem)
                continue
            matched = not flags & HIDDEN and match(prefix + name) is not None
            if matched or kind == KIND_DIR:
                yield join_path(path, name), decode_entry(buf, offset)[0], matched

    def _remember(self, key: Tuple[bytes, bytes, Tuple[bool, bytes]], piece: Piece) -> None:
        """Keep what a chunk held; forget the oldest chunks past KEEP_FOUND entries."""
        self._pieces[key] = piece
        self._pieces_found += len(piece[0])
        while self._pieces_found > KEEP_FOUND and len(self._pieces) > 1:
            oldest = next(iter(self._pieces))
            self._pieces_found -= len(self._pieces.pop(oldest)[0])


def find(reader: TreeReader, records: Iterable[BackupRecord], pattern: bytes, start: bytes,
         on_match: MatchHandler, on_damage: Optional[DamageHandler] = None) -> Finder:
    """Call ``on_match`` for every match in each backup, backup by backup, in order."""
    finder = Finder(reader, pattern, on_damage or raise_damage)
    for record in records:
        if record.root is None:
            continue  # interrupted before anything was saved
        for path, entry in finder.search(record, start):
            on_match(record, path, entry)
    return finder


def raise_damage(path: bytes, reason: str) -> None:
    """The default damage handler: stop, naming the directory and the reason."""
    raise RecordError("%s: %s" % (path.decode("utf-8", "replace") or "/", reason))
