"""The paths to back up, as find -print0 writes them: NUL-separated bytes, never decoded."""

from typing import BinaryIO, Iterator, List


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
