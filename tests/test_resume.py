"""Issue 4 item 2: kill -9 at any moment; the next backup resumes and completes.

Real backup processes are killed with SIGKILL at several points (between
small files, inside a big file), then the next run of the same host and
subset must complete, read again nothing the killed run had checkpointed,
and restore to the source exactly.
"""

import base64
import os
import random
import signal
from typing import Callable

import pytest

from backshift.pipeline import DEFAULT_MAX_BYTES
from helpers import (NO_SETTLE, FedBackup, assert_same_tree, costly_text, extract, find_print0,
                     list_ids, produce_tar, read_record, run_ok, saved_so_far, wait_until)


# Several data chunks (1 MiB on average), so that a checkpoint can fall inside it.
BIG = 6 * 1024 * 1024
# A file whose text (make_big) is 16 MiB more than the store's queue
# holds: the reader has to wait for its first chunks to be written before it
# can hand over the last ones, so a checkpoint is certain to show a prefix of
# it while it is read.  (A smaller file can be handed over whole before the
# workers write any of it; the tree published next then holds all of it.)
PAST_QUEUE = (DEFAULT_MAX_BYTES + 16 * 1024 * 1024) * 3 // 4
# Compression is not the point here: the cheapest level.
RESUME = ["--compression", "zlib:1", "--no-fsync"] + list(NO_SETTLE)
OPTIONS = ["--checkpoint-interval", "0.001", "--compression", "zlib:1"] + list(NO_SETTLE)


def make_source(top: str) -> int:
    """Two directories of small files around one big, compressible-but-costly file."""
    rng = random.Random(4)
    total = 0
    for part in ("a", "c"):
        os.makedirs(os.path.join(top, part))
        for n in range(120):
            data = base64.b64encode(rng.randbytes(rng.randrange(100, 12000)))
            with open(os.path.join(top, part, "f%03d" % n), "wb") as handle:
                handle.write(data)
            total += len(data)
    os.makedirs(os.path.join(top, "b"))
    total += make_big(os.path.join(top, "b", "big"), rng, PAST_QUEUE)
    return total


def make_big(path: str, rng: random.Random, size: int = BIG) -> int:
    """Text xz has to work for (helpers.costly_text); its size."""
    with open(path, "wb") as handle:
        for _ in range(size // (3 << 20)):
            handle.write(costly_text(rng, 4 << 20))
    return os.path.getsize(path)


def all_stopped(pid: int) -> bool:
    """Has every thread of ``pid`` stopped (after SIGSTOP)?"""
    tasks = os.path.join("/proc", str(pid), "task")
    for task in os.listdir(tasks):
        with open(os.path.join(tasks, task, "stat"), "rb") as handle:
            # "pid (comm) STATE ...": the state follows the last parenthesis.
            if handle.read().rsplit(b")", 1)[1].split()[0] not in (b"T", b"t"):
                return False
    return True


def kill_when(backup: FedBackup, ready: Callable[[dict], bool]) -> str:
    """SIGKILL a fed backup once its published record satisfies ``ready``; its id.

    Each look is taken with the process stopped (SIGSTOP), so the record
    judged is the one it leaves: nothing is published between the look
    and the kill.  It can only get as far as the paths fed allow.
    """
    backup_id = backup.wait_started()
    pid = backup.proc.pid

    def stopped_and_ready() -> bool:
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: all_stopped(pid), what="the backup to stop")
        if ready(read_record(backup.savedir, backup_id)):
            return True
        os.kill(pid, signal.SIGCONT)
        assert backup.proc.poll() is None, "backup ended before it could be killed"
        return False

    wait_until(stopped_and_ready, what="the kill point")
    backup.proc.kill()
    backup.finish()
    return backup_id


def kill_once_seen(backup: FedBackup, ready: Callable[[dict], bool]) -> str:
    """SIGKILL a fed backup once its published record is seen to satisfy ``ready``; its id.

    Unlike kill_when, the backup runs undisturbed (a stopped backup is a
    slow one): it may publish once more between the look and the kill.
    """
    backup_id = backup.wait_started()

    def seen_ready() -> bool:
        assert backup.proc.poll() is None, "backup ended before it could be killed"
        try:
            return ready(read_record(backup.savedir, backup_id))
        except (OSError, ValueError):
            return False  # replaced while read: look again
    wait_until(seen_ready, what="the kill point")
    backup.proc.kill()
    backup.finish()
    return backup_id


def resume(savedir: str, paths: bytes, cwd: str) -> str:
    """Run the backup to the end; its id.

    Runs may start in the same second: ids name only the second, and the
    run resumed from is the newest by the exact start its record holds
    (catalog.backup_order), so nothing waits for the clock here."""
    before = set(list_ids(savedir))
    run_ok(["--save-directory", savedir, "--backup", "--subset", "resume"] + RESUME,
           input=paths, cwd=cwd)
    (new,) = set(list_ids(savedir)) - before
    return new


