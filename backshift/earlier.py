"""What earlier backups saved, and whether it still describes a file.

A backup reuses what earlier backups of the same host and subset stored
for a file whose metadata says it has not changed since.  ``unchanged`` is
the one place that decides it (as restic's ``fileChanged`` does for restic);
``PreviousDir`` finds, by name, the earlier entries to ask it about.

A re-backup of an unchanged tree asks it once per file, so the common case
has a fast form: ``EarlierCursor`` reads a directory's earlier record in
step with the input and applies ``unchanged`` and ``same_entry`` to the
stored bytes in place, field by field, without decoding the entry
(tests/test_rebackup.py checks that both forms decide alike).
"""

import os
import stat
import struct
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .catalog import BackupRecord
from .records import (CHUNKREF_SIZE, ENTRY_MIN, FIELD_LENGTH, FIXED_AND_NAME_LENGTH, FLAG_IMPLICIT,
                      FLAG_INLINE, FLAG_PACKED, FLAG_PARTIAL, KIND_DIR, KIND_FILE, KIND_HARDLINK,
                      KIND_SYMLINK, LENGTH_AND_NAME_LENGTH, LENGTH_KIND_FLAGS, NAME_AT,
                      PACKREF_SIZE, ChunkRef, Entry, RecordError, check_record_header,
                      decode_entry)
from .recordindex import CHUNKS_AHEAD, LARGE_RECORD, RecordIndex, read_ahead
from .recordscan import RawEntry, scan_entries
from .tree import TreeReader

# An entry of an earlier backup, with that backup's start time (ns since
# the epoch): whether the entry can be trusted depends on when it was read.
Earlier = Tuple[Entry, int]
RawEarlier = Tuple[RawEntry, int]
Prefetch = Callable[[List[ChunkRef]], None]

# The kinds (a record's kind byte) an earlier entry may have for a file of each type.
_KINDS = {stat.S_IFREG: (KIND_FILE[0], KIND_HARDLINK[0]), stat.S_IFLNK: (KIND_SYMLINK[0],),
          stat.S_IFDIR: (KIND_DIR[0],)}


def unchanged(earlier: Union[Entry, RawEntry], st: os.stat_result, started_ns: int,
              inode_check: bool, settle_ns: int) -> bool:
    """Does ``earlier`` (saved by a backup begun at ``started_ns``) still describe ``st``?

    ``unchanged_fields`` on the entry's fields.
    """
    return unchanged_fields(earlier.kind[0], earlier.mtime_ns, earlier.ctime_ns, earlier.ino,
                            earlier.size, st, started_ns - settle_ns, inode_check)


def unchanged_fields(kind: int, mtime_ns: int, ctime_ns: int, ino: int, size: int,
                     st: os.stat_result, limit_ns: int, inode_check: bool) -> bool:
    """The one decision whether an earlier entry still describes the file ``st``,
    given the entry's stored fields (``kind`` is its kind byte).

    Its kind fits the file's type; its mtime, ctime, inode (unless
    ``inode_check`` is off: FUSE and some network file systems renumber)
    and, for a regular file, size are the file's; and the file was last
    changed before ``limit_ns``: the earlier backup's start less the settle
    time.  That backup read it after it started, and a change in the same
    timestamp tick after the read would leave size and times as they were.
    Changing content, extended attributes or owners changes the ctime, so
    this covers them.  Called once per file on a re-backup (by
    EarlierCursor on the stored bytes): cheapest tests first.
    """
    if mtime_ns != st.st_mtime_ns or ctime_ns != st.st_ctime_ns:
        return False
    if inode_check and ino != st.st_ino:
        return False
    mode = st.st_mode
    if kind not in _KINDS.get(stat.S_IFMT(mode), ()):
        return False
    if stat.S_ISREG(mode) and size != st.st_size:
        return False
    return mtime_ns < limit_ns and ctime_ns < limit_ns


def same_entry(earlier: RawEntry, st: os.stat_result, owners: Callable[[int, int], bytes]) -> bool:
    """Would the entry made now for ``st`` be ``earlier``'s bytes, given ``unchanged``?

    For a regular file or symlink of one link whose mode, owners and
    symlink target length are also the same, the earlier entry's bytes are
    reused whole (the fast path of a re-backup); ``owners(uid, gid)`` gives
    the encoded names an entry of this backup gets.
    """
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if earlier.kind != KIND_FILE:
            return False
    elif earlier.kind != KIND_SYMLINK or earlier.target_length() != st.st_size:
        return False
    return (earlier.mode == stat.S_IMODE(mode) and earlier.nlink == 1 == st.st_nlink
            and earlier.uid == st.st_uid and earlier.gid == st.st_gid
            and earlier.has_owners(owners(st.st_uid, st.st_gid)))


