"""Compression of object payloads.

Each stored object names its codec in its header, so a save directory may
mix codecs (a repository written with ``--compression zlib`` and later with
xz restores either way).  Before paying for the strong compressor, a cheap
zlib level 1 trial on samples of the chunk decides whether the data
compresses at all; incompressible chunks (photos, video, archives) are
stored raw.  The decision depends on content only, never on a file name.

Why xz level 1 by default (measured single-threaded, CPU seconds, on the
7,856 chunks of a backup of a copy of /usr/share, 543 MB of which 497 MB
pass the trial; and on 108 MB of shared libraries from /usr/lib cut by the
data chunker):

    codec     /usr/share chunks         libraries
    xz -0     23.5 s  176.2 MB          4.7 s  28.3 MB
    xz -1     25.8 s  169.6 MB          8.0 s  27.0 MB
    xz -2     32.2 s  167.4 MB         10.1 s  26.7 MB
    xz -3     36.6 s  166.5 MB
    zlib -6   15.5 s  184.3 MB          3.7 s  34.1 MB

Whole backups of that /usr/share copy (allocated bytes, du -s): xz -1
234.8 MB, xz -0 241.8 MB, xz -2 232.7 MB, zlib 249.9 MB; restic 0.14
(zstd) 247.5 MB.  Level 1 is where xz stops paying: -0 is 4% larger, -2
buys 1.3% for 25% more time.  xz -1 is what keeps the repository smaller
than restic's; zlib (--compression zlib) is the choice when time matters
more than space, and its default level is 1: whole first backups of
/usr/share (552 MB, 56,796 entries, CPU seconds of the run, same loaded
machine) took zlib -1 11.0 s for 244 MB (still below restic's size) and
zlib -6 22.2 s for 224 MB; --compression none took 5.5 s.  Each chunk's dictionary is sized to the chunk (see
XZ_PRESET_DICT): same output, 17% less time on small chunks; a big file's
chunks get a dictionary of 256 KiB at most (XZ_CHUNK_DICT).

Under xz, what the trial finds poorly compressible (XZ_WORTH_RATIO) goes to
zlib level 1, unless the whole then compresses well after all: on the
objects of a backup of /usr/share (``bench/bench_xz.py``, one thread on a
loaded machine, two runs each) xz took 43.2 and 40.2 CPU seconds for all of
them, 37.6 and 37.0 with zlib for those, for a repository 0.06% larger
(211,088 KiB instead of 210,956); whole first backups took 7% less CPU.  A lower ratio starts to
cost space (0.5: 4% less time, 0.2% more space; 0.45: 1.6%).  The match
finder's settings were weighed too and are kept at the preset's: depth 4
instead of 8 took 17% less time but made the repository 1.2% larger (1%
for the versions of a source tree), hc3 with depth 4 35% and 3.5%;
nice_len (32 to 273) and lc/lp/pb (lc 4 or 1, pb 0) changed neither time
nor size by more than the noise.
"""

import bz2
import contextlib
import lzma
import sys
import threading
import zlib
from typing import Dict, List, Optional, Tuple

CODEC_NONE = 0
CODEC_ZLIB = 1
CODEC_XZ = 2
CODEC_BZ2 = 3
CODEC_NAMES = {CODEC_NONE: "none", CODEC_ZLIB: "zlib", CODEC_XZ: "xz", CODEC_BZ2: "bz2"}

DEFAULT_LEVELS = {"xz": 1, "zlib": 1, "bz2": 9, "none": None}
LEVEL_RANGES = {"xz": range(0, 10), "zlib": range(0, 10), "bz2": range(1, 10)}

# Below this size a compressor's own framing outweighs what it can save.
MIN_COMPRESS_SIZE = 64
# The trial compresses up to three samples of this size (start, middle, end).
TRIAL_SAMPLE = 16 * 1024
# As borg's "auto" mode: only data that shrinks to below this ratio in the
# fast trial is handed to the strong compressor.
TRIAL_RATIO = 0.97
# A sample that already halves decides at once.  On the chunks of a copy of
# /usr/share this cuts the trial's cost by 40% (1.5 s instead of 2.6 s CPU
# for 540 MB) and changed the decision for 2 chunks of 7,856.
TRIAL_EARLY_RATIO = 0.5
# xz only where the trial's ratio is at most this; data that zlib leaves
# above it (binaries, fonts, partly compressed formats) is stored with zlib
# level 1, where xz runs at 3-6 MB/s instead of 10-30 and saves only a few
# percent more (see the module docstring).
XZ_WORTH_RATIO = 0.6
# LZMA2 dictionary size of each xz preset (liblzma's table).  A dictionary
# larger than the input buys nothing but costs time to set up (the match
# finder's tables are sized from it) and memory to decode, so each chunk
# gets the smallest power of two that holds it, up to the preset's.  Same
# output size; xz -1 on /usr/share's chunks took 30 s CPU instead of 36 s.
XZ_PRESET_DICT = (256 << 10, 1 << 20, 2 << 20, 4 << 20, 4 << 20, 8 << 20, 8 << 20,
                  16 << 20, 32 << 20, 64 << 20)
