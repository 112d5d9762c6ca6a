"""Saving a regular file's content: reused, inline, packed or chunked.

A file whose metadata says an earlier backup has it unchanged
(earlier.unchanged) keeps that backup's content reference after every
object it names is confirmed (and touched, for expiry).  Otherwise it is
read through sourcefs's safe open: up to ``inline_max`` bytes are stored in
its entry, up to ``pack_file_max`` go into a pack (packing.py), larger
files are chunked into objects of their own, from where an interrupted
backup's checkpoint left off (a *resume point*) if one did.  The second and
later links of a multiply linked file refer to the first.
"""

import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .catalog import BackupRecord
from .checkpoint import Checkpointer, FileInProgress
from .chunking import Chunker
from .compression import Compressor
from .contentindex import ContentIndex
from .earlier import PreviousDir, unchanged
from .metadata import Metadata, copy_xattrs
from .objectstore import ObjectStore, digest_of
from .packing import Packer, content_digest
from .pipeline import StorePipeline
from .readahead import ReadAhead
from .records import (FLAG_INLINE, FLAG_PACKED, FLAG_PARTIAL, FLAG_SPARSE, KIND_HARDLINK,
                      SPARSE_KEY, ChunkRef, Entry, RecordError, encode_extents)
from .report import Reporter
from .sourcefs import SourceFile, SourceTree
from .tree import split_path


