"""Directory records and compression, without the file system."""

import os

import pytest

from backshift import compression, records


def _sample_entries():
    return [
        records.Entry(b"file", records.KIND_FILE, mode=0o644, uid=1000, gid=100,
                      mtime_ns=1_600_000_000_123_456_789, ctime_ns=-5, ino=2**40, size=3,
                      uname=b"user", gname=b"users", flags=records.FLAG_INLINE, inline=b"abc"),
        records.Entry(b"big\xff\n", records.KIND_FILE, size=10 * 2**30,
                      chunks=[(b"\x01" * 32, 4096), (b"\x02" * 32, 7)],
                      extras={b"xattr.user.b": b"2", b"xattr.user.a": b"\0"}),
        records.Entry(b"l", records.KIND_SYMLINK, target=b"/" + b"t" * 5000),
        records.Entry(b"d", records.KIND_DIR, flags=records.FLAG_IMPLICIT,
                      chunks=[(b"\x03" * 32, 99)]),
        records.Entry(b"c", records.KIND_CHAR, rdev_major=4095, rdev_minor=2**20 - 1),
    ]


def test_entries_round_trip_exactly():
    entries = _sample_entries()
    blob = records.record_header() + b"".join(records.encode_entry(e) for e in entries)
    decoded = list(records.iter_entries(blob))
    assert len(decoded) == len(entries)
    for original, back in zip(entries, decoded):
        for field in records.Entry.__slots__:
            assert getattr(back, field) == getattr(original, field), field


def test_encoding_is_deterministic_regardless_of_extras_order():
    one = records.Entry(b"n", records.KIND_FILE, extras={b"a": b"1", b"b": b"2"})
    two = records.Entry(b"n", records.KIND_FILE, extras={b"b": b"2", b"a": b"1"})
    assert records.encode_entry(one) == records.encode_entry(two)


@pytest.mark.parametrize("damage", ["truncate", "length", "magic", "version"])
def test_damaged_records_raise_record_error(damage):
    blob = bytearray(records.record_header() + records.encode_entry(_sample_entries()[0]))
    if damage == "truncate":
        blob = blob[:-3]
    elif damage == "length":
        blob[8] = 0xFF
    elif damage == "magic":
        blob[0:4] = b"XXXX"
    else:
        blob[4] = 2  # an unknown record version (an unknown kind: tests/test_reader_rules.py)
    with pytest.raises(records.RecordError):
        list(records.iter_entries(bytes(blob)))


def test_incompressible_data_is_stored_raw_and_text_is_compressed():
    compressor = compression.Compressor(compression.CompressionSpec.parse("xz"))
    noise = os.urandom(300000)
    codec, payload = compressor.compress(noise)
    assert codec == compression.CODEC_NONE and payload == noise
    text = b"the quick brown fox " * 10000
    codec, payload = compressor.compress(text)
    assert codec == compression.CODEC_XZ and len(payload) < len(text) // 20
    assert compression.decompress(codec, payload) == text


def test_compression_spec_parsing():
    assert str(compression.CompressionSpec.parse("xz")) == "xz:1"
    assert str(compression.CompressionSpec.parse("zlib:9")) == "zlib:9"
    for bad in ("lz4", "xz:10", "zlib:x", "none:3", "bz2:0"):
        with pytest.raises(ValueError):
            compression.CompressionSpec.parse(bad)


def test_corrupt_payload_raises_value_error():
    compressor = compression.Compressor(compression.CompressionSpec.parse("xz"))
    codec, payload = compressor.compress(b"abc" * 1000)
    with pytest.raises(ValueError):
        compression.decompress(codec, payload[:-5] + b"\0\0\0\0\0")
