"""ObjectStore.put finds new objects by one listing of a small object directory.

Whatever the listing says, an object already present must be touched (its
mtime moved to now, FORMAT.md "Expiry", W2) and not rewritten, and one
stored by another writer after the listing must still end up present.
"""

import os

from backshift.compression import CompressionSpec, Compressor
from backshift.objectstore import ObjectStore

NONE = Compressor(CompressionSpec.parse("none"))


def test_present_objects_are_touched_and_new_ones_written(tmp_path):
    savedir = str(tmp_path)
    ObjectStore.create_layout(savedir)
    first = ObjectStore(savedir, "host-a", durable=False)
    old = first.put(b"stored before", NONE)
    path = first.path_of(old)
    os.utime(path, (1_000_000_000, 1_000_000_000))
    inode = os.stat(path).st_ino

    second = ObjectStore(savedir, "host-b", durable=False)
    new = second.put(b"a new object", NONE)  # lists its directory
    assert second.get(new) == b"a new object"
    assert second.put(b"stored before", NONE) == old
    assert os.stat(path).st_mtime > 1_000_000_000  # touched
    assert os.stat(path).st_ino == inode  # not rewritten

    # Stored by another writer after this one listed every directory.
    for number in range(300):
        second.put(b"fill %d" % number, NONE)
    late = first.put(b"late arrival", NONE)
    os.utime(first.path_of(late), (1_000_000_000, 1_000_000_000))
    assert second.put(b"late arrival", NONE) == late
    assert os.stat(first.path_of(late)).st_mtime > 1_000_000_000
    assert second.get(late) == b"late arrival"
