"""Reading a backup's tree of directory records: the one walker every reader uses.

A backup record's ``root`` is the chunk list of a *top record*: a directory
record holding exactly one entry, named ``b""``, for the backup's root
directory.  Each directory entry's chunk list is its own record, or the
record itself is in the entry (INLINE, for small directories).  A
directory may appear in its parent more than once (fragments, when the input
was not in find order); walking merges them.

The walker applies the reader's rules of FORMAT.md ("Reader obligations")
in this one place; restore, listing, check and expiry all walk through it.
"""

from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

from .objectstore import ObjectError, ObjectReader, digest_of
from .records import (FLAG_IMPLICIT, FLAG_INLINE, FLAG_PACKED, FLAG_SPARSE, KIND_DIR, KIND_FILE,
                      KIND_HARDLINK, KINDS, KNOWN_FLAGS, ChunkRef, Entry, RecordError,
                      decode_entry, iter_entries)
from .recordscan import entry_head, entry_length, entry_spans

# on_damage(path, reason): an entry or directory record that breaks the
# format's rules or cannot be read; it, and what lies below it, is skipped.
DamageHandler = Callable[[bytes, str], None]
# A walk's frame: the (path, fragments) of a directory's accepted entries.
_Children = Iterator[Tuple[bytes, List[Entry]]]

# A directory record up to this size is read once for both passes of the
# walk; a larger one is read again rather than held.
KEEP_RECORD = 1 << 20

# What the first pass over a directory decided for each of its entries:
# accepted; a later fragment merged into the first; skipped as damage; a
# byte-for-byte repeat of an earlier entry (a path listed twice in the
# input by an older writer), skipped as harmless.
_ACCEPT, _MERGED, _REJECTED, _REPEATED = 0, 1, 2, 3
_SECOND = "a second entry of this name"


def split_path(path: bytes) -> List[bytes]:
    """Components of a backup path: leading '/' and './' dropped, '.' and '' skipped.

    '..' is refused: a backup path never climbs out of its root.
    """
    components = [part for part in path.split(b"/") if part not in (b"", b".")]
    if b".." in components:
        raise ValueError("path %r contains '..'" % path)
    return components


