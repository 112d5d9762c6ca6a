"""Tests for backshift.chunking (content-defined chunking)."""

import functools
import hashlib
import io
import random

import pytest

from backshift import chunking
from backshift.chunking import (
    DATA_PARAMS,
    METADATA_PARAMS,
    ChunkParams,
    Chunker,
    window_hashes,
)

MIB = 1024 * 1024

# Small parameter sets that exercise the three shapes of cut condition:
# strict/loose with k=1 (12/8 bits), k=2/1 (17/13 bits) and k=0 (8/4 bits).
SMALL = ChunkParams(256, 2048, 8192)
MEDIUM = ChunkParams(1024, 33 * 1024, 128 * 1024)
TINY = ChunkParams(64, 128, 512)


@functools.lru_cache(maxsize=None)
def prng_bytes(n, seed):
    """Deterministic pseudo-random bytes (fast, no dependence on `random`)."""
    out = []
    counter = 0
    block = hashlib.sha512(b"seed" + str(seed).encode()).digest()
    while n > 0:
        chunk = hashlib.shake_256(block + counter.to_bytes(8, "little")).digest(
            min(n, 1 << 20)
        )
        out.append(chunk)
        n -= len(chunk)
        counter += 1
    return b"".join(out)


@functools.lru_cache(maxsize=None)
def text_bytes(n, seed):
    rnd = random.Random(seed)
    words = [
        "".join(rnd.choice("etaoinshrdlucmfwypvbgkqjxz") for _ in range(rnd.randint(1, 9)))
        for _ in range(3000)
    ]
    out = []
    size = 0
    while size < n:
        line = " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 14))) + ".\n"
        out.append(line)
        size += len(line)
    return "".join(out).encode()[:n]


@functools.lru_cache(maxsize=None)
def structured_bytes(n, seed):
    """Binary records with counters, small ints and zero padding."""
    rnd = random.Random(seed)
    out = bytearray()
    i = 0
    while len(out) < n:
        out += i.to_bytes(8, "little")
        out += rnd.randrange(1000).to_bytes(4, "little")
        out += bytes(rnd.choice((0, 4, 20)))
        out += rnd.choice((b"name", b"value", b"\xff\xfe", b"/usr/lib/x"))
        i += 1
    return bytes(out[:n])


