"""The walk: which directories the input is inside.

Paths are handled as they arrive.  The directories on the way from the
root to the current path are *open*.  When the input leaves a directory it
is closed and its entry goes into its parent (treebuilder.py).  In find
order each directory is closed once and memory is bounded by the tree's
depth; in any other order a directory left and re-entered is stored in
fragments, which readers merge (tree.py).
"""

from typing import List, Optional

from .earlier import PreviousDir
from .treebuilder import OpenDir, TreeBuilder


class DirStack:
    """The open directories, root first, entered and closed as paths arrive."""

    def __init__(self, builder: TreeBuilder, previous_root: Optional[PreviousDir]) -> None:
        self._builder = builder
        self.dirs: List[OpenDir] = [builder.open(b"", previous_root)]
        self._names: List[bytes] = []  # names of dirs[1:], for a quick enter

    @property
    def top(self) -> OpenDir:
        return self.dirs[-1]

    def enter(self, components: List[bytes]) -> None:
        """Make the open directories exactly root + ``components``."""
        if components == self._names:
            return  # still in the same directory: the common case
        dirs = self.dirs
        depth = 0
        while (depth < len(components) and depth + 1 < len(dirs)
               and dirs[depth + 1].name == components[depth]):
            depth += 1
        while len(dirs) > depth + 1:
            self._close_top()
        for name in components[depth:]:
            previous = dirs[-1].previous
            dirs.append(self._builder.open(name, previous.child(name) if previous else None))
            self._names.append(name)

    def _close_top(self) -> None:
        closing = self.dirs.pop()
        self._names.pop()
        self._builder.close(closing, self.dirs[-1])

    def close_all(self) -> OpenDir:
        """Close every directory but the root; return the root."""
        while len(self.dirs) > 1:
            self._close_top()
        return self.dirs[0]