def join_path(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def name_problem(name: bytes) -> Optional[str]:
    """Why ``name`` cannot name a directory entry (None if it can)."""
    if name and b"/" not in name and b"\0" not in name and name != b"." and name != b"..":
        return None  # the common case, in one test
    if not name:
        return "empty name"
    if name in (b".", b".."):
        return "name %r" % name.decode("ascii")
    if b"/" in name:
        return "name contains '/'"
    if b"\0" in name:
        return "name contains NUL"
    return None


def is_relative_path(path: bytes) -> bool:
    """Is ``path`` valid entry names joined by '/' (so it cannot climb out)?"""
    # Each component of "/path/" lies between two slashes.
    wrapped = b"/" + path + b"/"
    return bool(path) and b"\0" not in path and b"//" not in wrapped \
        and b"/./" not in wrapped and b"/../" not in wrapped


def entry_problem(kind: bytes, flags: int) -> Optional[str]:
    """Why an entry of this kind and flags is not one this version reads (None if it is)."""
    if kind not in KINDS:
        return "unknown entry kind %r" % kind
    if flags & ~KNOWN_FLAGS:
        return "unknown flag bits %#x" % (flags & ~KNOWN_FLAGS)
    if flags & FLAG_INLINE and flags & (FLAG_PACKED | FLAG_SPARSE) \
            or flags & FLAG_PACKED and flags & FLAG_SPARSE:
        return "flags %#x that are never set together" % flags
    return None


# Every (kind, flags) pair a reader accepts.
_READABLE = frozenset((kind, flags) for kind in KINDS for flags in range(256)
                      if entry_problem(kind, flags) is None)


def record_key(chunks: Sequence[ChunkRef]) -> bytes:
    """One short key per distinct directory record (its chunk list)."""
    if len(chunks) == 1:
        return chunks[0][0]
    return digest_of(b"".join(digest for digest, _length in chunks))


def entry_chunks(entry: Entry) -> Sequence[ChunkRef]:
    """The objects an entry names: content, pack or directory record (none if INLINE)."""
    return () if entry.flags & FLAG_INLINE else entry.chunks


def _raise(path: bytes, reason: str) -> None:
    raise RecordError("%s: %s" % (path.decode("utf-8", "replace") or ".", reason))


def _with_metadata(fragments: List[Entry]) -> Entry:
    """A directory's entry: its first fragment that has metadata (not IMPLICIT)."""
    if len(fragments) == 1:
        return fragments[0]
    return next((entry for entry in fragments if not entry.flags & FLAG_IMPLICIT), fragments[0])


class _Directory:
    """One directory open in a strict walk: its fragments, and the two passes over them.

    Records are read chunk by chunk, twice: the first pass keeps an 8-byte
    hash per name in a set while it runs (about 60 bytes an entry), then
    one byte per entry is left; the second pass yields the entries.
    """

    __slots__ = ("reader", "path", "fragments", "kept", "counts", "verdicts", "merges", "rejected")

    def __init__(self, reader: "TreeReader", path: bytes, fragments: List[Entry]) -> None:
        self.reader = reader  # reads the chunks, and may look ahead (pipeline.py)
        self.path = path
        self.fragments = fragments
        # The chunks of each small record, read once for both passes.
        self.kept: List[Optional[List[bytes]]] = [None] * len(fragments)
        self.counts: List[int] = []  # entries the first pass read of each fragment
        self.verdicts = bytearray()
        # Entry index of a directory -> the later fragments merged into it.
        self.merges: Dict[int, List[Entry]] = {}
        self.rejected: Dict[int, Tuple[bytes, str]] = {}  # entry index -> (name, why)

    def _spans(self, number: int) -> Iterator[Tuple[bytes, int]]:
        """(buffer, offset) of each entry of a fragment's record, read chunk by chunk.

        A record of up to KEEP_RECORD bytes is read once and kept for the
        second pass; a larger one is read again."""
        fragment = self.fragments[number]
        if fragment.flags & FLAG_INLINE:
            return entry_spans([fragment.inline or b""])
        kept = self.kept[number]
        if kept is not None:
            self.kept[number] = None  # the second pass: its last use
            return entry_spans(kept)
        if sum(length for _digest, length in fragment.chunks) <= KEEP_RECORD:
            kept = [self.reader.read_chunk(digest) for digest, _length in fragment.chunks]
            self.kept[number] = kept
            return entry_spans(kept)
        return entry_spans(self.reader.read_chunk(digest) for digest, _length in fragment.chunks)

    def judge(self, report: DamageHandler, top: bool) -> None:
        """The first pass: which entries are accepted, merged into another, or rejected."""
        names: Set[int] = set()          # hashes of the names of accepted non-directories
        directories: Dict[int, int] = {}  # name hash -> entry index, of accepted directories
        repeats: Set[int] = set()         # indexes of later entries of a name already used
        index = 0
        for number in range(len(self.fragments)):
            count = 0
            try:
                for buf, offset in self._spans(number):
                    _end, kind, flags, name = entry_head(buf, offset)
                    if top:
                        problem = _top_problem(name, kind, flags)
                    elif (kind, flags) in _READABLE and name and b"/" not in name \
                            and b"\0" not in name and name != b"." and name != b"..":
                        problem = None  # the common case, tested at once
                    else:
                        problem = name_problem(name) or entry_problem(kind, flags)
                    key = hash(name)
                    verdict = _ACCEPT
                    if problem is not None:
                        verdict = _REJECTED
                    elif key in directories:
                        if kind == KIND_DIR:
                            verdict, problem = self._merge(directories[key], buf, offset)
                        else:
                            verdict, problem = _REJECTED, _SECOND
                    elif key in names:
                        verdict = _REPEATED  # or rejected: _repeats decides
                        repeats.add(index)
                    elif kind == KIND_DIR:
                        directories[key] = index
                        if self.reader.looks_ahead and not flags & FLAG_INLINE:
                            self._hint(buf, offset)
                    else:
                        names.add(key)
                    if problem is not None:
                        self.rejected[index] = (name, problem)
                    self.verdicts.append(verdict)
                    index += 1
                    count += 1
            except (ObjectError, RecordError) as exc:
                report(self.path, "%s: %s" % ("the rest of this directory is lost" if count
                                                    else "directory contents lost", _reason(exc)))
            self.counts.append(count)
        if repeats:
            self._repeats(repeats)

    def _merge(self, first: int, buf: bytes, offset: int) -> Tuple[int, Optional[str]]:
        """Keep a later fragment of directory entry ``first``; its verdict and problem."""
        try:
            self.merges.setdefault(first, []).append(decode_entry(buf, offset)[0])
        except RecordError as exc:
            return _REJECTED, "a fragment that does not parse: %s" % exc
        return _MERGED, None

    def _hint(self, buf: bytes, offset: int) -> None:
        try:
            self.reader.will_read(decode_entry(buf, offset)[0])
        except RecordError:
            pass  # reported when the second pass reaches it

    def _repeats(self, repeats: Set[int]) -> None:
        """Which later non-directories of a name already used are exact repeats (harmless).

        Only a directory with repeated names pays for this second look.
        """
        wanted: Set[bytes] = set()
        for index, buf, offset in self._judged():
            if index in repeats:
                wanted.add(entry_head(buf, offset)[3])
        first: Dict[bytes, bytes] = {}  # repeated name -> its first accepted entry's bytes
        for index, buf, offset in self._judged():
            name = entry_head(buf, offset)[3]
            if name in wanted and self.verdicts[index] != _REJECTED:
                encoded = buf[offset:offset + entry_length(buf, offset)]
                if first.setdefault(name, encoded) != encoded and index in repeats:
                    self.verdicts[index] = _REJECTED
                    self.rejected[index] = (name, _SECOND)

    def _judged(self, report: Optional[DamageHandler] = None) -> Iterator[Tuple[int, bytes, int]]:
        """(index, buffer, offset) of each entry the first pass read, reading the records again."""
        index = 0
        for number, count in enumerate(self.counts):
            start = index
            if not count:
                continue
            try:
                for buf, offset in self._spans(number):
                    if index == start + count:
                        break
                    yield index, buf, offset
                    index += 1
            except (ObjectError, RecordError) as exc:
                # Past the entries the first pass read it was reported then;
                # before them, the record changed since (a vanished object).
                if report is not None and index < start + count:
                    report(self.path, "directory contents lost: %s" % _reason(exc))
            index = start + count

    def accepted(self, report: Optional[DamageHandler]) -> _Children:
        """The second pass: (path, fragments) of each accepted entry, in stored order."""
        for index, buf, offset in self._judged(report):
            verdict = self.verdicts[index]
            if verdict == _ACCEPT:
                try:
                    entry = decode_entry(buf, offset)[0]
                except RecordError as exc:
                    if report is not None:
                        report(self.path, "an entry does not parse: %s" % exc)
                    continue
                path = join_path(self.path, entry.name)
                if entry.kind == KIND_HARDLINK:
                    _check_link(path, entry, report)
                yield path, [entry] + self.merges.get(index, [])
            elif verdict == _REJECTED and report is not None:
                name, problem = self.rejected[index]
                # An empty name is shown as the directory's path with a '/'.
                report(join_path(self.path, name) if name
                       else (self.path or b".") + b"/", problem)


class TreeReader:
    """Walks the directory records of one save directory's objects."""

    # Does will_read do anything?  (Spares the first pass decoding entries.)
    looks_ahead = False

    def __init__(self, objects: ObjectReader) -> None:
        self.objects = objects

    def read_chunk(self, digest: bytes) -> bytes:
        """One object of a directory record (a hook for readers that watch failures)."""
        return self.objects.get(digest)

    def read_record(self, chunks: Sequence[ChunkRef]) -> bytes:
        return b"".join(self.read_chunk(digest) for digest, _length in chunks)

    def entries(self, chunks: Sequence[ChunkRef]) -> Iterator[Entry]:
        return iter_entries(self.read_record(chunks))

    def dir_entries(self, directory: Entry) -> Iterator[Entry]:
        """Entries of one fragment, whose record is inline in its entry or in chunks."""
        if directory.flags & FLAG_INLINE:
            return iter_entries(directory.inline or b"")
        return self.entries(directory.chunks)

    @staticmethod
    def directory_key(directory: Entry) -> bytes:
        """What identifies a directory's record, inline or not: the same key, the same
        entries.  Lets find and diff skip a record already seen without reading it."""
        if directory.flags & FLAG_INLINE:
            return b"i" + digest_of(directory.inline or b"")
        return b"c" + record_key(directory.chunks)

    def will_read(self, directory: Entry) -> None:
        """A hook: ``directory``'s record is about to be wanted (see ``looks_ahead``)."""

    def root_entries(self, root: Sequence[ChunkRef]) -> List[Entry]:
        """The root directory entry (normally one) of a backup's top record."""
        return [entry for entry in self.entries(root) if entry.name == b""]

    def lookup(self, root: Sequence[ChunkRef], path: bytes,
               on_damage: Optional[DamageHandler] = None) -> List[Entry]:
        """The entry at ``path`` (every fragment, for a directory); [] if there is none.

        Found by the walk's rules; a record on the way that cannot be read
        raises, or is reported to ``on_damage``.
        """
        report = on_damage or _raise
        current = self._root(root, report)
        for name in split_path(path):
            if not current or current[0].kind != KIND_DIR:
                return []
            directory = self._open(b"", current, report, None)
            current = next((fragments for child, fragments in directory.accepted(None)
                            if fragments[0].name == name), []) if directory else []
        return current

    def walk(self, root: Sequence[ChunkRef], start: bytes = b"",
             include_implicit: bool = False, recursive: bool = True,
             on_damage: Optional[DamageHandler] = None, strict: bool = True,
             seen: Optional[Set[bytes]] = None) -> Iterator[Tuple[bytes, Entry]]:
        """(path, entry) pairs at and below ``start``, parents first.

        Paths are relative, without a leading '/'; the backup's root itself
        has the path b"".  A directory's fragments are merged: it is yielded
        once, where it first appears, with the metadata of its first
        fragment that has any, and the entries of all its fragments follow
        in stored order.  Directories never named in the input (IMPLICIT)
        are skipped unless ``include_implicit``.  Not ``recursive``: only
        ``start`` and, if it is a directory, its immediate entries.

        ``strict`` (restore, listing, check) applies the reader's rules: an
        entry with a bad name, a name its directory already holds, an
        unknown kind or unknown flag bits is damage, skipped with its
        subtree.  Not ``strict`` (expiry's marking) yields every entry of
        every record as it comes, fragments unmerged, so that every object
        a record names is found whatever the rules say of its entry.

        With ``seen``, a directory whose record key is in it is yielded but
        not entered (its subtree was walked already); keys are added as
        directories are entered.  Inline records have no key of their own.

        Damage raises RecordError or ObjectError, or with ``on_damage`` is
        reported as ``on_damage(path, reason)`` and the walk goes on with
        the rest of the tree.
        """
        report = on_damage or _raise
        prefix = b"/".join(split_path(start))
        fragments = self.lookup(root, prefix, report) if prefix else self._root(root, report,
                                                                                  strict)
        if not fragments:
            return
        if not strict:
            for entry in fragments:
                yield from self._walk_loose(prefix, entry, include_implicit, recursive, report,
                                            seen)
            return
        entry = _with_metadata(fragments)
        if include_implicit or not entry.flags & FLAG_IMPLICIT:
            yield prefix, entry
        if entry.kind != KIND_DIR:
            return
        # Depth-first with an explicit stack keeps deep trees off the Python
        # call stack.
        stack: List[_Children] = []
        self._enter(stack, prefix, fragments, report, seen)
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                continue
            path, fragments = child
            entry = _with_metadata(fragments)
            if include_implicit or not entry.flags & FLAG_IMPLICIT:
                yield path, entry
            if entry.kind == KIND_DIR and recursive:
                self._enter(stack, path, fragments, report, seen)

    # -- the strict walk ------------------------------------------------------

    def _root(self, root: Sequence[ChunkRef], report: DamageHandler,
              strict: bool = True) -> List[Entry]:
        """The root directory's fragments (every entry of the top record, not ``strict``)."""
        if not strict:
            try:
                return list(self.entries(root))
            except (ObjectError, RecordError) as exc:
                report(b"", "the top record cannot be read: %s" % _reason(exc))
                return []
        top = self._open(b"", [Entry(b"", KIND_DIR, chunks=list(root))], report, None, top=True)
        return next((fragments for _path, fragments in top.accepted(report)), []) \
            if top else []

    def _enter(self, stack: List[_Children], path: bytes, fragments: List[Entry],
               report: DamageHandler, seen: Optional[Set[bytes]]) -> None:
        directory = self._open(path, fragments, report, seen)
        if directory is not None:
            stack.append(directory.accepted(report))

    def _open(self, path: bytes, fragments: List[Entry], report: DamageHandler,
              seen: Optional[Set[bytes]], top: bool = False) -> Optional[_Directory]:
        """Judge a directory's entries (the first pass); None if ``seen`` has it."""
        if seen is not None and not any(entry.flags & FLAG_INLINE for entry in fragments):
            key = record_key([chunk for entry in fragments for chunk in entry.chunks])
            if key in seen:
                return None
            seen.add(key)
        directory = _Directory(self, path, fragments)
        directory.judge(report, top)
        return directory

    # -- the loose walk (expiry's marking) -------------------------------------

    def _walk_loose(self, path: bytes, entry: Entry, include_implicit: bool, recursive: bool,
                    report: DamageHandler,
                    seen: Optional[Set[bytes]]) -> Iterator[Tuple[bytes, Entry]]:
        if include_implicit or not entry.flags & FLAG_IMPLICIT:
            yield path, entry
        if entry.kind != KIND_DIR:
            return
        stack: List[Tuple[bytes, Iterator[Entry]]] = []
        self._push_loose(stack, path, entry, report, seen)
        while stack:
            parent, children = stack[-1]
            try:
                child: Optional[Entry] = next(children, None)
            except RecordError as exc:
                report(parent, "directory record does not parse (%s); "
                               "the rest of this directory is lost" % exc)
                child = None
            if child is None:
                stack.pop()
                continue
            child_path = join_path(parent, child.name)
            if include_implicit or not child.flags & FLAG_IMPLICIT:
                yield child_path, child
            if child.kind == KIND_DIR and recursive:
                self._push_loose(stack, child_path, child, report, seen)

    def _push_loose(self, stack: List[Tuple[bytes, Iterator[Entry]]], path: bytes,
                    directory: Entry, report: DamageHandler,
                    seen: Optional[Set[bytes]]) -> None:
        if seen is not None and not directory.flags & FLAG_INLINE:
            key = record_key(directory.chunks)
            if key in seen:
                return
            seen.add(key)
        try:
            stack.append((path, self.dir_entries(directory)))
        except (ObjectError, RecordError) as exc:
            report(path, "directory contents lost: %s" % _reason(exc))


def _check_link(path: bytes, entry: Entry, report: Optional[DamageHandler]) -> None:
    """A hard link whose target could lie outside the backup becomes the regular file
    it also holds (a hard link entry carries its content)."""
    if entry.kind == KIND_HARDLINK and not is_relative_path(entry.target):
        if report is not None:
            report(path, "hard link target %s is not a path within the backup; taken as a "
                         "regular file" % entry.target.decode("utf-8", "replace"))
        entry.kind = KIND_FILE
        entry.target = b""


def _top_problem(name: bytes, kind: bytes, flags: int) -> Optional[str]:
    if name != b"":
        return "the top record holds an entry not named \"\""
    if kind != KIND_DIR:
        return "the root is not a directory"
    return entry_problem(kind, flags)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ObjectError):
        return "%s (object %s)" % (exc.reason, exc.digest.hex())
    return "directory record does not parse (%s)" % exc
