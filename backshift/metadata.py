"""An entry's metadata from the live file system: stat fields, owners, extended attributes.

Regular files' content is filesaver.py's; everything else a path can be
(directory, symlink, device, FIFO) is only metadata, made here.
"""

import os
import stat
from typing import Dict, Optional, Tuple

from .records import KIND_BLOCK, KIND_CHAR, KIND_FIFO, KIND_SYMLINK, XATTR_PREFIX, Entry
from .recordscan import encode_owners
from .report import Reporter
from .sourcefs import SourceFile, SourceTree, device_numbers


class Metadata:
    """Makes entries' metadata for one backup (user and group names looked up once)."""

    def __init__(self, source: SourceTree, reporter: Reporter) -> None:
        self._source = source
        self._reporter = reporter
        self._owner_fields: Dict[Tuple[int, int], bytes] = {}

    def entry(self, name: bytes, kind: bytes, st: os.stat_result) -> Entry:
        """An entry of ``kind`` with the metadata of ``st`` (no content, no attributes)."""
        source = self._source
        return Entry(name, kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                     mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino,
                     size=0, nlink=st.st_nlink, uname=source.user_name(st.st_uid),
                     gname=source.group_name(st.st_gid))

    def owners(self, uid: int, gid: int) -> bytes:
        """The encoded user and group names an entry of this backup gets for uid, gid."""
        owners = self._owner_fields.get((uid, gid))
        if owners is None:
            owners = encode_owners(self._source.user_name(uid), self._source.group_name(gid))
            self._owner_fields[(uid, gid)] = owners
        return owners

    def special(self, path: bytes, name: bytes, st: os.stat_result) -> Optional[Entry]:
        """The entry of a symlink, FIFO or device; None (reported) for what is not saved.

        Raises SourceError if a symlink cannot be read.
        """
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            entry = self.entry(name, KIND_SYMLINK, st)
            entry.target = self._source.readlink(path)
            return entry
        if stat.S_ISFIFO(mode):
            return self.entry(name, KIND_FIFO, st)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            entry = self.entry(name, KIND_CHAR if stat.S_ISCHR(mode) else KIND_BLOCK, st)
            entry.rdev_major, entry.rdev_minor = device_numbers(st.st_rdev)
            return entry
        if stat.S_ISSOCK(mode):
            self._reporter.note(path, "socket ignored")
            return None
        self._reporter.error(path, "unknown file type %o; not saved" % stat.S_IFMT(mode))
        return None

    def add_xattrs(self, path: bytes, entry: Entry) -> None:
        """Keep the extended attributes (and so the POSIX ACLs) of ``path`` in ``entry``."""
        self._keep(path, entry, *self._source.xattrs(path))

    def add_xattrs_of(self, path: bytes, entry: Entry, source: SourceFile) -> None:
        """The same for a file being read, through its descriptor (a path lookup less)."""
        self._keep(path, entry, *source.xattrs())

    def _keep(self, path: bytes, entry: Entry, found: Dict[bytes, bytes],
              problem: Optional[str]) -> None:
        for attribute, value in found.items():
            entry.extras[XATTR_PREFIX + attribute] = value
        if problem:
            self._reporter.error(path, problem)


def copy_xattrs(earlier: Entry, entry: Entry) -> None:
    """Take an earlier entry's extended attributes (equal ctimes mean equal attributes)."""
    entry.extras.update((key, value) for key, value in earlier.extras.items()
                        if key.startswith(XATTR_PREFIX))
