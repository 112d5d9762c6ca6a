"""How a backup runs: paths in, objects and records out.

    paths (find -print0) -> lstat + safe open (sourcefs) -> chunker -> object store
                                                   (small files -> packer -> object store)
                         -> directory records (tree.RecordWriter) -> backup record (catalog)

Paths are handled as they arrive.  The directories on the way from the
root to the current path are *open*: each has a RecordWriter collecting
its entries.  When the input leaves a directory it is closed: its record is
finished and its entry, holding the record's chunk list, goes into its
parent.  In find order each directory is closed once and memory is bounded
by the tree's depth; in any other order a directory left and re-entered is
stored in fragments, which readers merge (tree.py).  Small directories'
records are held inline in their entry.

Small files' contents go into packs (packing.py).  Their entries, and so
everything after them in their directory's record, wait until the pack is
cut and named; so may directories already left, whose entries then wait in
their parents.  Every cut resolves all of them at once.

A file whose metadata matches an earlier backup of the same host and subset
is not read again: its content reference is reused after confirming (and
touching, for expiry) every object it names.  In the common case (one link,
nothing changed) the earlier entry's bytes are copied as they are.  Every
``checkpoint_interval`` seconds the tree so far is published as an
unfinished backup record, so an interrupted backup's work is reused by the
next run (seed feature 6).
"""

import os
import stat
import sys
import time
from typing import (BinaryIO, Callable, Dict, Iterable, Iterator, List, Optional, Set, TextIO,
                    Tuple, Union)

from .catalog import BackupRecord, make_backup_id, utc_now
from .chunking import DATA_PARAMS, METADATA_PARAMS, Chunker
from .compression import CompressionSpec, Compressor
from .objectstore import ObjectStore, digest_of
from .pipeline import ReadAhead, RecordCache, StorePipeline
from .records import (FLAG_IMPLICIT, FLAG_INLINE, FLAG_PARTIAL, KIND_BLOCK, KIND_CHAR,
                      KIND_DIR, KIND_FIFO, KIND_FILE, KIND_HARDLINK, KIND_SYMLINK, ChunkRef,
                      Entry)
from .packing import Packer, content_digest
from .records import (FLAG_PACKED, FLAG_SPARSE, PACKREF_SIZE, SPARSE_KEY, XATTR_PREFIX,
                      RawEntry, RecordError, encode_extents, encode_owners, scan_entries)
from .report import Reporter
from .savedir import SaveDir
from .sourcefs import SourceError, SourceFile, SourceTree, device_numbers
from .tree import RecordWriter, TreeReader, split_path, store_top_record

# Files up to this size are stored inside their entry: a pack reference
# would take as many bytes.
INLINE_MAX = PACKREF_SIZE
# Files up to this size go into packs (packing.py) instead of objects of
# their own: most files on a real system are this small, and an object each
# would cost a file, a 4 KiB block and an fsync apiece and compress poorly.
PACK_FILE_MAX = 64 * 1024
# Directory records up to this size are held in their directory's entry, in
# the parent's record: most directories are small, and an object each would
# cost a file, a block and an fsync, and a read when the next backup compares.
DIR_INLINE_MAX = 4096
# A file changed within this many ns of an earlier backup's start may have
# changed again in the same timestamp tick after it was read: re-read it.
SETTLE_NS = 2_000_000_000
READ_BLOCK = 4 * 1024 * 1024


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


class NulPaths:
    """Paths from a NUL-separated byte stream (find -print0), never decoded.

    Iterating gives one path at a time; ``batches`` gives, read by read,
    the paths each read completed (pipeline.ReadAhead hands them on so).
    """

    def __init__(self, stream: BinaryIO, block_size: int = 65536) -> None:
        self._stream = stream
        self._block_size = block_size

    def batches(self) -> Iterator[List[bytes]]:
        pending = b""
        # read1 returns what the pipe holds now: a slow find is followed as
        # it goes, not waited for until a whole block has arrived.
        read = getattr(self._stream, "read1", self._stream.read)
        while True:
            block = read(self._block_size)
            if not block:
                break
            pending += block
            parts = pending.split(b"\0")
            pending = parts.pop()
            batch = [part for part in parts if part]
            if batch:
                yield batch
        if pending:
            yield [pending]

    def __iter__(self) -> Iterator[bytes]:
        for batch in self.batches():
            yield from batch