class ReuseRule:
    """What ``unchanged`` and ``same_entry`` are given, the same for a whole backup."""

    __slots__ = ("inode_check", "settle_ns", "owners")

    def __init__(self, inode_check: bool, settle_ns: int,
                 owners: Callable[[int, int], bytes]) -> None:
        self.inode_check = inode_check
        self.settle_ns = settle_ns
        self.owners = owners


# A reusable entry as EarlierCursor.reuse finds it: (start, end) of its
# bytes in the cursor's record, whether it is a regular file, its size,
# and the digests of the objects it names.
Reusable = Tuple[int, int, bool, int, Sequence[bytes]]
# Entries looked at past the cursor for a name not found at it (files
# deleted since, or entries of subdirectories the input skipped).
LOOKAHEAD = 16
# Bytes of a large record held past the cursor (more if an entry is longer).
STREAM_AHEAD = 64 * 1024
_NOT_REUSED = FLAG_PARTIAL | FLAG_IMPLICIT
_FILE, _SYMLINK, _DIR = KIND_FILE[0], KIND_SYMLINK[0], KIND_DIR[0]
_PERMISSIONS = 0o7777
_S_IFREG, _S_IFLNK = stat.S_IFREG, stat.S_IFLNK
_TWO_LENGTHS = struct.Struct("<II")


