"""How a backup runs: paths in, objects and records out.

    paths (find -print0) -> lstat + safe open (sourcefs) -> chunker -> object store
                                                   (small files -> packer -> object store)
                         -> directory records (treebuilder) -> backup record (catalog)

This module is the orchestrator: each path is looked at once and handed to
the concern that owns it.

* dirstack.py   the walk: which directories the input is inside;
* earlier.py    earlier backups' entries and the one ``unchanged`` test;
* metadata.py   stat fields, owners, extended attributes;
* filesaver.py  a regular file's content (reused, inline, packed, chunked);
* treebuilder.py directory records, and entries pending until a pack cut;
* checkpoint.py the tree so far, published as an unfinished record;
* readahead.py  the input taken ahead, and the kernel told of the files.

A file whose metadata matches an earlier backup of the same host and subset
is not read again: in the common case (one link, nothing changed) the
earlier entry's bytes are copied as they are, after confirming (and
touching, for expiry) every object it names.
"""

import contextlib
import itertools
import os
import stat
from typing import Iterable, List, Optional

from .atomic import remove_if_writer_dead
from .catalog import STATE_COMPLETE, STATE_FAILED, BackupRecord, make_backup_id, utc_now
from .checkpoint import Checkpointer
from .chunking import DATA_PARAMS, METADATA_PARAMS, Chunker
from .compression import CompressionSpec, Compressor
from .contentindex import ContentIndex
from .dirstack import A_DIRECTORY, NEW, DirStack, name_key
from .earlier import PreviousDir, ReuseRule, choose_previous, same_entry, unchanged
from .filesaver import FileSaver
from .metadata import Metadata, copy_xattrs
from .objectstore import KeptInCache
from .packing import Packer
from .pathinput import InputError
from .pipeline import RecordCache, StorePipeline
from .readahead import ReadAhead
from .records import (FLAG_IMPLICIT, FLAG_PARTIAL, KIND_DIR, KIND_FILE, KIND_HARDLINK,
                      PACKREF_SIZE, Entry, RecordError)
from .report import Reporter
from .savedir import SaveDir
from .sourcefs import SourceError, SourceTree
from .tree import TreeReader, split_path
from .treebuilder import DIR_INLINE_MAX, FrozenTree, TreeBuilder

__all__ = ["Backup", "BackupOptions", "DIR_INLINE_MAX", "INLINE_MAX", "PACK_FILE_MAX",
           "SETTLE_NS"]

# Files up to this size are stored inside their entry: a pack reference
# would take as many bytes.
INLINE_MAX = PACKREF_SIZE
# Files up to this size go into packs (packing.py) instead of objects of
# their own: most files on a real system are this small, and an object each
# would cost a file, a 4 KiB block and an fsync apiece and compress poorly.
# A file below DATA_PARAMS.min_size would be one chunk anyway, alone in its
# xz stream; packed beside others it compresses better (64 KiB before).
PACK_FILE_MAX = 256 * 1024
# A file changed within this many ns of an earlier backup's start may have
# changed again in the same timestamp tick after it was read: re-read it.
SETTLE_NS = 2_000_000_000
_FORMAT = 0o170000  # the file type bits of st_mode (stat.S_IFMT)
# Files reused in a row between checkpoint ticks (each takes microseconds).
TICK_EVERY = 64


class BackupOptions:
    """Settings of one backup run."""

    def __init__(self, subset: str, hostname: str,
                 compression: Optional[CompressionSpec] = None,
                 checkpoint_interval: float = 60.0, inode_check: bool = True,
                 inline_max: int = INLINE_MAX, pack_file_max: int = PACK_FILE_MAX,
                 settle_ns: int = SETTLE_NS) -> None:
        self.subset = subset
        self.hostname = hostname
        self.compression = compression or CompressionSpec.parse("xz")
        self.checkpoint_interval = checkpoint_interval
        self.inode_check = inode_check
        self.inline_max = inline_max
        self.pack_file_max = pack_file_max
        self.settle_ns = settle_ns


