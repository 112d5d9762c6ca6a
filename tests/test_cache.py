"""Seed feature 7: a backup does not fill the buffer cache.

Measured as a user would: empty the page cache (root), back up a 64 MiB
file, then ask ``fincore`` how much of the source file and of the objects
written is resident.  CI runs as root; if the cache cannot be emptied the
test fails rather than skips, because then it would prove nothing.
"""

import os
import subprocess

import helpers

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
