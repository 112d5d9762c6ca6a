"""Small files packed together: one object holds the contents of many.

Most files of a real system are a few KiB.  An object of its own would cost
each one a file, a 4 KiB block, an fsync and an xz stream that compresses
poorly; stored inside the directory record (as backshift once did) they made
every later backup decompress them again just to compare metadata.  So
their contents go, back to back in the order met, into *packs*: objects
like any other, named by the digest of their content.  A file's entry
refers to its pack and its offset there (FORMAT.md, "Packs"), so a later
backup that finds the file unchanged copies the reference without reading
anything, and directory records hold metadata only.

Where a pack ends depends only on the contents of the files in it (the
rule is in ``PackParams``), so the same run of files packed on two hosts,
or again after a rename, gives the same packs from the first cut on: packs
deduplicate as chunks do, at file granularity.  Within one backup, a small
file whose content is in the open pack or one of the few packs cut just
before refers to that copy.  Not further back: restoring it would mean
decompressing a whole pack far from the ones its neighbours are in.

Entries are handed over before their pack is complete; they are *pending*
(``Entry.pending``) until the pack is cut, when every pending entry gets its
reference at once and ``on_cut`` is told, so that the caller can encode them.
"""

import collections
import hashlib
from typing import Callable, Deque, Dict, List, Optional, Tuple, Union

from .compression import CompressionSpec, Compressor, already_compressed, thorough
from .records import FLAG_PACKED, ChunkRef, Entry


def content_digest(content: bytes) -> bytes:
    """The digest a packed file's entry carries (FORMAT.md, "Packs")."""
    return hashlib.blake2b(content, digest_size=16).digest()


class PackParams:
    """Where packs are cut.

    After a file is added, the pack is cut if it holds at least ``min_size``
    bytes and the file's content hash, as a fraction of 2**32, is below
    len(content) / ``spread``: a cut after roughly every ``spread`` bytes
    past the minimum, decided by content alone.  It is always cut at
    ``max_size`` bytes or ``max_files`` files, which bound a backup's
    memory of pending entries.

    Packs of 1 to 4 MiB (about 2 on average): xz gains 4% on a pack of
    4 MB of source files over one of 750 KB, the pack size of 256 KiB /
    512 KiB / 2 MiB before, and a later backup's new packs hold only what
    changed, so larger packs do not cost deduplication.  A restore keeps
    tarout.PACKS_CACHED of them decompressed: 8 x 4 MiB at most.
    """

    def __init__(self, min_size: int = 1024 * 1024, spread: int = 1024 * 1024,
                 max_size: int = 4 * 1024 * 1024, max_files: int = 8192) -> None:
        self.min_size = min_size
        self.spread = spread
        self.max_size = max_size
        self.max_files = max_files


# Packs, besides the open one, whose contents a new small file may point
# into instead of being packed again.  A restore keeps more packs than
# this decompressed (tarout.PACKS_CACHED), so such a file costs it nothing.
DEDUP_PACKS = 3

Store = Callable[[bytes, Compressor], bytes]  # put(data, compressor) -> digest


class _Lane:
    """One pack being filled: its bytes and the content digests put there."""

    __slots__ = ("compressor", "buffer", "keys")

    def __init__(self, compressor: Compressor) -> None:
        self.compressor = compressor
        self.buffer = bytearray()
        self.keys: List[bytes] = []


