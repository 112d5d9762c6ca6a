"""Each path of the input saved as an entry of the directory it is in.

A path is looked at once: its lstat decides.  A directory is opened on
the stack (dirstack.py) and given its metadata; anything else is claimed
by name in the directory open on top, then copied whole from an earlier
backup if nothing about it changed (earlier.py), or handed to the file
saver or the metadata reader.  The common case of a re-backup, a file in
the same directory as the last path whose earlier entry is unchanged, is
one tight loop (``save_all``).
"""

import os
import stat
from typing import Callable, Iterable, List, Optional

from .catalog import BackupRecord
from .dirstack import A_DIRECTORY, NEW, DirStack, name_key
from .earlier import PreviousDir, ReuseRule, same_entry, unchanged
from .filesaver import FileSaver
from .metadata import Metadata, copy_xattrs
from .objectstore import ObjectStore
from .records import (FLAG_IMPLICIT, FLAG_PARTIAL, KIND_DIR, KIND_FILE, KIND_HARDLINK, Entry,
                      RecordError)
from .report import Reporter
from .sourcefs import SourceError, SourceTree
from .tree import split_path
from .treebuilder import TreeBuilder

_FORMAT = 0o170000  # the file type bits of st_mode (stat.S_IFMT)
# Files reused in a row between checkpoint ticks (each takes microseconds).
TICK_EVERY = 64


