"""Content-defined chunking.

A stream is cut into chunks whose boundaries depend only on the bytes near
each boundary, so that an insertion or deletion changes only the chunks
around it.

The algorithm is part of the repository format, specified normatively in
FORMAT.md, "Chunking": two implementations that follow that text cut every
stream at the same places.  The names below (SEED, T = TABLE, SHIFTS, C0,
WH = WINDOW_HASH, B_STRICT, B_LOOSE) are the ones it uses.

Implementation notes
--------------------

A per-byte loop in CPython runs at a few MB/s, so this module evaluates the
definition with whole-buffer operations that run in C: ``bytes.translate``
applies T, ``int.from_bytes`` turns a segment into one big integer, the
shift/XOR steps of the definition are big-integer operations, and the cut condition is
folded into a single byte, ``Z_i = h_i | h_(i-1) | ... | (h_(i-k) & mask)``,
computed as ORs of shifted integers, so that ``bytes.find(b"\\0")`` (a
memchr) finds the first cut in the segment after ``int.to_bytes``.  Only the
region [min_size, max_size) of each chunk (plus the window before it) is
hashed, in segments of SEGMENT bytes, so that most of the work stops at the
first cut.  A segment consisting of one repeated byte is skipped without
hashing (it cannot contain a cut).
"""

import hashlib
from typing import Callable, Iterator, List, NamedTuple, Optional, Tuple

__all__ = [
    "ChunkParams",
    "DATA_PARAMS",
    "METADATA_PARAMS",
    "Chunker",
    "window_hashes",
]

SEED = b"backshift-chunker-v1"
SHIFTS = (5, 13, 31, 67, 139)
C0 = 0xA5
NORMALIZATION = 2  # bits added before avg_size, removed from avg_size on

#: Bytes of the window that h_i depends on, besides x_i itself.
WINDOW_HASH = (sum(SHIFTS) + 7) // 8

#: The byte permutation T (FORMAT.md, "Chunking").
TABLE = bytes(
    sorted(range(256), key=lambda v: hashlib.sha256(SEED + bytes([v])).digest())
)

#: Number of candidate positions hashed per big-integer pass.  Small enough
#: that the integers stay in the CPU cache and below the allocator's
#: mmap threshold, large enough that the per-segment Python overhead is
#: negligible.
SEGMENT = 32 * 1024

#: Size of each read() request made by Chunker.chunks().
READ_SIZE = 4 * 1024 * 1024

_Getter = Callable[[int, int], bytes]


class ChunkParams(NamedTuple):  # not a dataclass: importing dataclasses costs ~10 ms
    min_size: int
    avg_size: int  # nominal average chunk size
    max_size: int


# Data: 512 KiB / 1 MiB / 8 MiB (the same triple restic uses).  Only
# [min_size, max_size) of each chunk is hashed, so min_size = avg_size / 2
# leaves about half of the input unhashed.  Measured with
# bench/bench_chunker.py, boundary finding was 1.2-1.4x faster than with
# min_size = 256 KiB (which hashes ~75% of the input), and only this choice
# keeps >= 200 MB/s with a margin when the machine's other core is busy.
# The mean on random data is ~1.05 MiB (B = 19: strict 21 bits, loose 17).
# max_size is large so that long runs of zeros (sparse files, disk images)
# give few chunks; other data rarely reaches it, because the loose
# condition after avg_size expects a cut every ~128 KiB.
DATA_PARAMS = ChunkParams(512 * 1024, 1024 * 1024, 8 * 1024 * 1024)

# Metadata: serialized directory records, small so that a change in one
# directory rewrites little; mean ~62 KiB on random data, ~64 KiB on text
# (B = 15: strict 17 bits, loose 13).
METADATA_PARAMS = ChunkParams(16 * 1024, 64 * 1024, 256 * 1024)


def _bits(params: ChunkParams) -> Tuple[int, int]:
    """(B_STRICT, B_LOOSE) for params, as in FORMAT.md, "Chunking"."""
    b = (params.avg_size - params.min_size).bit_length() - 1
    return b + NORMALIZATION, b - NORMALIZATION


def window_hashes(data: bytes) -> bytes:
    """The hash bytes h_0 .. h_(len-1) of data taken as one chunk.

    A direct (unsegmented) evaluation of the definition in the module
    docstring, for tests and for other implementations to compare with."""
    n = len(data)
    if not n:
        return b""
    x = int.from_bytes(bytes(data).translate(TABLE), "little")
    for d in SHIFTS:
        x ^= x << d
    x &= (1 << (8 * n)) - 1
    x ^= _repeat_int(C0, n)
    return x.to_bytes(n, "little")


def _repeat_int(byte: int, length: int) -> int:
    return int.from_bytes(bytes([byte]) * length, "little")


class _Condition:
    """Precomputed constants to evaluate one cut condition on segments."""

    __slots__ = ("k", "mask")

    def __init__(self, bits: int, length: int) -> None:
        self.k, r = divmod(bits, 8)
        self.mask = _repeat_int((1 << r) - 1, length) if r else 0


