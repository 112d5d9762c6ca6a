"""Seed feature 7: a backup does not fill the buffer cache.

Measured as a user would: empty the page cache (root), back up a 64 MiB
file, then ask ``fincore`` how much of the source file and of the objects
written is resident.  CI runs as root; if the cache cannot be emptied the
test fails rather than skips, because then it would prove nothing.
"""

import os
import subprocess

import helpers
from backshift.catalog import Catalog
from backshift.objectstore import ObjectStore
from backshift.records import FLAG_INLINE, KIND_DIR
from backshift.tree import TreeReader

MIB = 1024 * 1024


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as handle:
            handle.write("1\n")
    except OSError as exc:
        raise AssertionError("cannot empty the page cache (%s): this test needs root and a "
                             "writable /proc/sys/vm/drop_caches" % exc) from None


def resident_bytes(paths) -> int:
    total = 0
    paths = list(paths)
    for start in range(0, len(paths), 500):
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES"]
                             + paths[start:start + 500], check=True,
                             stdout=subprocess.PIPE).stdout
        total += sum(int(line) for line in out.split())
    return total


def files_under(top: str):
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            yield os.path.join(dirpath, name)


def test_backup_leaves_little_in_the_page_cache(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    big = src / "big.bin"
    with open(big, "wb") as handle:
        for _ in range(64):
            handle.write(os.urandom(MIB))
    # Text compresses, so its objects go through the compressor's path too.
    with open(src / "text.txt", "wb") as handle:
        handle.write(b"".join(b"line %d of some text\n" % n for n in range(400000)))
    savedir = str(tmp_path / "save")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])

    drop_caches()
    assert resident_bytes([str(big)]) < MIB, "the cache was not emptied"
    # Durable (no --no-fsync): written pages are clean after fsync and can go.
    result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "cache"],
                         input=helpers.find_print0(str(src)))
    assert result.returncode == 0, result.stderr.decode(errors="replace")

    source_resident = resident_bytes([str(big), str(src / "text.txt")])
    objects = list(files_under(os.path.join(savedir, "objects")))
    stored = sum(os.path.getsize(path) for path in objects)
    assert stored > 64 * MIB  # the data really was written
    objects_resident = resident_bytes(objects)
    assert source_resident + objects_resident < 16 * MIB, (source_resident, objects_resident)


def _record_objects(savedir: str, backup_id: str):
    """Paths of the objects holding the directory records of a backup (not inline)."""
    objects = ObjectStore(savedir, "host")
    record = Catalog(savedir, "host").read(backup_id)
    reader = TreeReader(objects)
    digests = {digest for entry in reader.root_entries(record.root)
               for digest, _length in entry.chunks}
    for _path, entry in reader.walk(record.root, include_implicit=True):
        if entry.kind == KIND_DIR and not entry.flags & FLAG_INLINE:
            digests.update(digest for digest, _length in entry.chunks)
    return [objects.path_of(digest) for digest in sorted(digests)]


def test_a_rebackup_leaves_the_earlier_directory_records_in_the_page_cache(tmp_path):
    # Every re-backup reads them again: dropped, each would wait for the disk
    # for all of them (file content read for a backup or restore is dropped).
    src = tmp_path / "src"
    for number in range(6):
        directory = src / ("d%d" % number)
        directory.mkdir(parents=True)
        (directory / "file").write_bytes(b"%d" % number * 100)
        helpers.outgrow_inline_record(str(directory))
    savedir = str(tmp_path / "save")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    args = ["--save-directory", savedir, "--backup", "--subset", "cache"]
    first = helpers.run(args, input=helpers.find_print0(str(src)))
    assert first.returncode == 0, first.stderr.decode(errors="replace")
    records = _record_objects(savedir, helpers.list_ids(savedir)[-1])
    assert len(records) >= 6  # each directory's own (the root's may be in the top record)

    drop_caches()
    assert resident_bytes(records) == 0, "the cache was not emptied"
    again = helpers.run(args, input=helpers.find_print0(str(src)))
    assert again.returncode == 0, again.stderr.decode(errors="replace")
    cold = [path for path in records if resident_bytes([path]) == 0]
    assert not cold, cold
