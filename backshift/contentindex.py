"""Small files of an earlier backup found by content, wherever they were.

A re-backup compares each file with the entry of the same path in earlier
backups.  A small file that moved (its directory renamed between two
releases of a source tree, say) has no such entry, and would be packed and
stored again.  ContentIndex finds it by its content digest (the one every
PACKED entry carries, FORMAT.md "Packs") among all the packed files of the
most recent earlier backup, so its entry points into the pack that already
holds it.

The index is built on first use only, by one walk of that backup's tree: a
backup that packs nothing new (an unchanged tree) never pays for it.  It
takes 24 bytes per packed file: the sorted 16-byte digests in one bytes
object, beside the pack number, offset and size of each.
"""

import array
from typing import Dict, List, Optional, Sequence, Tuple

from .records import FLAG_PACKED, FLAG_PARTIAL, KIND_FILE, ChunkRef, Entry
from .tree import TreeReader

KEY = 16  # bytes of a content digest
# Where a file is, in one u64: pack number, offset in the pack, size.
_BITS = 22
_MASK = (1 << _BITS) - 1
# (pack reference, offset of the content in it) of a file found.
Found = Tuple[ChunkRef, int]


class ContentIndex:
    """Packed files of one earlier backup by content digest."""

    def __init__(self, reader: TreeReader, root: Sequence[ChunkRef]) -> None:
        self._reader = reader
        self._root = list(root)
        self._keys = b""
        self._packs: List[ChunkRef] = []
        self._where = array.array("Q")  # see _BITS
        self._built = False

    def find(self, key: bytes, size: int) -> Optional[Found]:
        """Where a file of content digest ``key`` and ``size`` bytes was packed, if it was."""
        if not self._built:
            self._build()
        keys = self._keys
        low, high = 0, len(keys) // KEY
        while low < high:
            middle = (low + high) // 2
            if keys[middle * KEY:(middle + 1) * KEY] < key:
                low = middle + 1
            else:
                high = middle
        if low * KEY < len(keys) and keys[low * KEY:(low + 1) * KEY] == key:
            where = self._where[low]
            if where & _MASK == size:
                return self._packs[where >> 2 * _BITS], (where >> _BITS) & _MASK
        return None

    def _build(self) -> None:
        self._built = True
        found: List[Tuple[bytes, int]] = []
        pack_numbers: Dict[ChunkRef, int] = {}
        try:
            for _path, entry in self._reader.walk(self._root, include_implicit=True,
                                                  on_damage=lambda path, reason: None):
                if _indexable(entry):
                    pack = entry.chunks[0]
                    number = pack_numbers.setdefault(pack, len(pack_numbers))
                    if number >> (64 - 2 * _BITS):
                        break  # more packs than the index can number: the rest unindexed
                    found.append((entry.content_digest,
                                  (number << _BITS | entry.offset) << _BITS | entry.size))
        except Exception:  # a damaged earlier backup only costs us storing files again
            pass
        found.sort()
        self._keys = b"".join(key for key, _where in found)
        self._where = array.array("Q", (where for _key, where in found))
        self._packs = sorted(pack_numbers, key=pack_numbers.__getitem__)


def _indexable(entry: Entry) -> bool:
    """A whole packed file whose offset and size fit the index's bits."""
    return (entry.kind == KIND_FILE and entry.flags & FLAG_PACKED != 0
            and not entry.flags & FLAG_PARTIAL and len(entry.content_digest) == KEY
            and len(entry.chunks) == 1 and entry.offset <= _MASK and entry.size <= _MASK)