class FileSaver:
    """Gives regular files' entries their content, for one backup."""

    def __init__(self, source: SourceTree, store: StorePipeline, compressor: Compressor,
                 chunker: Chunker, packer: Packer, metadata: Metadata, reporter: Reporter,
                 record: BackupRecord, readahead: ReadAhead, checkpoints: Checkpointer,
                 inline_max: int, pack_file_max: int, inode_check: bool,
                 settle_ns: int, moved: Optional[ContentIndex] = None) -> None:
        self._source = source
        self._store = store
        self._objects: ObjectStore = store.objects
        self._compressor = compressor
        self._chunker = chunker
        self._packer = packer
        self._metadata = metadata
        self._reporter = reporter
        self._record = record
        self._readahead = readahead
        self._checkpoints = checkpoints
        self._inline_max = inline_max
        self._pack_file_max = pack_file_max
        self._inode_check = inode_check
        self._settle_ns = settle_ns
        self._moved = moved  # small files of the last backup by content
        # First link saved of each multiply linked file, with how many of
        # its links are still to come: forgotten once all were met, so the
        # map holds only files whose links are still ahead.
        self._hardlinks: Dict[Tuple[int, int], Tuple[bytes, Entry, int]] = {}

    def save(self, path: bytes, entry: Entry, st: os.stat_result,
             previous: Optional[PreviousDir]) -> bool:
        """Give ``entry`` (metadata of ``st``) its content; True if it got its xattrs too.

        Raises SourceError if the file cannot be read.
        """
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in self._hardlinks:
            self._link(entry, key)
            return False
        entry.size = st.st_size  # what a checkpoint of a partly read file records
        if not self._reuse_previous(entry, st, previous):
            self._read_content(path, entry, st, previous)
        if st.st_nlink > 1:
            self._hardlinks[key] = (b"/".join(split_path(path)), entry, st.st_nlink - 1)
        return True

    def _link(self, entry: Entry, key: Tuple[int, int]) -> None:
        first_path, first, to_come = self._hardlinks.pop(key)
        if to_come > 1:
            self._hardlinks[key] = (first_path, first, to_come - 1)
        entry.kind = KIND_HARDLINK
        entry.target = first_path
        entry.size = first.size
        entry.flags = first.flags & (FLAG_INLINE | FLAG_SPARSE)
        if first.flags & FLAG_PACKED:
            self._packer.share(first, entry)
        else:
            entry.inline, entry.chunks = first.inline, first.chunks
        _copy_sparse_map(first, entry)

    def _candidates(self, previous: Optional[PreviousDir], name: bytes, st: os.stat_result,
                    partial: bool) -> Iterator[Entry]:
        """Earlier entries for ``name`` whose metadata says the file is unchanged.

        ``partial`` picks the prefixes checkpointed of files being read when
        an earlier backup was interrupted, instead of whole files.
        """
        if previous is None:
            return
        for candidate, started_ns in previous.raw(name):
            if bool(candidate.flags & FLAG_PARTIAL) == partial and \
                    unchanged(candidate, st, started_ns, self._inode_check, self._settle_ns):
                try:
                    yield candidate.decode()
                except RecordError:
                    continue

    def _touch_all(self, chunks: List[ChunkRef]) -> bool:
        """Are all these objects still there (touched, so expiry keeps them)?"""
        return all(self._objects.touch(digest) for digest, _ in chunks)

    def _reuse_previous(self, entry: Entry, st: os.stat_result,
                        previous: Optional[PreviousDir]) -> bool:
        """Take content from an earlier backup when metadata says it is unchanged."""
        for candidate in self._candidates(previous, entry.name, st, partial=False):
            if candidate.flags & FLAG_INLINE and candidate.inline is None:
                continue
            if not candidate.flags & (FLAG_INLINE | FLAG_SPARSE) and not candidate.chunks \
                    and candidate.size:
                continue
            if not self._touch_all(candidate.chunks):
                continue  # expired meanwhile: try another, else read the file again
            entry.flags |= candidate.flags & (FLAG_INLINE | FLAG_SPARSE | FLAG_PACKED)
            entry.inline, entry.chunks = candidate.inline, list(candidate.chunks)
            entry.offset, entry.content_digest = candidate.offset, candidate.content_digest
            _copy_sparse_map(candidate, entry)
            # Setting an extended attribute changes the ctime, so equal
            # ctimes mean equal attributes: take them, skip listxattr.
            copy_xattrs(candidate, entry)
            entry.size = candidate.size
            self._record.files_reused += 1
            self._record.bytes_reused += entry.size
            return True
        return False

    def _resume_point(self, entry: Entry, st: os.stat_result,
                      previous: Optional[PreviousDir]) -> List[ChunkRef]:
        """Chunks an interrupted backup already stored for this very file."""
        for candidate in self._candidates(previous, entry.name, st, partial=True):
            if self._touch_all(candidate.chunks):
                return list(candidate.chunks)
        return []

    def _read_content(self, path: bytes, entry: Entry, st: os.stat_result,
                      previous: Optional[PreviousDir]) -> None:
        self._readahead.note_read()
        with self._source.open_file(path, st) as source:
            self._metadata.add_xattrs_of(path, entry, source)
            if st.st_size <= self._pack_file_max:
                head = source.read(self._pack_file_max + 1)
                if len(head) <= self._pack_file_max:
                    entry.size = len(head)
                    if len(head) <= self._inline_max:
                        entry.flags |= FLAG_INLINE
                        entry.inline = head
                    else:
                        self._pack(entry, head, previous)
                    self._check_unchanged(path, source)
                    return
                entry.chunks = self._store_stream(entry, _prefixed(head, source.read))
            else:
                done = self._resume_point(entry, st, previous)
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

    def _pack(self, entry: Entry, content: bytes, previous: Optional[PreviousDir]) -> None:
        """Store a small file's content in a pack, or point at an earlier copy of it.

        A file read again although an earlier backup has it (its times were
        too recent to trust, say) keeps that backup's reference if the
        content is the same: packing it anew would store it twice.  This
        compares content, not metadata: it is not a decision of ``unchanged``.
        """
        key = content_digest(content)
        for earlier, _started_ns in previous.get(entry.name) if previous else ():
            if (earlier.flags & FLAG_PACKED and earlier.content_digest == key
                    and earlier.size == len(content) and earlier.chunks
                    and self._point_into(entry, earlier.chunks[0], earlier.offset, key)):
                return
        # A file moved from elsewhere in the earlier backup is found by content.
        found = self._moved.find(key, len(content)) if self._moved is not None else None
        if found is not None and self._point_into(entry, found[0], found[1], key):
            return
        self._packer.add(entry, content, key)  # pending until the pack is cut

    def _point_into(self, entry: Entry, pack: ChunkRef, offset: int, key: bytes) -> bool:
        """Make ``entry`` refer to its content in an earlier pack, if the pack is still there."""
        if not self._objects.touch(pack[0]):
            return False
        entry.flags |= FLAG_PACKED
        entry.chunks, entry.offset = [pack], offset
        entry.content_digest = key
        return True

    def _check_unchanged(self, path: bytes, source: SourceFile) -> None:
        if source.changed_while_read():
            self._reporter.error(path, "file changed as we read it")

    def _store_stream(self, entry: Entry, read: Callable[[int], bytes],
                      done: Optional[List[ChunkRef]] = None) -> List[ChunkRef]:
        # What a checkpoint shows of the file meanwhile (FORMAT.md, PARTIAL).
        progress = FileInProgress(entry, done or [], self._store.submitted)
        for piece in self._chunker.chunks(read):
            digest = digest_of(piece)
            self._store.put(piece, self._compressor, digest)
            progress.add((digest, len(piece)), self._store.submitted)
            self._checkpoints.tick(progress)
        return list(progress.chunks)


def _copy_sparse_map(source: Entry, entry: Entry) -> None:
    """A sparse file's chunks mean nothing without its map: carry both."""
    if source.flags & FLAG_SPARSE:
        entry.extras[SPARSE_KEY] = source.extras.get(SPARSE_KEY, b"")


def _prefixed(head: bytes, read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """A read function that first returns ``head``, then continues with ``read``."""
    pending = [head]

    def read_more(size: int) -> bytes:
        if pending:
            return pending.pop()
        return read(size)
    return read_more