class EntrySaver:
    """Saves the paths of one backup into its tree, one entry each."""

    def __init__(self, stack: DirStack, builder: TreeBuilder, files: FileSaver,
                 metadata: Metadata, source: SourceTree, objects: ObjectStore,
                 record: BackupRecord, reporter: Reporter, rule: ReuseRule,
                 tick: Callable[[], None]) -> None:
        self._stack = stack
        self._builder = builder
        self._files = files
        self._metadata = metadata
        self._source = source
        self._objects = objects
        self._record = record
        self._reporter = reporter
        self._rule = rule
        self._tick = tick  # between paths: a checkpoint may be due
        self.saved = 0  # paths saved (all failed: the backup failed)
        # A directory whose contents are refused (see _enter), so that
        # the paths below it are left out with one error line, not one each.
        self._refused: Optional[List[bytes]] = None
        # The directory open on top, as the last path spelled it, while the
        # next paths named in it can skip the walk (see save_all); and it.
        self._here: Optional[bytes] = None
        self._here_dir = stack.top

    def save_all(self, paths: Iterable[bytes]) -> None:
        """Save each path, checkpointing between them.

        The common case is done here, in one loop: a path in the directory
        the last one was in (or was), which is open on top, whose entry at
        that directory's cursor is reused whole (EarlierCursor.reuse); it
        records its name as DirStack.claim would.  A path elsewhere has the
        directories on its way opened (_walk_to) and, unless a directory,
        is then tried the same way.  Anything else is decided by _save_entry.
        """
        lstat_at = self._source.lstat_at
        touch_all = self._objects.touch_all
        reuse = self._builder.reuse
        file_done = self._reporter.file_done
        tick = self._tick
        record = self._record
        here = directory = cursor = names = None
        unticked = 0
        for path in paths:
            parent, _slash, name = path.rpartition(b"/")
            st: Optional[os.stat_result] = None
            known = None  # a directory's lstat, for the general way
            if parent == here and name and name != b"." and name != b"..":
                try:
                    st = lstat_at(parent, name)
                except SourceError as exc:
                    self._reporter.error(path, str(exc))
                    continue
                if st.st_mode & _FORMAT == stat.S_IFDIR:
                    known, st = st, None  # the general way opens it
            if st is None:
                st = self._walk_to(path, known)
                here, directory = self._here, self._here_dir
                cursor = directory.cursor if directory.before is None else None
                names = directory.names
                tick()
                if st is None:
                    continue
            found = cursor.reuse(name, st) if cursor is not None else None
            if found is not None:
                start, end, is_file, size, digests = found
                key = name_key(name)
                if (key not in names and key | 1 not in names  # type: ignore[operator]
                        and (not digests or touch_all(digests))):
                    names.add(key)  # type: ignore[union-attr]
                    reuse(directory, start, end)  # type: ignore[arg-type]
                    record.files += 1
                    if is_file:
                        record.bytes += size
                        record.files_reused += 1
                        record.bytes_reused += size
                    self.saved += 1
                    file_done(path, size)
                    unticked += 1
                    if unticked >= TICK_EVERY:
                        unticked = 0
                        tick()
                    continue
            # Changed, new, named twice or expired meanwhile: decided there.
            self._save_entry(path, name, st)
            tick()

    def _walk_to(self, path: bytes, st: Optional[os.stat_result]) -> Optional[os.stat_result]:
        """Open the directories on a path's way; save it if a directory (or oddly named).

        Returns the lstat of a file or other non-directory left for the
        caller to save, under its last name in the directory now open on top.
        """
        self._here = None
        try:
            components = split_path(path)
        except ValueError:
            self._reporter.error(path, "path contains '..'; not saved")
            return None
        if st is None:
            try:
                st = self._source.lstat(path)
            except SourceError as exc:
                self._reporter.error(path, str(exc))
                return None
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not components:
            self._reporter.error(path, "the root of a backup must be a directory; not saved")
            return None
        parents = components if is_dir else components[:-1]
        if not self._enter(path, parents):
            return None
        left: Optional[os.stat_result] = None
        if is_dir:
            self._save_dir(path, components[-1] if components else b"", st)
            here = path
        else:
            here, _slash, name = path.rpartition(b"/")
            if name in (b"", b"."):
                self._save_entry(path, components[-1], st)
                here = b""
            else:
                left = st
        # Paths named under ``here`` from now on are in the directory open
        # on top (split_path of here + b"/" + name is parents + [name]).
        self._here = here or None
        self._here_dir = self._stack.top
        return left

    def _enter(self, path: bytes, components: List[bytes]) -> bool:
        """Open the directories of ``components``; False if one was saved as a non-directory.

        Then it changed between being saved and now (a directory swapped
        with a symlink, say): nothing below it may be recorded.
        """
        refused = self._refused
        if refused is not None and components[:len(refused)] == refused:
            return False  # already said
        opened = self._stack.enter(components)
        if opened == len(components):
            return True
        self._refused = components[:opened + 1]
        where = b"/".join(self._refused)
        self._reporter.error(b"/" + where if path.startswith(b"/") else where,
                            "changed during backup (was not a directory); "
                            "its contents are not saved")
        return False

    def _save_dir(self, path: bytes, name: bytes, st: os.stat_result) -> None:
        """Give the directory just entered its own entry's metadata."""
        directory = self._stack.top
        meta = self._metadata.entry(name, KIND_DIR, st)
        directory.meta = meta
        if not self._reuse_dir_xattrs(directory.previous, meta, st):
            self._metadata.add_xattrs(path, meta)
        self._done(path, 0)

    def _done(self, path: bytes, size: int) -> None:
        self.saved += 1
        self._reporter.file_done(path, size)

    def _reuse_dir_xattrs(self, previous: Optional[PreviousDir], meta: Entry,
                          st: os.stat_result) -> bool:
        """Take a directory's extended attributes from an earlier backup if it is unchanged."""
        for earlier, started_ns in previous.fragments if previous is not None else ():
            if not earlier.flags & FLAG_IMPLICIT and unchanged(
                    earlier, st, started_ns, self._rule.inode_check, self._rule.settle_ns):
                copy_xattrs(earlier, meta)
                return True
        return False

    def _save_entry(self, path: bytes, name: bytes, st: os.stat_result) -> None:
        """Save a path other than a directory, in the directory open on top."""
        found = self._stack.claim(name)
        if found != NEW:
            if found == A_DIRECTORY:
                self._reporter.error(path, "changed during backup (was a directory); not saved")
            return  # else given twice: saved once
        if self._reuse_unchanged(path, name, st):
            return
        directory = self._stack.top
        try:
            entry: Optional[Entry]
            if stat.S_ISREG(st.st_mode):
                entry = regular = self._metadata.entry(name, KIND_FILE, st)
                has_xattrs = self._files.save(path, regular, st, directory.previous)
            else:
                entry = self._metadata.special(path, name, st)
                has_xattrs = False
        except SourceError as exc:
            self._reporter.error(path, str(exc))
            return
        if entry is None:
            return
        if not has_xattrs:
            self._metadata.add_xattrs(path, entry)
        self._builder.add(directory, entry)
        self._record.files += 1
        if entry.kind in (KIND_FILE, KIND_HARDLINK):
            self._record.bytes += entry.size
        self._done(path, entry.size)

    def _reuse_unchanged(self, path: bytes, name: bytes, st: os.stat_result) -> bool:
        """Copy an earlier backup's entry as it was, if nothing about the file changed.

        The fast path of a re-backup (earlier.unchanged and same_entry):
        the entry's bytes are reused whole, extended attributes and content
        reference included: changing any of those changes the ctime.
        """
        directory = self._stack.top
        previous = directory.previous
        if previous is None or st.st_nlink != 1:
            return False
        rule = self._rule
        for earlier, started_ns in previous.raw(name):
            if (earlier.flags & (FLAG_PARTIAL | FLAG_IMPLICIT)
                    or not unchanged(earlier, st, started_ns, rule.inode_check, rule.settle_ns)
                    or not same_entry(earlier, st, rule.owners)):
                continue
            try:
                digests = earlier.digests()
            except RecordError:
                continue
            if not all(self._objects.touch(digest) for digest in digests):
                continue  # expired meanwhile: the general path decides
            self._builder.add(directory, earlier.raw())
            self._record.files += 1
            if earlier.kind == KIND_FILE:
                self._record.bytes += earlier.size
                self._record.files_reused += 1
                self._record.bytes_reused += earlier.size
            self._done(path, earlier.size)
            return True
        return False