def iter_nul_paths(stream: BinaryIO, block_size: int = 65536) -> NulPaths:
    """Paths from a NUL-separated byte stream (find -print0), never decoded."""
    return NulPaths(stream, block_size)


# An entry of an earlier backup, with that backup's start time (ns since
# the epoch): whether the entry can be trusted depends on when it was read.
Earlier = Tuple[Entry, int]


class PreviousDir:
    """What earlier backups stored in one directory, by name, for reuse.

    Entries are kept as RawEntry: most are only compared and then copied
    as they were; decoding waits until one is needed as an Entry.
    """

    def __init__(self, reader: TreeReader, fragments: List[Earlier],
                 prefetch: Callable[[List[ChunkRef]], None] = lambda chunks: None) -> None:
        self._reader = reader
        self.fragments = fragments  # this directory's own entries in earlier backups
        self._prefetch = prefetch
        self._index: Optional[Dict[bytes, List[Tuple[RawEntry, int]]]] = None

    def raw(self, name: bytes) -> List[Tuple[RawEntry, int]]:
        """Earlier entries named ``name``, with their backups' start times."""
        if self._index is None:
            self._index = self._load()
        return self._index.get(name, [])

    def get(self, name: bytes) -> List[Earlier]:
        found = []
        for raw, started_ns in self.raw(name):
            try:
                found.append((raw.decode(), started_ns))
            except RecordError:
                continue
        return found

    def _load(self) -> Dict[bytes, List[Tuple[RawEntry, int]]]:
        index: Dict[bytes, List[Tuple[RawEntry, int]]] = {}
        seen = set()
        for fragment, started_ns in self.fragments:
            inline = fragment.flags & FLAG_INLINE
            key = fragment.inline if inline else tuple(fragment.chunks)
            if key in seen:
                continue  # the same record in two earlier backups: index it once
            seen.add(key)
            try:
                record = (fragment.inline or b"") if inline else \
                    self._reader.read_record(fragment.chunks)
                entries = list(scan_entries(record))
                for entry in entries:
                    if entry.kind == KIND_DIR:
                        self._prefetch(entry.decode().chunks)  # needed soon, in find order
            except Exception:  # a damaged earlier backup only costs us re-reading
                continue
            for entry in entries:
                index.setdefault(entry.name, []).append((entry, started_ns))
        return index


class OpenDir:
    """A directory the input is inside, or one left whose record waits for a pack.

    ``queue`` holds entries that cannot be added yet, in order: the first
    is pending (a packed file whose pack is still open, or a directory
    whose own record waits); the rest (Entry, or bytes already encoded)
    wait behind it.
    """

    __slots__ = ("name", "meta", "writer", "previous", "queue")

    def __init__(self, name: bytes, writer: RecordWriter, previous: Optional[PreviousDir]) -> None:
        self.name = name
        self.meta: Optional[Entry] = None
        self.writer = writer
        self.previous = previous
        self.queue: List[Union[Entry, bytes]] = []