class Chunker:
    """Content-defined chunker; the algorithm is in FORMAT.md, "Chunking"."""

    def __init__(self, params: ChunkParams) -> None:
        if not 0 < params.min_size < params.avg_size < params.max_size:
            raise ValueError("need 0 < min_size < avg_size < max_size: %r" % (params,))
        strict, loose = _bits(params)
        if loose < 1:
            raise ValueError("avg_size - min_size too small: %r" % (params,))
        self.params = params
        self._min = params.min_size
        self._avg = params.avg_size
        self._max = params.max_size
        # Bytes before a tested position that the folded condition reads.
        self._overlap = strict // 8 + WINDOW_HASH
        if self._min <= self._overlap + 1:
            raise ValueError("min_size too small for the hash window: %r" % (params,))
        length = SEGMENT + self._overlap
        self._c0 = _repeat_int(C0, length)
        self._strict = _Condition(strict, length)
        self._loose = _Condition(loose, length)

    # -- public API ------------------------------------------------------

    def chunks(self, read: Callable[[int], bytes]) -> Iterator[bytes]:
        """Yield the chunks of the stream read(n) supplies (read returns b'' at end).
        Boundaries depend only on content, never on how read() splits the data.

        read is called with n = READ_SIZE (short reads are fine).  At most
        max_size + READ_SIZE bytes are read ahead of the chunk being
        yielded, and the buffer holds at most one partly used read block
        besides them."""
        buf = _BlockBuffer(read)
        max_size = self._max
        pos = 0
        while True:
            end = buf.fill(pos + max_size)
            if pos >= end:
                return
            cut = self._next_cut(buf.get, pos, end)
            yield buf.get(pos, cut)
            buf.release(cut)
            pos = cut

    def split(self, data: bytes) -> List[bytes]:
        """Chunks of an in-memory buffer (same boundaries as chunks() would give)."""
        if not isinstance(data, bytes):
            data = bytes(data)
        return [data[a:b] for a, b in self.cut_ranges(data)]

    def cut_ranges(self, data: bytes) -> List[Tuple[int, int]]:
        """(start, end) offsets of the chunks of data, without copying them."""
        if not isinstance(data, bytes):
            data = bytes(data)
        get = data.__getitem__
        out = []
        pos = 0
        end = len(data)
        while pos < end:
            cut = self._next_cut(lambda a, b: get(slice(a, b)), pos, end)
            out.append((pos, cut))
            pos = cut
        return out

    # -- internals -------------------------------------------------------

    def _next_cut(self, get: _Getter, start: int, end: int) -> int:
        """End offset of the chunk that starts at start.

        get(a, b) returns the stream bytes [a, b).  [start, end) must hold at
        least max_size bytes unless end is the end of the stream."""
        limit = min(end, start + self._max)
        lo = start + self._min
        if lo >= limit:
            return limit
        mid = min(start + self._avg, limit)
        cut = self._scan(get, lo, mid, self._strict)
        if cut is None and mid < limit:
            cut = self._scan(get, mid, limit, self._loose)
        return limit if cut is None else cut

    def _scan(self, get: _Getter, lo: int, hi: int, cond: _Condition) -> Optional[int]:
        """Smallest n in [lo, hi) such that a cut after buf[n-1] meets cond."""
        overlap = self._overlap
        c0 = self._c0
        k = cond.k
        mask = cond.mask
        table = TABLE
        shifts = SHIFTS
        i = lo - 1  # index of the last byte before the tested cut
        stop = hi - 1
        while i < stop:
            j = min(i + SEGMENT, stop)
            a = i - overlap
            seg = get(a, j)
            n = j - a
            if k and seg[0] == seg[-1] and seg.count(seg[:1]) == n:
                # One repeated byte: its hash is never 0 (see docstring).
                i = j
                continue
            x = int.from_bytes(seg.translate(table), "little")
            for d in shifts:
                x ^= x << d
            x ^= c0
            if k:
                z = x
                for m in range(1, k):
                    z |= x << (8 * m)
                if mask:
                    z |= (x & mask) << (8 * k)
            else:
                z = x & mask
            zb = z.to_bytes(max(n, (z.bit_length() + 7) // 8), "little")
            p = zb.find(b"\0", overlap, n)
            if p >= 0:
                return a + p + 1
            i = j
        return None


class _BlockBuffer:
    """The not yet chunked part of a stream, as a list of read blocks.

    Blocks are kept as read (small reads are joined into blocks of about
    READ_SIZE) so that no byte is copied except into the chunk returned."""

    __slots__ = ("_read", "_blocks", "_starts", "_end", "_eof")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._blocks = []  # type: List[bytes]
        self._starts = []  # type: List[int]  # stream offset of each block
        self._end = 0  # stream offset after the last block
        self._eof = False

    def fill(self, want: int) -> int:
        """Read until the buffer reaches stream offset want or the end of the
        stream; return the stream offset after the buffered data."""
        read = self._read
        while self._end < want and not self._eof:
            parts = []
            got = 0
            while got < READ_SIZE:
                block = read(READ_SIZE - got)
                if not block:
                    self._eof = True
                    break
                parts.append(block)
                got += len(block)
            if not got:
                break
            block = parts[0] if len(parts) == 1 else b"".join(parts)
            if not isinstance(block, bytes):
                block = bytes(block)
            self._blocks.append(block)
            self._starts.append(self._end)
            self._end += len(block)
        return self._end

    def release(self, pos: int) -> None:
        """Forget the blocks that end at or before stream offset pos."""
        blocks = self._blocks
        starts = self._starts
        while len(blocks) > 1 and starts[1] <= pos:
            del blocks[0]
            del starts[0]
        if blocks and starts[0] + len(blocks[0]) <= pos:
            del blocks[0]
            del starts[0]

    def get(self, a: int, b: int) -> bytes:
        """The stream bytes [a, b); they must be buffered."""
        blocks = self._blocks
        starts = self._starts
        i = len(starts) - 1
        while starts[i] > a:
            i -= 1
        off = a - starts[i]
        block = blocks[i]
        if b - starts[i] <= len(block):
            return block[off : off + (b - a)]
        parts = [memoryview(block)[off:]]
        n = len(block) - off
        while n < b - a:
            i += 1
            block = blocks[i]
            parts.append(memoryview(block)[: b - a - n])
            n += len(block)
        return b"".join(parts)
