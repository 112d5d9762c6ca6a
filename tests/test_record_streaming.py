"""Directory records read chunk by chunk (recordscan.entry_spans), as restores and listings do.

A record cut into pieces at any boundary, even inside an entry's length
field, gives the same entries as the whole record; a record that ends
inside an entry is an error, not a silently shorter directory.
"""

import pytest

from backshift.records import (KIND_FILE, Entry, RecordError, decode_entry, encode_entry,
                               iter_entries, record_header)
from backshift.recordscan import entry_spans


def _record() -> bytes:
    entries = [Entry(b"file%03d" % number, KIND_FILE, size=number, mtime_ns=number * 7,
                     inline=b"x" * (number % 9), flags=1, extras={b"k": b"v" * number})
               for number in range(40)]
    return record_header() + b"".join(encode_entry(entry) for entry in entries)


def _names(spans) -> list:
    return [decode_entry(buf, offset)[0].name for buf, offset in spans]


def test_any_cut_gives_the_same_entries():
    record = _record()
    expected = [entry.name for entry in iter_entries(record)]
    for step in (1, 3, 7, 64, 100, 1000, len(record)):
        pieces = [record[at:at + step] for at in range(0, len(record), step)]
        assert _names(entry_spans(pieces)) == expected, step
    # Uneven pieces, some empty.
    cuts = [0, 2, 2, 9, 50, 51, 300, 301, 302, len(record)]
    pieces = [record[a:b] for a, b in zip(cuts, cuts[1:])]
    assert _names(entry_spans(pieces)) == expected


def test_a_record_cut_short_is_an_error():
    record = _record()
    with pytest.raises(RecordError):
        _names(entry_spans([record[:len(record) - 5]]))
    with pytest.raises(RecordError):
        _names(entry_spans([b"BSD"]))
    with pytest.raises(RecordError):
        _names(entry_spans([b"XXXX\x01\x00\x00\x00", record[8:]]))