class EarlierCursor:
    """A directory's earlier record, walked in step with the input.

    ``find`` lists a directory's entries in the order the file system
    gives them, the order the earlier backup stored them in, so the entry a
    path looks for is nearly always the next one.  ``reuse`` finds it at the
    cursor (or a few entries on) and decides on the stored bytes whether
    the entry can be reused whole; ``take_dir`` finds a subdirectory being
    entered.  Either moves the cursor past what it found.  A name not found
    near the cursor is left to PreviousDir's index.

    A record given ``whole`` is held as one buffer (``record``); a large
    one comes in pieces (its chunks) and only the current stretch is held,
    so memory stays bounded whatever the directory's size.  Either way the
    records of the subdirectories it lists are asked for (``prefetch``) as
    it is read.
    """

    __slots__ = ("fragment", "record", "pos", "whole", "_pieces", "_scanned", "_prefetch",
                 "_limit", "_inode_check", "_owners", "_uid", "_gid", "_owned")

    def __init__(self, fragment: Entry, pieces: Iterator[bytes], whole: bool, started: int,
                 rule: ReuseRule, prefetch: Prefetch) -> None:
        self.fragment = fragment  # the earlier directory entry whose record this is
        self.whole = whole
        self._pieces: Optional[Iterator[bytes]] = None if whole else pieces
        self.record = next(pieces, b"")
        self.pos = self._scanned = check_record_header(self.record)
        self._prefetch = prefetch
        # unchanged_fields(): both times before that backup began, less the settle time.
        self._limit = started - rule.settle_ns
        self._inode_check = rule.inode_check
        self._owners = rule.owners
        self._uid, self._gid, self._owned = -1, -1, b""  # the last owners asked for
        self._scan()
        self._fill()

    def _fill(self) -> None:
        """Hold at least STREAM_AHEAD bytes, and the whole entry, past the cursor."""
        while self._pieces is not None:
            record, pos = self.record, self.pos
            want = STREAM_AHEAD
            if len(record) - pos >= FIELD_LENGTH.size:
                want = max(want, FIELD_LENGTH.unpack_from(record, pos)[0])
            if len(record) - pos >= want:
                return
            piece = next(self._pieces, None)
            if piece is None:
                self._pieces = None
                return
            self.record = record[pos:] + piece
            self._scanned -= pos
            self.pos = 0
            self._scan()

    def _scan(self) -> None:
        """Ask for the first chunks of the records of the subdirectories read so far."""
        record = self.record
        pos = self._scanned
        while pos + LENGTH_KIND_FLAGS.size <= len(record):
            total, kind, flags = LENGTH_KIND_FLAGS.unpack_from(record, pos)
            if total < ENTRY_MIN:
                pos = len(record)  # damaged: for the readers of the record to report
                break
            if pos + total > len(record):
                break  # straddles into the next piece
            if kind == _DIR and not flags & FLAG_INLINE:
                try:
                    self._prefetch(decode_entry(record, pos)[0].chunks[:CHUNKS_AHEAD])
                except RecordError:
                    pass  # as above
            pos += total
        self._scanned = pos

    def _find(self, name: bytes) -> int:
        """Offset of the entry ``name`` at or a little after the cursor; -1 if none."""
        record = self.record
        pos = self.pos
        size = len(name)
        for _ in range(LOOKAHEAD):
            if pos + NAME_AT > len(record):
                return -1
            total, name_length = LENGTH_AND_NAME_LENGTH.unpack_from(record, pos)
            if name_length == size and record.startswith(name, pos + NAME_AT):
                return pos
            if total < ENTRY_MIN:
                return -1  # damaged: what follows cannot be found
            pos += total
        return -1

    def reuse(self, name: bytes, st: os.stat_result) -> Optional[Reusable]:
        """The entry ``name`` if ``unchanged`` and ``same_entry`` say its bytes describe
        ``st`` (a regular file or symlink); None if not, or not found near the cursor."""
        if self._pieces is not None:
            self._fill()
        record = self.record
        start = self.pos
        try:
            (total, kind, flags, _reserved, mode, uid, gid, mtime_ns, ctime_ns, ino, size, nlink,
             _major, _minor, name_length) = FIXED_AND_NAME_LENGTH.unpack_from(record, start)
            if name_length != len(name) or not record.startswith(name, start + NAME_AT):
                start = self._find(name)
                if start < 0:
                    return None
                (total, kind, flags, _reserved, mode, uid, gid, mtime_ns, ctime_ns, ino, size,
                 nlink, _major, _minor, name_length) = \
                    FIXED_AND_NAME_LENGTH.unpack_from(record, start)
            end = start + total
            if total < ENTRY_MIN or end > len(record):
                return None  # damaged: the index's RawEntry will say so
            self.pos = end  # this name's entry is behind the cursor, reused or not
            if not unchanged_fields(kind, mtime_ns, ctime_ns, ino, size, st, self._limit,
                                    self._inode_check):
                return None
            # same_entry(), on the stored fields.
            if (flags & _NOT_REUSED or nlink != 1 or st.st_nlink != 1
                    or uid != st.st_uid or gid != st.st_gid or mode & ~_PERMISSIONS):
                return None
            if kind == _FILE:
                if st.st_mode != _S_IFREG | mode or size != st.st_size:
                    return None
            elif kind != _SYMLINK or st.st_mode != _S_IFLNK | mode:
                return None
            if uid != self._uid or gid != self._gid:  # nearly always as the last entry's
                self._uid, self._gid = uid, gid
                self._owned = self._owners(uid, gid)
            owners = self._owned
            at = start + NAME_AT + name_length
            if not record.startswith(owners, at):
                return None
            at += len(owners)
            # The target's length and, if it is empty (a regular file), the data's.
            target_length, data_length = _TWO_LENGTHS.unpack_from(record, at)
            if kind == _SYMLINK and target_length != st.st_size:
                return None
            if target_length:
                at += target_length
                (data_length,) = FIELD_LENGTH.unpack_from(record, at + FIELD_LENGTH.size)
        except struct.error:  # past the end of the record: the name is not there
            return None
        at += _TWO_LENGTHS.size
        data_end = at + data_length
        if data_end + FIELD_LENGTH.size > end:
            return None  # damaged, as above
        if flags & FLAG_INLINE:
            return start, end, kind == _FILE, size, ()
        if flags & FLAG_PACKED:
            if data_length != PACKREF_SIZE:
                return None
            return start, end, kind == _FILE, size, (record[at + 4:at + 36],)
        if data_length % CHUNKREF_SIZE:
            return None
        return start, end, kind == _FILE, size, [record[item:item + 32] for item in
                                                 range(at, data_end, CHUNKREF_SIZE)]

    def take_dir(self, name: bytes) -> Optional[Entry]:
        """The subdirectory ``name``'s entry, if found at or near the cursor."""
        if self._pieces is not None:
            self._fill()
        start = self._find(name)
        if start < 0:
            return None
        try:
            entry, end = decode_entry(self.record, start)
        except RecordError:
            return None
        self.pos = end
        return entry if entry.kind == KIND_DIR else None


def started_ns(record: BackupRecord) -> int:
    """When a backup began, in ns since the epoch."""
    return int(record.started.timestamp()) * 1_000_000_000 + record.started.microsecond * 1000


def choose_previous(records: Sequence[BackupRecord], hostname: str,
                    subset: str) -> List[BackupRecord]:
    """Earlier backups of this host and subset to reuse files from.

    As the seed's program did: the most recent, the most recent complete,
    and the largest complete one.
    """
    mine = [record for record in records
            if record.hostname == hostname and record.subset == subset
            and record.root is not None]
    chosen: List[BackupRecord] = []
    complete = [record for record in mine if record.complete]
    candidates = [mine[-1] if mine else None, complete[-1] if complete else None,
                  max(complete, key=lambda r: r.files) if complete else None]
    for candidate in candidates:
        if candidate is not None and candidate not in chosen:
            chosen.append(candidate)
    return chosen