class Backup:
    """One backup run into an opened save directory."""

    def __init__(self, savedir: SaveDir, options: BackupOptions,
                 reporter: Optional[Reporter] = None) -> None:
        self.savedir = savedir
        self.options = options
        self.reporter = reporter or Reporter()
        started = utc_now()
        self.record = BackupRecord(make_backup_id(started, options.hostname, options.subset),
                                   options.hostname, options.subset, started)
        self.record.compression = str(options.compression)
        self.record.checkpoint_interval = options.checkpoint_interval
        # Compression and writing run in worker threads (pipeline.py).
        self.store = StorePipeline(savedir.objects)
        self.compressor = compressor = Compressor(options.compression)
        self.builder = TreeBuilder(self.store, Chunker(METADATA_PARAMS), compressor,
                                   savedir.objects.touch)
        self.packer = Packer(self.store.put, compressor, self._pack_cut)
        self.source = SourceTree()
        self.readahead = ReadAhead()
        # Earlier backups' records, read ahead of the walk (pipeline.py), and
        # left in the page cache for the next backup.
        self.records = RecordCache(KeptInCache(savedir.objects))
        self.metadata = Metadata(self.source, self.reporter)
        self.checkpoints = Checkpointer(options.checkpoint_interval, self.record,
                                        savedir.catalog, self.store, self._freeze,
                                        self._update, compressor)
        previous = choose_previous(savedir.catalog.records(), options.hostname, options.subset)
        moved = ContentIndex(TreeReader(savedir.objects), previous[0].root or []) \
            if previous else None
        self.files = FileSaver(self.source, self.store, compressor, Chunker(DATA_PARAMS),
                               self.packer, self.metadata, self.reporter, self.record,
                               self.readahead, self.checkpoints, options.inline_max,
                               options.pack_file_max, options.inode_check, options.settle_ns,
                               moved)
        reader = TreeReader(self.records)
        rule = ReuseRule(options.inode_check, options.settle_ns, self.metadata.owners)
        self.stack = DirStack(self.builder,
                              PreviousDir.of_root(reader, previous, self.records.prefetch, rule),
                              TreeReader(savedir.objects), self._stored_fragments)
        # A directory whose contents are refused (see _enter), so that
        # the paths below it are left out with one error line, not one each.
        self._refused: Optional[List[bytes]] = None
        self._saved = 0  # paths saved (all failed: the backup failed)
        # The directory open on top, as the last path spelled it, while the
        # next paths named in it can skip the walk (see _save_all); and it.
        self._here: Optional[bytes] = None
        self._here_dir = self.stack.top

    def run(self, paths: Iterable[bytes]) -> BackupRecord:
        """Back up ``paths``; return the finished record ("complete", or "failed" if
        nothing given could be saved).

        Raises pathinput.InputError, before any record is written, if the
        input names no path.
        """
        try:
            # The kernel fetches upcoming files while this one is handled.
            given = self.readahead.paths(paths)
            first = next(given, None)  # an input naming nothing is no backup
            if first is None:
                raise InputError("the input names no path; nothing recorded")
            # Leftovers of this machine's dead writers go (FORMAT.md, "Writing
            # rule"); object directories are swept as they are listed.
            for path in self.savedir.catalog.temp_files():
                remove_if_writer_dead(path)
            self.savedir.catalog.write(self.record)
            # Checkpoints go on while the input keeps the backup waiting: that
            # wait is between paths, where the tree may be snapshotted too.
            self.readahead.on_wait = self.checkpoints.tick
            self._save_all(itertools.chain((first,), given))
            self.packer.cut()
            root = self.builder.finish_root(self.stack.close_all())
            self.store.sync()  # every object written and durable before the record
            self.record.root = root
            self._update(self.record)
            self.record.state = STATE_COMPLETE if self._saved else STATE_FAILED
            self.record.finished = utc_now()
            self.savedir.catalog.write(self.record)
        finally:
            self.readahead.close()
            self.store.close()
            self.records.close()
            self.source.close()
            self.reporter.finish()
        return self.record

    def _update(self, record: BackupRecord) -> None:
        record.errors = self.reporter.errors
        record.bytes_read = self.source.bytes_read
        record.bytes_added = self.store.bytes_added

    def _pack_cut(self) -> None:
        self.builder.resolve(self.stack.dirs)

    def _freeze(self, reading: bool) -> FrozenTree:
        """The tree so far, for a checkpoint; ``reading``: the pack is stored at once,
        not behind the chunks of the file being read."""
        with self.store.at_once() if reading else contextlib.nullcontext():
            self.packer.cut()  # no entry may be pending in what is published
            return self.builder.freeze(self.stack.dirs)

    def _stored_fragments(self, components: List[bytes]) -> List[Entry]:
        """Fragments of a directory this backup has stored so far (it is re-entered).

        Rare (only input out of find order comes back to a directory), so
        done simply: the tree so far is stored as for a checkpoint and read.
        """
        root = self._freeze(False).store(self.store, self.compressor)
        self.store.drain()  # so that what was just stored can be read back
        try:
            return TreeReader(self.savedir.objects).lookup(root, b"/".join(components))
        except Exception:  # unreadable: names may then repeat across fragments
            return []

    # -- one path ------------------------------------------------------------

    def _save_all(self, paths: Iterable[bytes]) -> None:
        """Save each path, checkpointing between them.

        The common case is done here, in one loop: a path in the directory
        the last one was in (or was), which is open on top, whose entry at
        that directory's cursor is reused whole (EarlierCursor.reuse); it
        records its name as DirStack.claim would.  A path elsewhere has the
        directories on its way opened (_walk_to) and, unless a directory,
        is then tried the same way.  Anything else is decided by _save_entry.
        """
        lstat_at = self.source.lstat_at
        touch_all = self.savedir.objects.touch_all
        reuse = self.builder.reuse
        file_done = self.reporter.file_done
        tick = self.checkpoints.tick
        record = self.record
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
                    self.reporter.error(path, str(exc))
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
                    self._saved += 1
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
            self.reporter.error(path, "path contains '..'; not saved")
            return None
        if st is None:
            try:
                st = self.source.lstat(path)
            except SourceError as exc:
                self.reporter.error(path, str(exc))
                return None
        is_dir = stat.S_ISDIR(st.st_mode)
        if not is_dir and not components:
            self.reporter.error(path, "the root of a backup must be a directory; not saved")
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
        self._here_dir = self.stack.top
        return left

    def _enter(self, path: bytes, components: List[bytes]) -> bool:
        """Open the directories of ``components``; False if one was saved as a non-directory.

        Then it changed between being saved and now (a directory swapped
        with a symlink, say): nothing below it may be recorded.
        """
        refused = self._refused
        if refused is not None and components[:len(refused)] == refused:
            return False  # already said
        opened = self.stack.enter(components)
        if opened == len(components):
            return True
        self._refused = components[:opened + 1]
        where = b"/".join(self._refused)
        self.reporter.error(b"/" + where if path.startswith(b"/") else where,
                            "changed during backup (was not a directory); "
                            "its contents are not saved")
        return False

    def _save_dir(self, path: bytes, name: bytes, st: os.stat_result) -> None:
        """Give the directory just entered its own entry's metadata."""
        directory = self.stack.top
        meta = self.metadata.entry(name, KIND_DIR, st)
        directory.meta = meta
        if not self._reuse_dir_xattrs(directory.previous, meta, st):
            self.metadata.add_xattrs(path, meta)
        self._done(path, 0)

    def _done(self, path: bytes, size: int) -> None:
        self._saved += 1
        self.reporter.file_done(path, size)

    def _reuse_dir_xattrs(self, previous: Optional[PreviousDir], meta: Entry,
                          st: os.stat_result) -> bool:
        """Take a directory's extended attributes from an earlier backup if it is unchanged."""
        for earlier, started_ns in previous.fragments if previous is not None else ():
            if not earlier.flags & FLAG_IMPLICIT and unchanged(
                    earlier, st, started_ns, self.options.inode_check, self.options.settle_ns):
                copy_xattrs(earlier, meta)
                return True
        return False

    def _save_entry(self, path: bytes, name: bytes, st: os.stat_result) -> None:
        """Save a path other than a directory, in the directory open on top."""
        found = self.stack.claim(name)
        if found != NEW:
            if found == A_DIRECTORY:
                self.reporter.error(path, "changed during backup (was a directory); not saved")
            return  # else given twice: saved once
        if self._reuse_unchanged(path, name, st):
            return
        directory = self.stack.top
        try:
            entry: Optional[Entry]
            if stat.S_ISREG(st.st_mode):
                entry = regular = self.metadata.entry(name, KIND_FILE, st)
                has_xattrs = self.files.save(path, regular, st, directory.previous)
            else:
                entry = self.metadata.special(path, name, st)
                has_xattrs = False
        except SourceError as exc:
            self.reporter.error(path, str(exc))
            return
        if entry is None:
            return
        if not has_xattrs:
            self.metadata.add_xattrs(path, entry)
        self.builder.add(directory, entry)
        self.record.files += 1
        if entry.kind in (KIND_FILE, KIND_HARDLINK):
            self.record.bytes += entry.size
        self._done(path, entry.size)

    def _reuse_unchanged(self, path: bytes, name: bytes, st: os.stat_result) -> bool:
        """Copy an earlier backup's entry as it was, if nothing about the file changed.

        The fast path of a re-backup (earlier.unchanged and same_entry):
        the entry's bytes are reused whole, extended attributes and content
        reference included: changing any of those changes the ctime.
        """
        directory = self.stack.top
        previous = directory.previous
        if previous is None or st.st_nlink != 1:
            return False
        options = self.options
        for earlier, started_ns in previous.raw(name):
            if (earlier.flags & (FLAG_PARTIAL | FLAG_IMPLICIT)
                    or not unchanged(earlier, st, started_ns, options.inode_check,
                                     options.settle_ns)
                    or not same_entry(earlier, st, self.metadata.owners)):
                continue
            try:
                digests = earlier.digests()
            except RecordError:
                continue
            if not all(self.savedir.objects.touch(digest) for digest in digests):
                continue  # expired meanwhile: the general path decides
            self.builder.add(directory, earlier.raw())
            self.record.files += 1
            if earlier.kind == KIND_FILE:
                self.record.bytes += earlier.size
                self.record.files_reused += 1
                self.record.bytes_reused += earlier.size
            self._done(path, earlier.size)
            return True
        return False