@functools.lru_cache(maxsize=None)
def mixed_bytes(n, seed):
    parts = [
        prng_bytes(n // 4, seed),
        bytes(n // 8),
        text_bytes(n // 4, seed),
        b"\xff" * (n // 16),
        structured_bytes(n - n // 4 - n // 8 - n // 4 - n // 16, seed),
    ]
    return b"".join(parts)


# -- an independent, slow implementation of the documented algorithm ---------


def reference_hash_bit_level(data, i):
    """h_i computed bit by bit from the subset sums of SHIFTS."""
    taps = {0}
    for d in chunking.SHIFTS:
        taps = taps ^ {t + d for t in taps}  # multiply by (1 + z**d) over GF(2)
    value = 0
    for q in range(8):
        bit = 0
        for e in taps:
            p = 8 * i + q - e
            if p >= 0:
                bit ^= (chunking.TABLE[data[p // 8]] >> (p % 8)) & 1
        value |= bit << q
    return value ^ chunking.C0


def reference_cuts(data, params):
    b = (params.avg_size - params.min_size).bit_length() - 1
    strict, loose = b + 2, b - 2
    sizes = []
    s = 0
    while s < len(data):
        limit = min(params.max_size, len(data) - s)
        h = window_hashes(data[s : s + limit])
        size = limit
        for n in range(params.min_size, limit):
            k, r = divmod(strict if n < params.avg_size else loose, 8)
            if all(h[n - 1 - j] == 0 for j in range(k)) and (
                h[n - 1 - k] & ((1 << r) - 1) == 0
            ):
                size = n
                break
        sizes.append(size)
        s += size
    return sizes


def sizes_of(chunks):
    return [len(c) for c in chunks]


def stream_chunks(chunker, data, read_size):
    f = io.BytesIO(data)
    if callable(read_size):
        return list(chunker.chunks(lambda n: f.read(min(n, read_size()))))
    return list(chunker.chunks(lambda n: f.read(min(n, read_size))))


# -- the definition ---------------------------------------------------------


def test_table_is_the_documented_permutation():
    expected = sorted(
        range(256), key=lambda v: hashlib.sha256(b"backshift-chunker-v1" + bytes([v])).digest()
    )
    assert list(chunking.TABLE) == expected
    assert sorted(chunking.TABLE) == list(range(256))
    assert chunking.TABLE[:8].hex() == "535503fa02eba92d"
    assert chunking.WINDOW_HASH == 32


def test_known_answers():
    """Boundaries are part of the repository format: they must never change."""
    assert chunking.SHIFTS == (5, 13, 31, 67, 139)
    assert chunking.C0 == 0xA5
    assert Chunker(DATA_PARAMS).cut_ranges(prng_bytes(8 * MIB, 99))[:3] == [
        (0, 1069735),
        (1069735, 2069447),
        (2069447, 3230974),
    ]
    sizes = sizes_of(Chunker(DATA_PARAMS).split(prng_bytes(8 * MIB, 99)))
    assert sizes == [1069735, 999712, 1161527, 908947, 1185355, 915486, 567040, 1054819, 525987]
    data = (
        prng_bytes(2 * MIB, 99)
        + bytes(300000)
        + b"".join(b"line %d of a text file\n" % i for i in range(100000))
    )
    sizes = sizes_of(Chunker(MEDIUM).split(data))
    assert sizes[:4] == [12526, 37852, 39427, 34771]
    digest = hashlib.sha256(repr(sizes).encode()).hexdigest()
    assert digest == "5806b7da4239967517a5929d97c6b0d027e9e77059000c4ffef1b121a6c5ef33"
    sizes = sizes_of(Chunker(METADATA_PARAMS).split(data))
    digest = hashlib.sha256(repr(sizes).encode()).hexdigest()
    assert digest == "9ba06193d7d48ed2dd01b548b13119327b83a18a412fdb6a97a7b58f1b57d506"


def test_window_hash_matches_bit_level_definition():
    data = prng_bytes(600, 1) + b"\0" * 100 + text_bytes(300, 1)
    h = window_hashes(data)
    rnd = random.Random(5)
    for i in list(range(40)) + rnd.sample(range(len(data)), 60):
        assert h[i] == reference_hash_bit_level(data, i), i


def test_window_hash_is_local():
    data = bytearray(prng_bytes(4096, 2))
    h = window_hashes(bytes(data))
    data[1000] ^= 0x5A
    h2 = window_hashes(bytes(data))
    changed = [i for i in range(len(h)) if h[i] != h2[i]]
    assert changed and min(changed) >= 1000 and max(changed) <= 1000 + chunking.WINDOW_HASH
    # Prefix before a chunk start does not matter beyond the window.
    h3 = window_hashes(prng_bytes(100, 3) + bytes(data))
    assert h3[100 + 40 :] == h2[40:]


def test_no_constant_run_can_cut():
    for v in range(256):
        h = window_hashes(bytes([v]) * 100)
        assert 0 not in h[chunking.WINDOW_HASH :], v


@pytest.mark.parametrize("params", [SMALL, MEDIUM, TINY], ids=["small", "medium", "tiny"])
def test_matches_reference_implementation(params):
    data = mixed_bytes(512 * 1024, 7)
    expected = reference_cuts(data, params)
    assert sum(expected) == len(data)
    assert len(expected) > 10
    assert sizes_of(Chunker(params).split(data)) == expected


def test_result_does_not_depend_on_segment_size(monkeypatch):
    data = mixed_bytes(2 * MIB, 8)
    results = []
    for segment in (97, 4096, 32 * 1024, 200000):
        monkeypatch.setattr(chunking, "SEGMENT", segment)
        results.append(Chunker(MEDIUM).cut_ranges(data))
    assert all(r == results[0] for r in results)
    assert len(results[0]) > 10


# -- properties of the chunker ---------------------------------------------


def test_empty_input():
    chunker = Chunker(DATA_PARAMS)
    assert chunker.split(b"") == []
    assert list(chunker.chunks(io.BytesIO(b"").read)) == []
    assert chunker.cut_ranges(b"") == []


def test_short_input_is_one_chunk():
    chunker = Chunker(DATA_PARAMS)
    for n in (1, 1000, DATA_PARAMS.min_size):
        data = prng_bytes(n, n)
        assert chunker.split(data) == [data]
        assert list(chunker.chunks(io.BytesIO(data).read)) == [data]


@pytest.mark.parametrize("params", [DATA_PARAMS, METADATA_PARAMS, SMALL], ids=["data", "meta", "small"])
def test_roundtrip_and_size_bounds(params):
    data = mixed_bytes(16 * MIB if params is DATA_PARAMS else 4 * MIB, 11)
    chunks = Chunker(params).split(data)
    assert b"".join(chunks) == data
    assert len(chunks) > 3
    for c in chunks[:-1]:
        assert params.min_size <= len(c) <= params.max_size
    assert 0 < len(chunks[-1]) <= params.max_size


def test_accepts_bytes_like():
    data = prng_bytes(3 * MIB, 12)
    chunker = Chunker(DATA_PARAMS)
    expected = chunker.split(data)
    assert chunker.split(bytearray(data)) == expected
    assert chunker.split(memoryview(data)) == expected
    f = io.BytesIO(data)
    assert list(chunker.chunks(lambda n: bytearray(f.read(n)))) == expected


def test_chunks_independent_of_read_sizes():
    data = mixed_bytes(10 * MIB, 13) + prng_bytes(4 * MIB, 14)
    chunker = Chunker(DATA_PARAMS)
    expected = chunker.split(data)
    assert len(expected) >= 8
    for read_size in (MIB, 3 * MIB, 65537, chunking.READ_SIZE * 3):
        assert stream_chunks(chunker, data, read_size) == expected, read_size
    head = data[: 3 * MIB]
    assert stream_chunks(chunker, head, 7) == chunker.split(head)
    rnd = random.Random(1)
    assert stream_chunks(chunker, data, lambda: rnd.choice((1, 100, 4099, 1 << 20))) == expected
    ranges = chunker.cut_ranges(data)
    assert [data[a:b] for a, b in ranges] == expected


def test_small_params_independent_of_read_sizes():
    data = mixed_bytes(MIB, 15)
    chunker = Chunker(MEDIUM)
    expected = chunker.split(data)
    for read_size in (1, 7, 1000, 40000):
        assert stream_chunks(chunker, data, read_size) == expected, read_size


def test_chunks_bounded_read_ahead(monkeypatch):
    monkeypatch.setattr(chunking, "READ_SIZE", 256 * 1024)
    data = mixed_bytes(12 * MIB, 16)
    chunker = Chunker(METADATA_PARAMS)
    f = io.BytesIO(data)
    requested = []

    def read(n):
        requested.append(n)
        return f.read(n)

    consumed = 0
    for c in chunker.chunks(read):
        consumed += len(c)
        assert f.tell() - consumed <= METADATA_PARAMS.max_size + chunking.READ_SIZE
    assert consumed == len(data)
    assert max(requested) == chunking.READ_SIZE


def test_average_on_random_data():
    data = prng_bytes(64 * MIB, 17)
    chunks = Chunker(DATA_PARAMS).split(data)
    mean = len(data) / len(chunks)
    assert 0.7 * DATA_PARAMS.avg_size <= mean <= 1.3 * DATA_PARAMS.avg_size, mean
    # Nothing runs into max_size on random data.
    assert max(map(len, chunks)) < DATA_PARAMS.max_size

    meta = Chunker(METADATA_PARAMS).split(data[: 16 * MIB])
    mean = 16 * MIB / len(meta)
    assert 0.7 * METADATA_PARAMS.avg_size <= mean <= 1.3 * METADATA_PARAMS.avg_size, mean


@pytest.mark.parametrize("kind", ["text", "structured"])
def test_average_on_non_random_data(kind):
    make = text_bytes if kind == "text" else structured_bytes
    data = make(4 * MIB, 18)
    chunks = Chunker(METADATA_PARAMS).split(data)
    mean = len(data) / len(chunks)
    assert 0.6 * METADATA_PARAMS.avg_size <= mean <= 1.5 * METADATA_PARAMS.avg_size, mean
    assert sum(len(c) == METADATA_PARAMS.max_size for c in chunks) <= len(chunks) // 20


def test_zeros_cut_at_max_size():
    for params in (DATA_PARAMS, METADATA_PARAMS, SMALL):
        n = 3 * params.max_size + 1234
        chunks = Chunker(params).split(bytes(n))
        assert sizes_of(chunks) == [params.max_size] * 3 + [1234]
    chunks = Chunker(METADATA_PARAMS).split(b"\xff" * (METADATA_PARAMS.max_size * 2))
    assert sizes_of(chunks) == [METADATA_PARAMS.max_size] * 2


def _common_suffix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


@pytest.mark.parametrize(
    "edit",
    ["insert", "delete", "replace", "insert-later"],
)
def test_resynchronises_after_edit(edit):
    data = prng_bytes(24 * MIB, 19)
    if edit == "insert":
        edited = data[:1000] + b"xyz" + data[1000:]
    elif edit == "delete":
        edited = data[:5000] + data[5005:]
    elif edit == "replace":
        edited = data[:70000] + b"Q" * 40 + data[70040:]
    else:
        edited = data[: 9 * MIB + 3] + b"inserted" + data[9 * MIB + 3 :]
    chunker = Chunker(DATA_PARAMS)
    old = chunker.split(data)
    new = chunker.split(edited)
    common = _common_suffix(old, new)
    if edit == "insert-later":
        common += _common_suffix(old[::-1], new[::-1])  # the prefix
        assert old[:5] == new[:5]
    else:
        assert old[0] != new[0]
    # All chunks are identical except the few around the edit.
    assert common >= len(old) - 3 and common >= len(new) - 3, (common, len(old), len(new))
    assert len(old) > 18


def test_resynchronises_on_text():
    data = text_bytes(4 * MIB, 18)
    edited = data[:300] + b"an inserted sentence. " + data[300:]
    chunker = Chunker(METADATA_PARAMS)
    old = chunker.split(data)
    new = chunker.split(edited)
    assert _common_suffix(old, new) >= len(old) - 3


@pytest.mark.parametrize("params", [DATA_PARAMS, MEDIUM], ids=["data", "medium"])
def test_restart_at_any_boundary(params):
    data = mixed_bytes(16 * MIB, 11) if params is DATA_PARAMS else mixed_bytes(2 * MIB, 21)
    chunker = Chunker(params)
    ranges = chunker.cut_ranges(data)
    assert len(ranges) > 6
    for idx in (1, 2, len(ranges) // 2, len(ranges) - 1):
        start = ranges[idx][0]
        tail = chunker.cut_ranges(data[start:])
        assert [(a + start, b + start) for a, b in tail] == ranges[idx:]
        f = io.BytesIO(data)
        f.seek(start)
        assert list(chunker.chunks(f.read)) == [data[a:b] for a, b in ranges[idx:]]


def test_deterministic_across_instances():
    data = prng_bytes(6 * MIB, 22)
    assert Chunker(DATA_PARAMS).split(data) == Chunker(ChunkParams(*DATA_PARAMS)).split(data)


def test_params_validation():
    for bad in (
        ChunkParams(0, 10, 100),
        ChunkParams(1000, 1000, 4000),
        ChunkParams(1000, 2000, 2000),
        ChunkParams(16, 4096, 65536),  # min_size shorter than the window
        ChunkParams(1000, 1002, 4000),  # too few bits
    ):
        with pytest.raises(ValueError):
            Chunker(bad)


def test_presets():
    assert DATA_PARAMS.min_size <= DATA_PARAMS.avg_size <= DATA_PARAMS.max_size
    assert 256 * 1024 <= DATA_PARAMS.min_size <= 512 * 1024
    assert DATA_PARAMS.avg_size == MIB
    assert 4 * MIB <= DATA_PARAMS.max_size <= 8 * MIB
    assert METADATA_PARAMS.avg_size == 64 * 1024
    with pytest.raises(Exception):
        DATA_PARAMS.min_size = 1  # frozen
