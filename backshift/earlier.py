"""What earlier backups saved, and whether it still describes a file.

A backup reuses what earlier backups of the same host and subset stored
for a file whose metadata says it has not changed since.  ``unchanged`` is
the one place that decides it (as restic's ``fileChanged`` does for restic);
``PreviousDir`` finds, by name, the earlier entries to ask it about.
"""

import os
import stat
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from .catalog import BackupRecord
from .records import (FLAG_INLINE, KIND_DIR, KIND_FILE, KIND_HARDLINK, KIND_SYMLINK, ChunkRef,
                      Entry, RawEntry, RecordError, scan_entries)
from .recordindex import CHUNKS_AHEAD, LARGE_RECORD, RecordIndex
from .tree import TreeReader

# An entry of an earlier backup, with that backup's start time (ns since
# the epoch): whether the entry can be trusted depends on when it was read.
Earlier = Tuple[Entry, int]
RawEarlier = Tuple[RawEntry, int]
Prefetch = Callable[[List[ChunkRef]], None]

# The kinds an earlier entry may have for a file of each type.
_KINDS = {stat.S_IFREG: (KIND_FILE, KIND_HARDLINK), stat.S_IFLNK: (KIND_SYMLINK,),
          stat.S_IFDIR: (KIND_DIR,)}


def unchanged(earlier: Union[Entry, RawEntry], st: os.stat_result, started_ns: int,
              inode_check: bool, settle_ns: int) -> bool:
    """Does ``earlier`` (saved by a backup begun at ``started_ns``) still describe ``st``?

    Its kind fits the file's type; its mtime, ctime, inode (unless
    ``inode_check`` is off: FUSE and some network file systems renumber)
    and, for a regular file, size are the file's; and the file was last
    changed more than ``settle_ns`` before that backup began: that backup
    read it after it started, and a change in the same timestamp tick after
    the read would leave size and times as they were.  Changing content,
    extended attributes or owners changes the ctime, so this covers them.
    Called once per file on a re-backup: cheapest tests first.
    """
    if earlier.mtime_ns != st.st_mtime_ns or earlier.ctime_ns != st.st_ctime_ns:
        return False
    if inode_check and earlier.ino != st.st_ino:
        return False
    mode = st.st_mode
    if earlier.kind not in _KINDS.get(stat.S_IFMT(mode), ()):
        return False
    if stat.S_ISREG(mode) and earlier.size != st.st_size:
        return False
    return max(st.st_mtime_ns, st.st_ctime_ns) < started_ns - settle_ns


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
    as they were; decoding waits until one is needed as an Entry.
    """

    def __init__(self, reader: TreeReader, fragments: List[Earlier],
                 prefetch: Prefetch = lambda chunks: None) -> None:
        self._reader = reader
        self.fragments = fragments  # this directory's own entries in earlier backups
        self._prefetch = prefetch
        self._index: Optional[Dict[bytes, List[RawEarlier]]] = None
        # Large records are indexed compactly instead (recordindex.py).
        self._large: List[Tuple[RecordIndex, int]] = []

    @classmethod
    def of_root(cls, reader: TreeReader, records: Sequence[BackupRecord],
                prefetch: Prefetch) -> Optional["PreviousDir"]:
        """The root directory as the earlier backups ``records`` stored it."""
        fragments: List[Earlier] = []
        for record in records:
            try:
                fragments.extend((entry, started_ns(record))
                                 for entry in reader.root_entries(record.root or []))
            except Exception:  # a damaged earlier backup only costs us re-reading
                continue
        return cls(reader, fragments, prefetch) if fragments else None

    def child(self, name: bytes) -> Optional["PreviousDir"]:
        """The subdirectory ``name`` as earlier backups stored it, if they did."""
        fragments = [(entry, started) for entry, started in self.get(name)
                     if entry.kind == KIND_DIR]
        return PreviousDir(self._reader, fragments, self._prefetch) if fragments else None

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
        for fragment, started in self.fragments:
            inline = fragment.flags & FLAG_INLINE
            key = fragment.inline if inline else tuple(fragment.chunks)
            if key in seen:
                continue  # the same record in two earlier backups: index it once
            seen.add(key)
            try:
                if not inline and sum(length for _, length in fragment.chunks) >= LARGE_RECORD:
                    self._large.append((RecordIndex(self._reader.objects.get, fragment.chunks,
                                                    self._prefetch), started))
                    continue
                record = (fragment.inline or b"") if inline else \
                    self._reader.read_record(fragment.chunks)
                entries = list(scan_entries(record))
                for entry in entries:
                    if entry.kind == KIND_DIR:  # needed soon, in find order
                        self._prefetch(entry.decode().chunks[:CHUNKS_AHEAD])
            except Exception:  # a damaged earlier backup only costs us re-reading
                continue
            for entry in entries:
                index.setdefault(entry.name, []).append((entry, started))
        return index