class Backup:
    """One backup run into an opened save directory."""

    def __init__(self, savedir: SaveDir, options: BackupOptions,
                 reporter: Optional[Reporter] = None) -> None:
        self.savedir = savedir
        self.options = options
        self.reporter = reporter or Reporter()
        self.objects: ObjectStore = savedir.objects
        # Compression and writing run in worker threads (pipeline.py).
        self.store = StorePipeline(self.objects)
        self.compressor = Compressor(options.compression)
        self.data_chunker = Chunker(DATA_PARAMS)
        self.meta_chunker = Chunker(METADATA_PARAMS)
        self.packer = Packer(self.store.put, self.compressor, self._pack_cut)
        # Entries (by id) waiting for the open pack to be cut, and the
        # directories already left whose records wait for it, children first.
        self.unresolved: Set[int] = set()
        self.waiting: List[Tuple[OpenDir, Entry]] = []
        self.source = SourceTree()
        self.readahead = ReadAhead()
        # Earlier backups' records, read ahead of the walk (pipeline.py).
        self.records = RecordCache(self.objects)
        self.reader = TreeReader(self.records)  # type: ignore[arg-type]
        started = utc_now()
        self.record = BackupRecord(make_backup_id(started, options.hostname, options.subset),
                                   options.hostname, options.subset, started)
        self.record.compression = str(options.compression)
        self.record.checkpoint_interval = options.checkpoint_interval
        self.previous_records = self._choose_previous()
        self.stack: List[OpenDir] = []
        self.open_names: List[bytes] = []  # names of stack[1:], for a quick _enter
        self.owner_fields: Dict[Tuple[int, int], bytes] = {}  # see _owners
        # First link saved of each multiply linked file, with how many of
        # its links are still to come: forgotten once all were met, so the
        # map holds only files whose links are still ahead.
        self.hardlinks: Dict[Tuple[int, int], Tuple[bytes, Entry, int]] = {}
        self.last_checkpoint = time.monotonic()
        # The entry whose extended attributes are already in it (taken from
        # an earlier backup, or read through the file's open descriptor).
        self._xattrs_done: Optional[Entry] = None

    # -- earlier backups -------------------------------------------------

    def _choose_previous(self) -> List[BackupRecord]:
        """Earlier backups of this host and subset to reuse files from.

        As the seed's program did: the most recent, the most recent
        complete, and the largest complete one.
        """
        mine = [record for record in self.savedir.catalog.records()
                if record.hostname == self.options.hostname
                and record.subset == self.options.subset and record.root is not None]
        chosen: List[BackupRecord] = []
        complete = [record for record in mine if record.complete]
        candidates = [mine[-1] if mine else None, complete[-1] if complete else None,
                      max(complete, key=lambda r: r.files) if complete else None]
        for candidate in candidates:
            if candidate is not None and candidate not in chosen:
                chosen.append(candidate)
        return chosen

    def _previous_root(self) -> Optional[PreviousDir]:
        fragments: List[Earlier] = []
        for record in self.previous_records:
            try:
                fragments.extend((entry, _ns(record))
                                 for entry in self.reader.root_entries(record.root or []))
            except Exception:  # a damaged earlier backup only costs us re-reading
                continue
        return PreviousDir(self.reader, fragments, self.records.prefetch) if fragments else None

    def _previous_child(self, parent: OpenDir, name: bytes) -> Optional[PreviousDir]:
        if parent.previous is None:
            return None
        fragments = [(entry, started) for entry, started in parent.previous.get(name)
                     if entry.kind == KIND_DIR]
        return PreviousDir(self.reader, fragments, self.records.prefetch) if fragments else None

    # -- the directory stack ----------------------------------------------

    def _new_writer(self) -> RecordWriter:
        return RecordWriter(self.store, self.meta_chunker, self.compressor)

    def _enter(self, components: List[bytes]) -> None:
        """Make the open directories exactly root + ``components``."""
        if components == self.open_names:
            return  # still in the same directory: the common case
        depth = 0
        while (depth < len(components) and depth + 1 < len(self.stack)
               and self.stack[depth + 1].name == components[depth]):
            depth += 1
        while len(self.stack) > depth + 1:
            self._close_top()
        for name in components[depth:]:
            parent = self.stack[-1]
            previous = self._previous_child(parent, name)
            self.stack.append(OpenDir(name, self._new_writer(), previous))
            self.open_names.append(name)

    def _close_top(self) -> None:
        closing = self.stack.pop()
        self.open_names.pop()
        entry = self._dir_entry(closing, [])
        if closing.queue:
            self.waiting.append((closing, entry))
            self.unresolved.add(id(entry))
        else:
            self._finish_dir(closing, entry)
        self._add_entry(self.stack[-1], entry)

    @staticmethod
    def _finish_dir(directory: OpenDir, entry: Entry) -> None:
        """Give a directory's entry its record: inline if small, else stored chunks."""
        record = directory.writer.finish_small(DIR_INLINE_MAX)
        if record is not None:
            entry.flags |= FLAG_INLINE
            entry.inline = record
        else:
            entry.chunks = directory.writer.finish()

    def _add_entry(self, directory: OpenDir, entry: Union[Entry, bytes]) -> None:
        """Add to a directory's record, or queue behind entries still pending."""
        if directory.queue or id(entry) in self.unresolved:
            directory.queue.append(entry)
        else:
            directory.writer.add(entry)

    def _pack_cut(self) -> None:
        """Every pending entry has its pack now: encode what was queued."""
        self.unresolved.clear()
        for directory, entry in self.waiting:  # children before parents
            directory.writer.add_all(directory.queue)
            directory.queue = []
            self._finish_dir(directory, entry)
        self.waiting = []
        for directory in self.stack:
            directory.writer.add_all(directory.queue)
            directory.queue = []

    @staticmethod
    def _dir_entry(directory: OpenDir, chunks: List[ChunkRef]) -> Entry:
        if directory.meta is not None:
            entry = directory.meta
            entry.chunks = chunks
            return entry
        return Entry(directory.name, KIND_DIR, flags=FLAG_IMPLICIT, chunks=chunks)

    # -- running -----------------------------------------------------------

    def run(self, paths: Iterable[bytes]) -> BackupRecord:
        """Back up ``paths``; return the completed record."""
        self.stack = [OpenDir(b"", self._new_writer(), self._previous_root())]
        self.savedir.catalog.write(self.record)
        try:
            # The kernel fetches upcoming files while this one is handled.
            for path in self.readahead.paths(paths):
                self._save_path(path)
                self._maybe_checkpoint()
            self.packer.cut()
            while len(self.stack) > 1:
                self._close_top()
            root = self.stack.pop()
            top = store_top_record(self.store, self.compressor,
                                   self._dir_entry(root, root.writer.finish()))
            self.store.sync()  # every object written and durable before the record
            self.record.root = top
            self.record.errors = self.reporter.errors
            self.record.bytes_read = self.source.bytes_read
            self.record.bytes_added = self.store.bytes_added
            self.record.state = "complete"
            self.record.finished = utc_now()
            self.savedir.catalog.write(self.record)
        finally:
            self.store.close()
            self.records.close()
            self.source.close()
            self.reporter.finish()
        return self.record

    def _maybe_checkpoint(self, partial: Optional[Entry] = None) -> None:
        if time.monotonic() - self.last_checkpoint >= self.options.checkpoint_interval:
            self.checkpoint(partial)

    def checkpoint(self, partial: Optional[Entry] = None) -> None:
        """Publish the tree so far as an unfinished backup record."""
        self.packer.cut()  # no entry may be pending in what is published
        extra: List[Entry] = [partial] if partial is not None else []
        for directory in reversed(self.stack):
            chunks = directory.writer.snapshot(extra)
            if directory is self.stack[0]:
                root_entry = self._dir_entry_copy(directory, chunks)
                self.record.root = store_top_record(self.store, self.compressor, root_entry)
            else:
                extra = [self._dir_entry_copy(directory, chunks)]
        self.store.sync()  # publish only chunks already durable
        self.record.errors = self.reporter.errors
        self.record.bytes_read = self.source.bytes_read
        self.record.bytes_added = self.store.bytes_added
        self.record.checkpoints += 1
        self.savedir.catalog.write(self.record)
        self.last_checkpoint = time.monotonic()

    @staticmethod
    def _dir_entry_copy(directory: OpenDir, chunks: List[ChunkRef]) -> Entry:
        if directory.meta is None:
            return Entry(directory.name, KIND_DIR, flags=FLAG_IMPLICIT, chunks=chunks)
        meta = directory.meta
        return Entry(meta.name, KIND_DIR, flags=meta.flags, mode=meta.mode, uid=meta.uid,
                     gid=meta.gid, mtime_ns=meta.mtime_ns, ctime_ns=meta.ctime_ns,
                     ino=meta.ino, size=meta.size, nlink=meta.nlink, uname=meta.uname,
                     gname=meta.gname, chunks=chunks, extras=meta.extras)

    # -- one path ------------------------------------------------------------

    def _save_path(self, path: bytes) -> None:
        try:
            components = split_path(path)
        except ValueError:
            self.reporter.error(path, "path contains '..'; not saved")
            return
        try:
            st = self.source.lstat(path)
        except SourceError as exc:
            self.reporter.error(path, str(exc))
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._enter(components)
            meta = self._metadata(components[-1] if components else b"", KIND_DIR, st)
            self.stack[-1].meta = meta
            if not self._reuse_dir_xattrs(meta, st):
                self._add_xattrs(path, meta)
            self.reporter.file_done(path, 0)
            return
        if not components:
            self.reporter.error(path, "the root of a backup must be a directory; not saved")
            return
        self._enter(components[:-1])
        self._save_entry(path, components[-1], st)

    def _save_entry(self, path: bytes, name: bytes, st: os.stat_result) -> None:
        """Save a path other than a directory, in the directory open on top."""
        if self._reuse_unchanged(path, name, st):
            return
        try:
            entry = self._entry_for(path, name, st)
        except SourceError as exc:
            self.reporter.error(path, str(exc))
            return
        if entry is None:
            return
        if entry is not self._xattrs_done:
            self._add_xattrs(path, entry)
        self._add_entry(self.stack[-1], entry)
        self.record.files += 1
        if entry.kind in (KIND_FILE, KIND_HARDLINK):
            self.record.bytes += entry.size
        self.reporter.file_done(path, entry.size)

    def _reuse_unchanged(self, path: bytes, name: bytes, st: os.stat_result) -> bool:
        """Copy an earlier backup's entry as it was, if nothing about the file changed.

        The fast path of a re-backup: for a regular file or a symlink of
        one link whose type, times, size, inode, mode and owners equal
        an earlier entry's (and which was settled when that backup began),
        the entry's bytes are reused whole, extended attributes and content
        reference included: changing any of those changes the ctime.
        Everything else takes the general path (_entry_for).
        """
        directory = self.stack[-1]
        if directory.previous is None or st.st_nlink != 1:
            return False
        mode = st.st_mode
        if stat.S_ISREG(mode):
            kind = KIND_FILE
        elif stat.S_ISLNK(mode):
            kind = KIND_SYMLINK
        else:
            return False
        for earlier, started_ns in directory.previous.raw(name):
            if (earlier.kind != kind or earlier.flags & (FLAG_PARTIAL | FLAG_IMPLICIT)
                    or earlier.mtime_ns != st.st_mtime_ns or earlier.ctime_ns != st.st_ctime_ns
                    or earlier.mode != stat.S_IMODE(mode) or earlier.nlink != 1
                    or earlier.uid != st.st_uid or earlier.gid != st.st_gid
                    or (kind == KIND_FILE and earlier.size != st.st_size)
                    or (kind == KIND_SYMLINK and earlier.target_length() != st.st_size)
                    or (self.options.inode_check and earlier.ino != st.st_ino)
                    or not _settled(st, started_ns, self.options.settle_ns)):
                continue
            try:
                if not earlier.has_owners(self._owners(st.st_uid, st.st_gid)):
                    continue
                digests = earlier.digests()
            except RecordError:
                continue
            if not all(self.objects.touch(digest) for digest in digests):
                continue  # expired meanwhile: the general path decides
            self._add_entry(directory, earlier.raw())
            self.record.files += 1
            if kind == KIND_FILE:
                self.record.bytes += earlier.size
                self.record.files_reused += 1
                self.record.bytes_reused += earlier.size
            self.reporter.file_done(path, earlier.size)
            return True
        return False

    def _owners(self, uid: int, gid: int) -> bytes:
        """The encoded user and group names an entry of this backup gets for uid, gid."""
        owners = self.owner_fields.get((uid, gid))
        if owners is None:
            owners = encode_owners(self.source.user_name(uid), self.source.group_name(gid))
            self.owner_fields[(uid, gid)] = owners
        return owners

    def _reuse_dir_xattrs(self, meta: Entry, st: os.stat_result) -> bool:
        """Take a directory's extended attributes from an earlier backup if its ctime says so."""
        previous = self.stack[-1].previous
        if previous is None:
            return False
        for earlier, started_ns in previous.fragments:
            if (earlier.flags & FLAG_IMPLICIT or earlier.ctime_ns != st.st_ctime_ns
                    or earlier.ino != st.st_ino
                    or not _settled(st, started_ns, self.options.settle_ns)):
                continue
            meta.extras.update((key, value) for key, value in earlier.extras.items()
                               if key.startswith(XATTR_PREFIX))
            return True
        return False

    def _metadata(self, name: bytes, kind: bytes, st: os.stat_result) -> Entry:
        return Entry(name, kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                     mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino,
                     size=0, nlink=st.st_nlink, uname=self.source.user_name(st.st_uid),
                     gname=self.source.group_name(st.st_gid))

    def _add_xattrs(self, path: bytes, entry: Entry) -> None:
        """Keep the extended attributes (and so the POSIX ACLs) of ``path`` in ``entry``."""
        self._keep_xattrs(path, entry, *self.source.xattrs(path))

    def _add_xattrs_of(self, path: bytes, entry: Entry, source: SourceFile) -> None:
        """The same for a file being read, through its descriptor (a path lookup less)."""
        self._keep_xattrs(path, entry, *source.xattrs())
        self._xattrs_done = entry

    def _keep_xattrs(self, path: bytes, entry: Entry, found: Dict[bytes, bytes],
                     problem: Optional[str]) -> None:
        for attribute, value in found.items():
            entry.extras[XATTR_PREFIX + attribute] = value
        if problem:
            self.reporter.error(path, problem)

    def _entry_for(self, path: bytes, name: bytes, st: os.stat_result) -> Optional[Entry]:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._file_entry(path, name, st)
        if stat.S_ISLNK(mode):
            entry = self._metadata(name, KIND_SYMLINK, st)
            entry.target = self.source.readlink(path)
            return entry
        if stat.S_ISFIFO(mode):
            return self._metadata(name, KIND_FIFO, st)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            entry = self._metadata(name, KIND_CHAR if stat.S_ISCHR(mode) else KIND_BLOCK, st)
            entry.rdev_major, entry.rdev_minor = device_numbers(st.st_rdev)
            return entry
        if stat.S_ISSOCK(mode):
            self.reporter.note(path, "socket ignored")
            return None
        self.reporter.error(path, "unknown file type %o; not saved" % stat.S_IFMT(mode))
        return None

    def _file_entry(self, path: bytes, name: bytes, st: os.stat_result) -> Entry:
        entry = self._metadata(name, KIND_FILE, st)
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self.hardlinks:
            first_path, first, to_come = self.hardlinks.pop(key)
            if to_come > 1:
                self.hardlinks[key] = (first_path, first, to_come - 1)
            entry.kind = KIND_HARDLINK
            entry.target = first_path
            entry.size = first.size
            entry.flags = first.flags & (FLAG_INLINE | FLAG_SPARSE)
            if first.flags & FLAG_PACKED:
                if not self.packer.share(first, entry):
                    self.unresolved.add(id(entry))
            else:
                entry.inline, entry.chunks = first.inline, first.chunks
            _copy_sparse_map(first, entry)
            return entry
        entry.size = st.st_size  # what a checkpoint of a partly read file records
        if not self._reuse_previous(entry, st):
            self._read_content(path, entry, st)
        if st.st_nlink > 1:
            self.hardlinks[key] = (b"/".join(split_path(path)), entry, st.st_nlink - 1)
        return entry

    def _candidates(self, name: bytes, st: os.stat_result, partial: bool) -> Iterator[Entry]:
        """Earlier entries for ``name`` whose metadata says the file is unchanged.

        ``partial`` picks the prefixes checkpointed of files being read when
        an earlier backup was interrupted, instead of whole files.
        """
        previous = self.stack[-1].previous
        if previous is None:
            return
        for candidate, started_ns in previous.get(name):
            if candidate.kind not in (KIND_FILE, KIND_HARDLINK):
                continue
            if bool(candidate.flags & FLAG_PARTIAL) != partial:
                continue
            if (candidate.size, candidate.mtime_ns, candidate.ctime_ns) != \
                    (st.st_size, st.st_mtime_ns, st.st_ctime_ns):
                continue
            if self.options.inode_check and candidate.ino != st.st_ino:
                continue
            if not _settled(st, started_ns, self.options.settle_ns):
                continue
            yield candidate

    def _reuse_previous(self, entry: Entry, st: os.stat_result) -> bool:
        """Take content from an earlier backup when metadata says it is unchanged."""
        for candidate in self._candidates(entry.name, st, partial=False):
            if candidate.flags & FLAG_INLINE and candidate.inline is None:
                continue
            if not candidate.flags & (FLAG_INLINE | FLAG_SPARSE) and not candidate.chunks \
                    and candidate.size:
                continue
            if not all(self.objects.touch(digest) for digest, _ in candidate.chunks):
                continue  # expired meanwhile: try another, else read the file again
            entry.flags |= candidate.flags & (FLAG_INLINE | FLAG_SPARSE | FLAG_PACKED)
            entry.inline, entry.chunks = candidate.inline, list(candidate.chunks)
            entry.offset, entry.content_digest = candidate.offset, candidate.content_digest
            _copy_sparse_map(candidate, entry)
            # Setting an extended attribute changes the ctime, so equal
            # ctimes mean equal attributes: take them, skip listxattr.
            entry.extras.update((key, value) for key, value in candidate.extras.items()
                                if key.startswith(XATTR_PREFIX))
            self._xattrs_done = entry
            entry.size = candidate.size
            self.record.files_reused += 1
            self.record.bytes_reused += entry.size
            return True
        return False

    def _resume_point(self, entry: Entry, st: os.stat_result) -> List[ChunkRef]:
        """Chunks an interrupted backup already stored for this very file."""
        for candidate in self._candidates(entry.name, st, partial=True):
            if all(self.objects.touch(digest) for digest, _ in candidate.chunks):
                return list(candidate.chunks)
        return []

    def _read_content(self, path: bytes, entry: Entry, st: os.stat_result) -> None:
        self.readahead.note_read()
        with self.source.open_file(path, st) as source:
            self._add_xattrs_of(path, entry, source)
            if st.st_size <= self.options.pack_file_max:
                head = source.read(self.options.pack_file_max + 1)
                if len(head) <= self.options.pack_file_max:
                    entry.size = len(head)
                    if len(head) <= self.options.inline_max:
                        entry.flags |= FLAG_INLINE
                        entry.inline = head
                    else:
                        self._pack(entry, head)
                    self._check_unchanged(path, source)
                    return
                entry.chunks = self._store_stream(entry, _prefixed(head, source.read))
            else:
                done = self._resume_point(entry, st)
                skip = sum(length for _, length in done)
                extents = source.data_extents()
                if extents is not None:
                    # Holes are neither read nor stored: chunks cover the
                    # data extents back to back (FORMAT.md, "Sparse files").
                    entry.flags |= FLAG_SPARSE
                    entry.extras[SPARSE_KEY] = encode_extents(extents)
                    read = source.extent_reader(extents, skip)
                else:
                    if done:
                        source.seek(skip)
                    read = source.read
                entry.chunks = self._store_stream(entry, read, done)
            if not entry.flags & FLAG_SPARSE:
                entry.size = sum(length for _, length in entry.chunks)
            self._check_unchanged(path, source)

    def _pack(self, entry: Entry, content: bytes) -> None:
        """Store a small file's content in a pack, or point at an earlier copy of it.

        A file read again although an earlier backup has it (its times were
        too recent to trust, say) keeps that backup's reference if the
        content is the same: packing it anew would store it twice.
        """
        key = content_digest(content)
        previous = self.stack[-1].previous
        for earlier, _started_ns in previous.get(entry.name) if previous else ():
            if (earlier.flags & FLAG_PACKED and earlier.content_digest == key
                    and earlier.size == len(content) and earlier.chunks
                    and self.objects.touch(earlier.chunks[0][0])):
                entry.flags |= FLAG_PACKED
                entry.chunks, entry.offset = list(earlier.chunks), earlier.offset
                entry.content_digest = key
                return
        # Pending until the pack is cut, which may happen in add().
        self.unresolved.add(id(entry))
        if self.packer.add(entry, content, key):
            self.unresolved.discard(id(entry))

    def _check_unchanged(self, path: bytes, source: SourceFile) -> None:
        if source.changed_while_read():
            self.reporter.error(path, "file changed as we read it")

    def _store_stream(self, entry: Entry, read: Callable[[int], bytes],
                      done: Optional[List[ChunkRef]] = None) -> List[ChunkRef]:
        chunks: List[ChunkRef] = list(done or [])
        for piece in self.data_chunker.chunks(read):
            digest = digest_of(piece)
            self.store.put(piece, self.compressor, digest)
            chunks.append((digest, len(piece)))
            if time.monotonic() - self.last_checkpoint >= self.options.checkpoint_interval:
                partial = Entry(entry.name, KIND_FILE, flags=FLAG_PARTIAL, mode=entry.mode,
                                uid=entry.uid, gid=entry.gid, mtime_ns=entry.mtime_ns,
                                ctime_ns=entry.ctime_ns, ino=entry.ino, size=entry.size,
                                nlink=entry.nlink, chunks=list(chunks))
                self.checkpoint(partial)
        return chunks


def _copy_sparse_map(source: Entry, entry: Entry) -> None:
    """A sparse file's chunks mean nothing without its map: carry both."""
    if source.flags & FLAG_SPARSE:
        entry.extras[SPARSE_KEY] = source.extras.get(SPARSE_KEY, b"")


def _ns(record: BackupRecord) -> int:
    return int(record.started.timestamp()) * 1_000_000_000 + record.started.microsecond * 1000


def _settled(st: os.stat_result, started_ns: int, settle_ns: int) -> bool:
    """Was the file last changed safely before an earlier backup began?

    That backup read the file after it started; a change in the same
    timestamp tick after that read would leave size and times as they were.
    """
    return max(st.st_mtime_ns, st.st_ctime_ns) < started_ns - settle_ns


def _prefixed(head: bytes, read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """A read function that first returns ``head``, then continues with ``read``."""
    pending = [head]

    def read_more(size: int) -> bytes:
        if pending:
            return pending.pop()
        return read(size)
    return read_more
