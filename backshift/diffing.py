"""``--diff``: what changed between two backups, path by path.

Each path is reported once with a letter, as ``git diff --name-status``:
``+`` added, ``-`` removed, ``M`` content changed (data, link target,
device numbers, or the kind of entry), ``m`` only metadata changed (mode,
owner, modification time, extended attributes).  A directory whose record
is the same in both backups (same digests or inline bytes) holds the same
entries, so it is skipped without being read.
"""

from typing import Callable, Dict, Iterator, List, Optional, Tuple

from .catalog import BackupRecord
from .finding import children, raise_damage, shown, start_entries
from .records import FLAG_INLINE, FLAG_PACKED, FLAG_PARTIAL, KIND_DIR, SPARSE_KEY, Entry
from .tree import DamageHandler, TreeReader

ADDED, REMOVED, CHANGED, METADATA = "+", "-", "M", "m"
# on_change(letter, path, the entry in the newer backup, or the older one if removed)
ChangeHandler = Callable[[str, bytes, Entry], None]
# One path in one backup: its entries (a directory may be stored in fragments).
Node = List[Entry]


def content_key(entry: Entry) -> tuple:
    """What must be equal for two entries to have the same content."""
    if entry.flags & FLAG_INLINE:
        data: object = entry.inline
    elif entry.flags & FLAG_PACKED:
        data = entry.content_digest or (entry.chunks[0][0] if entry.chunks else b"", entry.offset)
    else:
        data = tuple(digest for digest, _length in entry.chunks)
    return (entry.kind, entry.size, entry.target, entry.rdev_major, entry.rdev_minor,
            entry.extras.get(SPARSE_KEY), data)


def metadata_key(entry: Entry) -> tuple:
    """What must be equal for two entries to have the same metadata."""
    attributes = sorted((key, value) for key, value in entry.extras.items() if key != SPARSE_KEY)
    return (entry.mode, entry.uid, entry.gid, entry.uname, entry.gname, entry.mtime_ns,
            shown(entry), attributes)


class Differ:
    """Compares two backups' trees, reading only directories whose records differ."""

    def __init__(self, reader: TreeReader, on_change: ChangeHandler,
                 on_damage: DamageHandler) -> None:
        self.reader = reader
        self.on_change = on_change
        self.on_damage = on_damage
        self.records_read = 0

    def run(self, old: BackupRecord, new: BackupRecord, start: bytes = b"") -> None:
        before = start_entries(self.reader, old, start, self.on_damage)
        after = start_entries(self.reader, new, start, self.on_damage)
        path = before[0][0] if before else after[0][0] if after else b""
        # Pairs of nodes still to compare; last in, first out, so that a
        # directory's entries come out in order, right after it.
        work: List[Tuple[bytes, Node, Node]] = [
            (path, _present([entry for _path, entry in before]),
             _present([entry for _path, entry in after]))]
        while work:
            path, old_node, new_node = work.pop()
            work.extend(reversed(self._compare(path, old_node, new_node)))

    def _compare(self, path: bytes, old: Node, new: Node) -> List[Tuple[bytes, Node, Node]]:
        """Report ``path``; return the pairs below it still to compare."""
        if not new:
            self._whole(REMOVED, path, old)
            return []
        if not old:
            self._whole(ADDED, path, new)
            return []
        old_dir, new_dir = _is_dir(old), _is_dir(new)
        if old_dir != new_dir:  # a file became a directory or the other way
            self._whole(REMOVED, path, old)
            self._whole(ADDED, path, new)
            return []
        old_head, new_head = _head(old), _head(new)
        if not new_dir:
            if content_key(old_head) != content_key(new_head):
                self.on_change(CHANGED, path, new_head)
            elif metadata_key(old_head) != metadata_key(new_head):
                self.on_change(METADATA, path, new_head)
            return []
        if metadata_key(old_head) != metadata_key(new_head):
            self.on_change(METADATA, path, new_head)
        if _keys(self.reader, old) == _keys(self.reader, new):
            return []  # the same records: the same entries, all the way down
        old_children, new_children = self._children(path, old), self._children(path, new)
        pairs = [(child_path, entries, new_children.pop(child_path, []))
                 for child_path, entries in old_children.items()]
        pairs.extend((child_path, [], entries) for child_path, entries in new_children.items())
        return pairs

    def _children(self, path: bytes, node: Node) -> Dict[bytes, Node]:
        """A directory's entries by path, in stored order, fragments merged."""
        found: Dict[bytes, Node] = {}
        for fragment in node:
            self.records_read += 1
            for child_path, child in children(self.reader, path, fragment, self.on_damage):
                if not child.flags & FLAG_PARTIAL:
                    found.setdefault(child_path, []).append(child)
        return found

    def _whole(self, letter: str, path: bytes, node: Node) -> None:
        """Report a node and, for a directory, everything below it, with one letter."""
        for entry_path, entry in self._subtree(path, node):
            self.on_change(letter, entry_path, entry)

    def _subtree(self, path: bytes, node: Node) -> Iterator[Tuple[bytes, Entry]]:
        stack: List[Tuple[bytes, Node]] = [(path, node)]
        while stack:
            path, node = stack.pop()
            if shown(_head(node)):
                yield path, _head(node)
            if _is_dir(node):
                stack.extend(reversed(list(self._children(path, node).items())))


def _present(entries: List[Entry]) -> Node:
    return [entry for entry in entries if not entry.flags & FLAG_PARTIAL]


def _head(node: Node) -> Entry:
    """The entry that carries a node's metadata (a directory's first shown fragment)."""
    return next((entry for entry in node if shown(entry)), node[0])


def _is_dir(node: Node) -> bool:
    return node[0].kind == KIND_DIR


def _keys(reader: TreeReader, node: Node) -> List[bytes]:
    return [reader.directory_key(entry) for entry in node]


def diff(reader: TreeReader, old: BackupRecord, new: BackupRecord, start: bytes,
         on_change: ChangeHandler, on_damage: Optional[DamageHandler] = None) -> Differ:
    """Report every path that differs between ``old`` and ``new`` at or below ``start``."""
    differ = Differ(reader, on_change, on_damage or raise_damage)
    differ.run(old, new, start)
    return differ
