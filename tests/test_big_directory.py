"""A directory whose record passes 512 KiB: RecordWriter stores it as it
grows (tree.py, the streaming flush), and it restores exactly through GNU tar."""

import os

import helpers
from backshift.chunking import METADATA_PARAMS, Chunker
from backshift.objectstore import ObjectStore
from backshift.records import KIND_DIR

ENTRIES = 2200  # of about 300 bytes each: some 650 KiB of record


def test_directory_record_over_512_kib_is_stored_in_chunks_and_restores(savedir, tmp_path):
    top = tmp_path / "src" / "many"
    top.mkdir(parents=True)
    for n in range(ENTRIES):
        # Long names (250 bytes, the most a component may be in practice).
        (top / ("%05d-" % n + "n" * 244)).write_bytes(b"%d\n" % n if n % 2 else b"")
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path),
                               extra=["--compression", "zlib:1"])
    entries = helpers.tree_entries(savedir, backup_id)
    directory = entries[b"src/many"]
    assert directory.kind == KIND_DIR and len(entries) == ENTRIES + 3  # the root and src too
    record_bytes = sum(length for _digest, length in directory.chunks)
    flush_at = 2 * METADATA_PARAMS.max_size
    assert flush_at == 512 * 1024 and record_bytes > flush_at
    # Several chunks, none over the metadata chunker's maximum.
    assert len(directory.chunks) >= 3
    assert all(length <= METADATA_PARAMS.max_size for _digest, length in directory.chunks)
    # Stored as it grew, cut where the chunker cuts the whole record: an
    # unchanged directory stores nothing new.
    objects = ObjectStore(savedir, "test")
    record = b"".join(objects.get(digest) for digest, _length in directory.chunks)
    assert [len(piece) for piece in Chunker(METADATA_PARAMS).split(record)] == \
        [length for _digest, length in directory.chunks]
    dest = str(tmp_path / "restored")
    helpers.extract(helpers.produce_tar(savedir, backup_id), dest)
    helpers.assert_same_tree(str(tmp_path / "src"), os.path.join(dest, "src"))
    helpers.run_ok(["--save-directory", savedir, "--verify"])