XZ_MIN_DICT = 4096


# PyPy's lzma module (built on cffi) was seen to mix up its own C structures
# when several threads used it at once ("cdata 'lzma_options_lzma *' has no
# field 'id'", PyPy 7.3.11), so there lzma runs one thread at a time.
# CPython's lzma is thread-safe and releases the GIL: no lock there.
_LZMA_GUARD = (threading.Lock() if sys.implementation.name == "pypy"
               else contextlib.nullcontext())

# Leading bytes of formats whose content is compressed already: gzip, xz,
# bzip2, zstd, lz4 frames, lzip, 7z, rar, zip (and jar, odt, epub...), PNG,
# JPEG, GIF, WOFF and WOFF2 fonts, Ogg, FLAC.  In a copy of /usr/share they
# are 28,000 of its 46,700 small files (56 of 168 MB), nearly all gzip.
COMPRESSED_MAGIC = (b"\x1f\x8b", b"\xfd7zXZ\x00", b"BZh", b"\x28\xb5\x2f\xfd", b"\x04\x22\x4d\x18",
                    b"LZIP", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07", b"PK\x03\x04",
                    b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"wOFF", b"wOF2",
                    b"OggS", b"fLaC")


def already_compressed(data: bytes) -> bool:
    """Does ``data`` start as a compressed format does (COMPRESSED_MAGIC)?"""
    return data.startswith(COMPRESSED_MAGIC)


class CompressionSpec:
    """A parsed ``--compression`` value such as ``xz``, ``xz:6`` or ``zlib:1``."""

    __slots__ = ("name", "level")

    def __init__(self, name: str, level: Optional[int]) -> None:
        self.name = name
        self.level = level

    @classmethod
    def parse(cls, text: str) -> "CompressionSpec":
        name, _, level_text = text.partition(":")
        name = name.strip().lower()
        if name not in DEFAULT_LEVELS:
            raise ValueError("unknown compression %r (choose xz, zlib, bz2 or none)" % name)
        if not level_text:
            return cls(name, DEFAULT_LEVELS[name])
        if name == "none":
            raise ValueError("compression 'none' takes no level")
        try:
            level = int(level_text)
        except ValueError:
            raise ValueError("compression level %r is not a number" % level_text) from None
        if level not in LEVEL_RANGES[name]:
            bounds = LEVEL_RANGES[name]
            raise ValueError("%s level must be %d to %d" % (name, bounds[0], bounds[-1]))
        return cls(name, level)

    def __str__(self) -> str:
        return self.name if self.level is None else "%s:%d" % (self.name, self.level)


def trial_ratio(data: bytes) -> float:
    """Cheap trial: how much zlib level 1 shrinks samples of ``data`` (packed / raw).

    A sample that halves ends the trial at once, so any ratio below
    TRIAL_EARLY_RATIO means only "plainly compressible"."""
    size = len(data)
    if size <= 3 * TRIAL_SAMPLE:
        samples = [data[start:start + TRIAL_SAMPLE] for start in range(0, size, TRIAL_SAMPLE)]
    else:
        middle = size // 2 - TRIAL_SAMPLE // 2
        samples = [data[:TRIAL_SAMPLE], data[middle:middle + TRIAL_SAMPLE], data[-TRIAL_SAMPLE:]]
    raw = packed = 0
    for sample in samples:
        raw += len(sample)
        packed += len(zlib.compress(sample, 1))
        if packed < raw * TRIAL_EARLY_RATIO:
            break  # plainly compressible: the other samples cannot change that
    return packed / raw


