"""The paths to back up, as find -print0 writes them: NUL-separated bytes, never decoded."""

from typing import BinaryIO, Iterator, List

STDIN_NAME = "standard input"


class InputError(Exception):
    """The input names no path, or is not NUL-separated: nothing may be recorded."""


class NulPaths:
    """Paths from a NUL-separated byte stream (find -print0), never decoded.

    Iterating gives one path at a time; ``batches`` gives, read by read,
    the paths each read completed (readahead.ReadAhead hands them on so).
    Input that names no path raises InputError, and so does input with
    newlines and no NUL byte: a list from find without -print0, which
    would otherwise be taken for one long path.  Both are known before the
    first path is given out.
    """

    def __init__(self, stream: BinaryIO, name: str = STDIN_NAME,
                 block_size: int = 65536) -> None:
        self._stream = stream
        self._name = name  # for error lines
        self._block_size = block_size

    def batches(self) -> Iterator[List[bytes]]:
        named = nul_seen = False
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
            nul_seen = nul_seen or bool(parts)
            batch = [part for part in parts if part]
            if batch:
                named = True
                yield batch
        if pending:
            if not nul_seen and b"\n" in pending:
                raise InputError("%s: paths separated by newlines, not NUL bytes; use "
                                 "find ... -print0 (a --filelist holds NUL-separated paths "
                                 "too)" % self._name)
            named = True
            yield [pending]
        if not named:
            raise InputError("%s: no path to back up; nothing recorded" % self._name)

    def __iter__(self) -> Iterator[bytes]:
        for batch in self.batches():
            yield from batch


def iter_nul_paths(stream: BinaryIO, name: str = STDIN_NAME,
                   block_size: int = 65536) -> NulPaths:
    """Paths from a NUL-separated byte stream (find -print0), never decoded."""
    return NulPaths(stream, name, block_size)