class Packer:
    """Collects small files' contents into packs, resolving entries at each cut.

    Contents that are compressed already (already_compressed: gzip, PNG,
    zip...) fill a pack of their own, stored raw: xz gains nothing on them
    and runs five times slower on such data than on text.  Both packs are
    cut together, by the rule of PackParams applied to their sum, so every
    cut still resolves every pending entry.  A pack cut before its minimum
    size (a checkpoint, the end of the backup) is compressed ``thorough``ly.
    """

    def __init__(self, put: Store, compressor: Compressor, on_cut: Callable[[], None],
                 params: Optional[PackParams] = None) -> None:
        self._put = put
        self._on_cut = on_cut
        self.params = params or PackParams()
        self._main = _Lane(compressor)
        self._thorough = thorough(compressor)
        # With no compression there is nothing to keep apart.
        self._raw = self._main if compressor.spec.name == "none" else \
            _Lane(Compressor(CompressionSpec("none", None)))
        self._size = 0  # bytes in the open packs
        # (entry, lane, offset in the lane's open pack)
        self._pending: List[Tuple[Entry, _Lane, int]] = []
        # content digest -> (pack reference, or the lane while open; offset)
        self._known: Dict[bytes, Tuple[Union[ChunkRef, _Lane], int]] = {}
        self._recent: Deque[List[bytes]] = collections.deque()  # keys of the packs cut last
        self.packs = 0

    @property
    def pending(self) -> bool:
        """Are some entries waiting for the open pack to be cut?"""
        return bool(self._pending)

    def add(self, entry: Entry, content: bytes, key: Optional[bytes] = None) -> bool:
        """Pack ``content`` as ``entry``'s; True if the entry's reference is already final.

        ``key`` is content_digest(content), if the caller has it.  False
        means the entry is pending until the next cut (which may happen
        within this call, before it returns).
        """
        entry.flags |= FLAG_PACKED
        if key is None:
            key = content_digest(content)
        entry.content_digest = key
        known = self._known.get(key)
        if known is not None:
            where, offset = known
            if not isinstance(where, _Lane):
                entry.chunks, entry.offset = [where], offset
                return True
            self._wait(entry, where, offset)
            # Repeats of a content still count against max_files, which
            # bounds the pending entries a backup holds.
            if len(self._pending) >= self.params.max_files:
                self.cut()
            return False
        lane = self._raw if already_compressed(content) else self._main
        offset = len(lane.buffer)
        lane.buffer += content
        lane.keys.append(key)
        self._size += len(content)
        self._wait(entry, lane, offset)
        self._known[key] = (lane, offset)
        if self._should_cut(key, len(content)):
            self.cut()
        return False

    def share(self, first: Entry, entry: Entry) -> bool:
        """Give ``entry`` (a hard link) the content reference of ``first``, pending or not."""
        entry.flags |= FLAG_PACKED
        entry.content_digest = first.content_digest
        if first.pending:
            for pending, lane, offset in self._pending:
                if pending is first:
                    self._wait(entry, lane, offset)
                    return False
        entry.chunks, entry.offset = list(first.chunks), first.offset
        return True

    def _wait(self, entry: Entry, lane: _Lane, offset: int) -> None:
        """``entry`` gets its reference at the next cut; until then it is ``pending``."""
        entry.pending = True
        self._pending.append((entry, lane, offset))

    def _should_cut(self, key: bytes, length: int) -> bool:
        params = self.params
        if self._size >= params.max_size or len(self._pending) >= params.max_files:
            return True
        if self._size < params.min_size:
            return False
        return int.from_bytes(key[:4], "little") * params.spread < length << 32

    def cut(self) -> None:
        """Store the open packs (if any entry waits) and resolve their entries."""
        if not self._pending:
            return
        refs: Dict[int, ChunkRef] = {}
        cut_keys: List[bytes] = []
        # Thorough only for a cut made before the lanes together reached the
        # minimum (a checkpoint, the end): either lane alone may be below it
        # in a cut the rule makes.
        main_compressor = self._thorough if self._size < self.params.min_size \
            else self._main.compressor
        for lane in (self._main, self._raw) if self._raw is not self._main else (self._main,):
            if lane.keys:
                pack = bytes(lane.buffer)
                compressor = main_compressor if lane is self._main else lane.compressor
                refs[id(lane)] = (self._put(pack, compressor), len(pack))
                self.packs += 1
            for key in lane.keys:
                self._known[key] = (refs[id(lane)], self._known[key][1])
            cut_keys += lane.keys
            lane.buffer = bytearray()
            lane.keys = []
        for entry, lane, offset in self._pending:
            entry.chunks, entry.offset = [refs[id(lane)]], offset
            entry.pending = False
        self._recent.append(cut_keys)
        if len(self._recent) > DEDUP_PACKS:
            for key in self._recent.popleft():
                self._known.pop(key, None)
        self._size = 0
        self._pending = []
        self._on_cut()
