"""ObjectStore.put finds new objects by one listing of a small object directory,
once that directory has had LIST_AFTER_MISSES objects found absent one by one.

Whatever the listing says, an object already present must be touched (its
mtime moved to now, FORMAT.md "Expiry", W2) and not rewritten, and one
stored by another writer after the listing must still end up present.
"""

import os

from backshift.compression import CompressionSpec, Compressor
from backshift.objectstore import LIST_AFTER_MISSES, ObjectStore, digest_of
from test_strict_storage import leave_temporary_files, one_directory_contents

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
    new = second.put(b"a new object", NONE)
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


def test_a_directory_is_listed_once_new_objects_keep_coming_to_it(tmp_path):
    # A listing costs a network file system several round trips, a failed
    # touch one: a directory is listed (and the temporary files of dead
    # writers in it removed) only after LIST_AFTER_MISSES new objects.
    savedir = str(tmp_path)
    ObjectStore.create_layout(savedir)
    contents = one_directory_contents(LIST_AFTER_MISSES + 2, 64)
    store = ObjectStore(savedir, "host-a", durable=False)
    directory = os.path.dirname(store.path_of(digest_of(contents[0])))
    dead, alive = leave_temporary_files(directory)
    for content in contents[:LIST_AFTER_MISSES]:
        store.put(content, NONE)
    assert all(os.path.exists(path) for path in dead + alive)  # not listed yet
    # Stored by another writer: the listing will show it, and it is touched.
    other = ObjectStore(savedir, "host-b", durable=False)
    present = other.put(contents[-1], NONE)
    os.utime(other.path_of(present), (1_000_000_000, 1_000_000_000))
    inode = os.stat(other.path_of(present)).st_ino
    store.put(contents[LIST_AFTER_MISSES], NONE)  # lists the directory
    assert not any(os.path.exists(path) for path in dead)
    assert all(os.path.exists(path) for path in alive)
    assert store.put(contents[-1], NONE) == present
    assert os.stat(other.path_of(present)).st_mtime > 1_000_000_000
    assert os.stat(other.path_of(present)).st_ino == inode
    for content in contents:
        assert store.get(digest_of(content)) == content
