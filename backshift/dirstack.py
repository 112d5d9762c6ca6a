"""The walk: which directories the input is inside, and which names each holds.

Paths are handled as they arrive.  The directories on the way from the
root to the current path are *open*.  When the input leaves a directory it
is closed and its entry goes into its parent (treebuilder.py).  In find
order each directory is closed once and memory is bounded by the tree's
depth; in any other order a directory left and re-entered is stored in
fragments, which readers merge (tree.py).

Whatever the input, a directory's names are unique (only a directory's
fragments share a name) and nothing is recorded below an entry that is not
a directory (FORMAT.md, "Names"): a directory swapped for a symlink while
``find`` and the backup run must not give a restore a path through the
symlink.  So every open directory keeps the names recorded in it as keyed
64-bit hashes (Python's ``hash``, randomised per process: about 60 bytes a
name), with one bit telling a directory from anything else.  A directory
re-entered also looks up, once, its fragments already stored by this backup.
"""

from typing import Callable, List, Optional

from .earlier import PreviousDir
from .records import KIND_DIR, Entry
from .tree import TreeReader
from .treebuilder import OpenDir, TreeBuilder

# fragments(components) -> this backup's stored fragments of that directory.
Fragments = Callable[[List[bytes]], List[Entry]]

# What claim() found: the name is new, was recorded as a non-directory, or
# as a directory.
NEW, NOT_A_DIRECTORY, A_DIRECTORY = 0, 1, 2


def name_key(name: bytes) -> int:
    """The key recording ``name`` as a non-directory in OpenDir.names; as a
    directory it is this | 1 (a hash, not the name: less memory per entry)."""
    return hash(name) << 1


class DirStack:
    """The open directories, root first, entered and closed as paths arrive."""

    def __init__(self, builder: TreeBuilder, previous_root: Optional[PreviousDir],
                 reader: TreeReader, fragments: Fragments) -> None:
        self._builder = builder
        self._reader = reader  # of this backup's own records, for _stored
        self._fragments = fragments
        self.dirs: List[OpenDir] = [builder.open(b"", previous_root)]
        self._names: List[bytes] = []  # names of dirs[1:], for a quick enter

    @property
    def top(self) -> OpenDir:
        return self.dirs[-1]

    def enter(self, components: List[bytes]) -> int:
        """Make the open directories root + ``components``, as far as allowed.

        Returns how many components are open: fewer than all when one was
        recorded as something other than a directory (its contents must
        not be recorded); the directory open on top is then its parent.
        """
        if components == self._names:
            return len(components)  # still in the same directory: the common case
        dirs = self.dirs
        depth = 0
        while (depth < len(components) and depth + 1 < len(dirs)
               and dirs[depth + 1].name == components[depth]):
            depth += 1
        while len(dirs) > depth + 1:
            self._close_top()
        for index in range(depth, len(components)):
            name = components[index]
            parent = dirs[-1]
            key = name_key(name)
            found = _found(parent, name, key)
            if found == NOT_A_DIRECTORY:
                return index
            before: Optional[PreviousDir] = None
            if key | 1 in parent.names:
                before = self._stored(components[:index + 1])  # left and re-entered
            elif parent.before is not None:
                before = parent.before.child(name)
            parent.names.add(key | 1)
            previous = parent.previous
            child = self._builder.open(name, previous.child(name) if previous else None)
            child.before = before
            dirs.append(child)
            self._names.append(name)
        return len(components)

    def claim(self, name: bytes) -> int:
        """Record ``name`` as a non-directory in the top directory; NEW if it was not there."""
        top = self.dirs[-1]
        key = name_key(name)
        found = _found(top, name, key)
        if found == NEW:
            top.names.add(key)
        return found

    def _stored(self, components: List[bytes]) -> Optional[PreviousDir]:
        fragments = [(entry, 0) for entry in self._fragments(components)
                     if entry.kind == KIND_DIR]
        return PreviousDir(self._reader, fragments) if fragments else None

    def _close_top(self) -> None:
        closing = self.dirs.pop()
        self._names.pop()
        self._builder.close(closing, self.dirs[-1])

    def close_all(self) -> OpenDir:
        """Close every directory but the root; return the root."""
        while len(self.dirs) > 1:
            self._close_top()
        return self.dirs[0]


def _found(directory: OpenDir, name: bytes, key: int) -> int:
    """How ``name`` (whose name_key is ``key``) is recorded in ``directory`` so far."""
    names = directory.names
    if key in names:
        return NOT_A_DIRECTORY
    if key | 1 in names:
        return A_DIRECTORY
    if directory.before is not None:
        kinds = {entry.kind == KIND_DIR for entry, _started in directory.before.raw(name)}
        if False in kinds:
            return NOT_A_DIRECTORY
        if kinds:
            return A_DIRECTORY
    return NEW