def paths_of(tmp_path, top: str) -> bytes:
    # Sorted, so the small files of a/ come before the big file and c/ after.
    return b"".join(sorted(p + b"\0" for p in find_print0(top, cwd=str(tmp_path)).split(b"\0")
                           if p))


def up_to(paths: bytes, last: bytes) -> bytes:
    """The paths up to and including ``last``."""
    end = paths.index(b"\0" + last + b"\0") + len(last) + 2
    return paths[:end]


def test_kill_9_at_several_points_then_resume(savedir, tmp_path):
    top = str(tmp_path / "src")
    total = make_source(top)
    big_size = os.path.getsize(os.path.join(top, "b", "big"))
    paths = paths_of(tmp_path, "src")
    cwd = str(tmp_path)
    newest_saved = (0, 0)

    def between_small_files(record: dict) -> bool:
        whole, prefix = saved_so_far(savedir, record)
        return record["checkpoints"] >= 2 and whole > newest_saved[0] and prefix == 0

    def inside_the_big_file(record: dict) -> bool:
        return record["root"] is not None and 0 < saved_so_far(savedir, record)[1] < big_size

    kill_points = [
        # Each run is fed the paths up to where it is to be killed, and no more.
        # (A backup's record is written once its input names a path.)
        ("at once", b"src\0", lambda record: True),
        ("between small files", up_to(paths, b"src/a/f119"), between_small_files),
        ("inside the big file", up_to(paths, b"src/b/big"), inside_the_big_file),
    ]
    for label, fed, ready in kill_points:
        backup = FedBackup(savedir, cwd, subset="resume", extra=OPTIONS)
        backup.feed(fed)
        killed = kill_when(backup, ready)
        record = read_record(savedir, killed)
        assert record["state"] == "unfinished", label
        # What the killed run read is at most what was left after the run it resumed.
        assert record["bytes_read"] <= total - sum(newest_saved), label
        # The save directory stays usable: listed, and the checkpoint restores
        # (files complete at the checkpoint only, each exactly as in the source).
        listing = run_ok(["--save-directory", savedir, "--list-backups"]).stdout.decode()
        assert killed in listing
        run_ok(["--save-directory", savedir, "--verify"])  # every object whole
        if record["root"] is not None:
            saved = saved_so_far(savedir, record)
            assert saved[0] + saved[1] >= sum(newest_saved), label  # nothing lost
            newest_saved = saved
            dest = str(tmp_path / ("partial-" + killed))
            extract(produce_tar(savedir, killed), dest)
            for dirpath, _dirs, files in os.walk(dest):
                for name in files:
                    restored = os.path.join(dirpath, name)
                    original = os.path.join(top, os.path.relpath(restored, os.path.join(dest, "src")))
                    with open(restored, "rb") as a, open(original, "rb") as b:
                        assert a.read() == b.read(), (label, restored)
    assert newest_saved[0] > 0, "no checkpoint saved any whole file"
    assert newest_saved[1] > 0, "no checkpoint saved part of the big file"
    final_id = resume(savedir, paths, cwd)
    final = read_record(savedir, final_id)
    assert final["state"] == "complete"
    # Nothing already saved (whole files and the big file's prefix) is read again.
    assert final["bytes_read"] <= total - sum(newest_saved)
    assert final["bytes_reused"] >= newest_saved[0]
    dest = str(tmp_path / "restored")
    extract(produce_tar(savedir, final_id), dest)
    assert_same_tree(top, os.path.join(dest, "src"))


@pytest.mark.parametrize("options, big, kill", [
    (OPTIONS, PAST_QUEUE, kill_when),
    # At a second's interval, with xz as by default: the reader is done with
    # the file while the workers still have seconds of it to compress, yet a
    # checkpoint soon holds the prefix written so far.
    (["--checkpoint-interval", "1"] + list(NO_SETTLE), 3 * BIG, kill_once_seen),
], ids=["every-chunk", "one-second-xz"])
def test_partial_file_resumes_after_its_prefix(savedir, tmp_path, options, big, kill):
    # Killed inside the big file, the next run reads only the rest of it.
    top = str(tmp_path / "src")
    os.makedirs(top)
    size = make_big(os.path.join(top, "big"), random.Random(5), big)
    paths = find_print0("src", cwd=str(tmp_path))
    os.sync()  # earlier tests' write-back would stall the record's writes
    backup = FedBackup(savedir, tmp_path, subset="resume", extra=options)
    backup.feed(paths)

    def part_saved(record: dict) -> bool:
        whole, prefix = saved_so_far(savedir, record)
        assert whole < size, "no checkpoint held part of the file before all of it was written"
        return 0 < prefix < size
    killed = kill(backup, part_saved)
    prefix = saved_so_far(savedir, read_record(savedir, killed))[1]
    assert 0 < prefix < size
    final_id = resume(savedir, paths, str(tmp_path))
    final = read_record(savedir, final_id)
    assert final["bytes_read"] == size - prefix
    dest = str(tmp_path / "restored")
    extract(produce_tar(savedir, final_id), dest)
    assert_same_tree(top, os.path.join(dest, "src"))