class Compressor:
    """Compresses payloads according to a CompressionSpec."""

    def __init__(self, spec: CompressionSpec, xz_dict_max: Optional[int] = None) -> None:
        self.spec = spec
        # The largest xz dictionary: the preset's, or xz_dict_max if smaller.
        preset_dict = XZ_PRESET_DICT[spec.level or 0] if spec.name == "xz" else 0
        self._xz_dict_top = min(preset_dict, xz_dict_max or preset_dict)
        # Filter chains for xz by dictionary size, built once each.
        self._filters: Dict[int, List[Dict[str, int]]] = {}

    def _xz_filters(self, size: int) -> List[Dict[str, int]]:
        preset = self.spec.level or 0
        dict_size = XZ_MIN_DICT
        while dict_size < size and dict_size < self._xz_dict_top:
            dict_size <<= 1
        filters = self._filters.get(dict_size)
        if filters is None:
            filters = [{"id": lzma.FILTER_LZMA2, "preset": preset, "dict_size": dict_size}]
            self._filters[dict_size] = filters
        return filters

    def _xz_or_zlib(self, data: bytes, ratio: float) -> Tuple[int, bytes]:
        """xz, or zlib level 1 where xz would be slow for little more (XZ_WORTH_RATIO)."""
        if ratio > XZ_WORTH_RATIO:
            payload = zlib.compress(data, DEFAULT_LEVELS["zlib"])
            # Unless the whole compresses better than its samples did: it
            # repeats itself at distances the samples miss, as xz's window does not.
            if len(payload) > len(data) * XZ_WORTH_RATIO:
                return CODEC_ZLIB, payload
        # No integrity check inside xz: every object is verified by its digest.
        with _LZMA_GUARD:
            return CODEC_XZ, lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                                           filters=self._xz_filters(len(data)))

    def compress(self, data: bytes) -> Tuple[int, bytes]:
        """Return (codec, payload); payload is ``data`` itself when storing raw."""
        name = self.spec.name
        if name == "none" or len(data) < MIN_COMPRESS_SIZE:
            return CODEC_NONE, data
        ratio = trial_ratio(data)
        if ratio >= TRIAL_RATIO:
            return CODEC_NONE, data
        if name == "xz":
            codec, payload = self._xz_or_zlib(data, ratio)
        elif name == "zlib":
            payload = zlib.compress(data, self.spec.level)
            codec = CODEC_ZLIB
        else:
            payload = bz2.compress(data, self.spec.level)
            codec = CODEC_BZ2
        if len(payload) >= len(data):
            return CODEC_NONE, data
        return codec, payload


# The largest xz dictionary for the chunks of files too big to pack, at
# the fast levels (0 and 1; the dictionary of level 0).  A big file's chunk
# repeats itself mostly within a short distance, and a smaller window keeps
# the match finder's tables in the CPU's cache: on all the objects of a
# backup of /usr/share (bench/bench_xz.py) xz took 19-27% less CPU with
# 256 KiB than with level 1's 1 MiB, for 0.8% more bytes.  Packs keep the
# preset's dictionary: their small files repeat one another further apart
# (on the versions of a source tree, nearly all packs, 256 KiB cost 1.3%).
# Given to chunks alone, it took 5-13% off the CPU of whole first backups
# of /usr/share, for 0.2% more bytes.
XZ_CHUNK_DICT = 256 * 1024


def for_chunks(compressor: Compressor) -> Compressor:
    """``compressor`` for the chunks of big files: XZ_CHUNK_DICT at most at the fast levels."""
    spec = compressor.spec
    if spec.name != "xz" or (spec.level or 0) > 1:
        return compressor
    return Compressor(spec, XZ_CHUNK_DICT)


def quick(compressor: Compressor) -> Compressor:
    """``compressor``, or zlib where it is a slow one (xz, bz2): for a few small objects
    that must not keep their writer waiting."""
    if compressor.spec.name in ("none", "zlib"):
        return compressor
    return Compressor(CompressionSpec("zlib", DEFAULT_LEVELS["zlib"]))


# xz level for the packs a backup cuts before they reach their minimum size
# (packing.py: at a checkpoint or at its end).  There are few of them, and
# the last is most of what a nightly backup adds: on the packs of five
# edited versions of a source tree, level 6 stored 10% less than level 1,
# at 0.3 CPU seconds per MB instead of 0.09.
THOROUGH_XZ_LEVEL = 6


def thorough(compressor: Compressor) -> Compressor:
    """``compressor``, at THOROUGH_XZ_LEVEL at least where it is xz."""
    spec = compressor.spec
    if spec.name != "xz" or (spec.level or 0) >= THOROUGH_XZ_LEVEL:
        return compressor
    return Compressor(CompressionSpec("xz", THOROUGH_XZ_LEVEL))


def decompress(codec: int, payload: bytes) -> bytes:
    """Inverse of Compressor.compress; raises ValueError on unknown or corrupt data.

    The payload must be exactly one stream: data after its end is damage.
    """
    if codec == CODEC_NONE:
        return payload
    if codec == CODEC_XZ:
        with _LZMA_GUARD:
            decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            return _one_stream(codec, decoder, payload)
    if codec == CODEC_ZLIB:
        return _one_stream(codec, zlib.decompressobj(), payload)
    if codec == CODEC_BZ2:
        return _one_stream(codec, bz2.BZ2Decompressor(), payload)
    raise ValueError("unknown codec %d" % codec)


def _one_stream(codec: int, decoder, payload: bytes) -> bytes:
    """Decompress ``payload`` with a fresh decoder; it must end exactly where the stream does."""
    try:
        data = decoder.decompress(payload)
    except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError) as exc:
        raise ValueError("corrupt %s payload: %s" % (CODEC_NAMES[codec], exc)) from None
    if not decoder.eof:
        raise ValueError("corrupt %s payload: truncated stream" % CODEC_NAMES[codec])
    if decoder.unused_data:
        raise ValueError("corrupt %s payload: %d bytes after the end of its stream"
                         % (CODEC_NAMES[codec], len(decoder.unused_data)))
    return data