class PreviousDir:
    """What earlier backups stored in one directory, by name, for reuse.

    Entries are kept as RawEntry: most are only compared and then copied
    as they were; decoding waits until one is needed as an Entry.  With a
    ReuseRule, the first earlier record (unless large) is also walked by an
    EarlierCursor, and the index by name is only built if a name is not
    found near it.
    """

    def __init__(self, reader: TreeReader, fragments: List[Earlier],
                 prefetch: Prefetch = lambda chunks: None,
                 rule: Optional[ReuseRule] = None) -> None:
        self._reader = reader
        self.fragments = fragments  # this directory's own entries in earlier backups
        self._prefetch = prefetch
        self._rule = rule
        self._index: Optional[Dict[bytes, List[RawEarlier]]] = None
        # Large records are indexed compactly instead (recordindex.py).
        self._large: List[Tuple[RecordIndex, int]] = []
        self.cursor = self._cursor(rule) if rule is not None and fragments else None
        # Do all the fragments hold the same record as the first?  Then what
        # the cursor finds is all there is to find.
        self._one_record = len(fragments) == 1 or \
            len({_record_key(entry) for entry, _started in fragments}) == 1

    def _cursor(self, rule: ReuseRule) -> Optional[EarlierCursor]:
        first, started = self.fragments[0]
        try:
            if first.flags & FLAG_INLINE:
                pieces, whole = iter([first.inline or b""]), True
            elif sum(length for _digest, length in first.chunks) < LARGE_RECORD:
                pieces, whole = iter([self._reader.read_record(first.chunks)]), True
            else:
                pieces, whole = read_ahead(self._reader.read_chunk, first.chunks,
                                           self._prefetch), False
            return EarlierCursor(first, pieces, whole, started, rule, self._prefetch)
        except Exception:  # a damaged earlier backup only costs us re-reading
            return None

    @classmethod
    def of_root(cls, reader: TreeReader, records: Sequence[BackupRecord],
                prefetch: Prefetch, rule: Optional[ReuseRule] = None) -> Optional["PreviousDir"]:
        """The root directory as the earlier backups ``records`` stored it."""
        fragments: List[Earlier] = []
        for record in records:
            try:
                fragments.extend((entry, started_ns(record))
                                 for entry in reader.root_entries(record.root or []))
            except Exception:  # a damaged earlier backup only costs us re-reading
                continue
        return cls(reader, fragments, prefetch, rule) if fragments else None

    def child(self, name: bytes) -> Optional["PreviousDir"]:
        """The subdirectory ``name`` as earlier backups stored it, if they did."""
        cursor = self.cursor
        if cursor is not None:
            entry = cursor.take_dir(name)
            if entry is not None and self._one_record:
                return PreviousDir(self._reader, [(entry, self.fragments[0][1])],
                                   self._prefetch, self._rule)
        fragments = [(entry, started) for entry, started in self.get(name)
                     if entry.kind == KIND_DIR]
        return PreviousDir(self._reader, fragments, self._prefetch, self._rule) \
            if fragments else None

    def raw(self, name: bytes) -> List[RawEarlier]:
        """Earlier entries named ``name``, with their backups' start times."""
        if self._index is None:
            self._index = self._load()
        found = self._index.get(name, [])
        if self._large:
            found = found + [(entry, started) for index, started in self._large
                             for entry in index.find(name)]
        return found

    def get(self, name: bytes) -> List[Earlier]:
        """The same, decoded (entries that do not decode are left out)."""
        found = []
        for raw, started in self.raw(name):
            try:
                found.append((raw.decode(), started))
            except RecordError:
                continue
        return found

    def _load(self) -> Dict[bytes, List[RawEarlier]]:
        index: Dict[bytes, List[RawEarlier]] = {}
        seen = set()
        for number, (fragment, started) in enumerate(self.fragments):
            key = _record_key(fragment)
            if key in seen:
                continue  # the same record in two earlier backups: index it once
            seen.add(key)
            try:
                inline = fragment.flags & FLAG_INLINE
                if not inline and sum(length for _, length in fragment.chunks) >= LARGE_RECORD:
                    self._large.append((RecordIndex(self._reader.objects.get, fragment.chunks,
                                                    self._prefetch), started))
                    continue
                walked = number == 0 and self.cursor is not None and self.cursor.whole
                if walked:
                    record = self.cursor.record  # type: ignore[union-attr]
                else:
                    record = (fragment.inline or b"") if inline else \
                        self._reader.read_record(fragment.chunks)
                entries = list(scan_entries(record))
                for entry in entries:
                    if entry.kind == KIND_DIR and not walked:  # needed soon, in find order
                        self._prefetch(entry.decode().chunks[:CHUNKS_AHEAD])
            except Exception:  # a damaged earlier backup only costs us re-reading
                continue
            for entry in entries:
                index.setdefault(entry.name, []).append((entry, started))
        return index


def _record_key(fragment: Entry) -> object:
    """What tells one earlier record of a directory from another."""
    return fragment.inline if fragment.flags & FLAG_INLINE else tuple(fragment.chunks)
