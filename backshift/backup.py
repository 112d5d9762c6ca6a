"""How a backup runs: paths in, objects and records out.

    paths (find -print0) -> lstat + safe open (sourcefs) -> chunker -> object store
                                                   (small files -> packer -> object store)
                         -> directory records (treebuilder) -> backup record (catalog)

This module is the orchestrator: it builds the parts of one run and ends
it.  Each path is looked at once and handed to the concern that owns it:

* entrysaver.py each path saved as an entry (the re-backup's common case);
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
from typing import Iterable, List, Optional

from .atomic import remove_if_writer_dead
from .catalog import STATE_COMPLETE, STATE_FAILED, BackupRecord, make_backup_id, utc_now
from .checkpoint import Checkpointer
from .chunking import DATA_PARAMS, METADATA_PARAMS, Chunker
from .compression import CompressionSpec, Compressor, for_chunks
from .contentindex import ContentIndex
from .dirstack import DirStack
from .earlier import PreviousDir, ReuseRule, choose_previous
from .entrysaver import EntrySaver
from .filesaver import FileSaver
from .metadata import Metadata
from .objectstore import KeptInCache
from .packing import Packer
from .pathinput import InputError
from .pipeline import RecordCache, StorePipeline
from .readahead import ReadAhead
from .records import PACKREF_SIZE, Entry
from .report import Reporter
from .savedir import SaveDir
from .sourcefs import SourceTree
from .tree import TreeReader
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
        self.files = FileSaver(self.source, self.store, for_chunks(compressor),
                               Chunker(DATA_PARAMS), self.packer, self.metadata, self.reporter,
                               self.record, self.readahead, self.checkpoints, options.inline_max,
                               options.pack_file_max, options.inode_check, options.settle_ns,
                               moved)
        reader = TreeReader(self.records)
        rule = ReuseRule(options.inode_check, options.settle_ns, self.metadata.owners)
        self.stack = DirStack(self.builder,
                              PreviousDir.of_root(reader, previous, self.records.prefetch, rule),
                              TreeReader(savedir.objects), self._stored_fragments)
        self.entries = EntrySaver(self.stack, self.builder, self.files, self.metadata,
                                  self.source, savedir.objects, self.record, self.reporter,
                                  rule, self.checkpoints.tick)

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
            self.entries.save_all(itertools.chain((first,), given))
            self.packer.cut()
            root = self.builder.finish_root(self.stack.close_all())
            self.store.sync()  # every object written and durable before the record
            self.record.root = root
            self._update(self.record)
            self.record.state = STATE_COMPLETE if self.entries.saved else STATE_FAILED
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
