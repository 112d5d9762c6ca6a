"""--checkpoint-interval is honoured (within a second) however far the
reader runs ahead of the compressing workers: the unfinished backup record
is replaced at that interval while one slow-to-compress file is stored,
and each interval a new checkpoint (a newer tree) is published, holding
more of the file being stored.

Watched from outside, as --expire sees it: the record file's mtime."""

import json
import os
import random
import subprocess
import time
from typing import List, Tuple

import helpers

INTERVAL = 1.0
# A checkpoint or a fresh record at least this often (the interval, and a second).
LATEST = INTERVAL + 1.0


def watch_backup(savedir: str, src: str, name: str, compression: str) -> List[Tuple[float, dict]]:
    """Back up ``src`` and ``src/name`` with INTERVAL; every version of the
    record seen while it ran, with its mtime, the last one complete."""
    # What earlier tests left to write back goes first: a disk busy with
    # it stalls every write, the record's too, and this measures the
    # program's timing, not the disk's backlog.
    os.sync()
    backup = subprocess.Popen(helpers.BACKSHIFT + [
        "--save-directory", savedir, "--backup", "--subset", "test", "--no-fsync",
        "--compression", compression, "--checkpoint-interval", str(INTERVAL)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    backup.stdin.write(b"%s\0%s/%s\0" % (src.encode(), src.encode(), name.encode()))
    backup.stdin.close()
    backups = os.path.join(savedir, "backups")
    seen: List[Tuple[float, dict]] = []
    while not seen or seen[-1][1]["state"] == "unfinished":
        ids = [name for name in os.listdir(backups) if not name.startswith(".")]
        if ids:
            try:
                mtime = os.stat(os.path.join(backups, ids[0])).st_mtime
                with open(os.path.join(backups, ids[0]), "rb") as handle:
                    record = json.loads(handle.read())
            except (OSError, ValueError):
                continue  # replaced between listing and reading: look again
            if not seen or seen[-1][0] != mtime:
                seen.append((mtime, record))
        if backup.poll() is not None and not ids:
            break
        time.sleep(0.05)  # watching, not ordering: the backup runs regardless
    err = backup.stderr.read()
    backup.wait()
    assert backup.returncode == 0, err
    assert seen and seen[-1][1]["state"] == "complete", seen
    return seen


def longest_gap(times: List[float]) -> float:
    return max(later - earlier for earlier, later in zip(times, times[1:]))


def test_the_record_is_replaced_every_interval_while_a_big_file_is_stored(savedir, tmp_path):
    src = tmp_path / "src"
    os.makedirs(str(src))
    # Text of a small alphabet: xz -6 takes seconds over it (the reader
    # hands it all to the workers at once: it is under the pipeline's limit).
    with open(str(src / "slow"), "wb") as handle:
        handle.write(bytes(random.Random(3).choices(b"abcdefghijklmnop", k=2 << 20)))
    seen = watch_backup(savedir, str(src), "slow", "xz:6")
    # Never longer than the interval and a second without a fresh record,
    # however long the workers took.
    assert longest_gap([mtime for mtime, _record in seen]) <= LATEST, seen


def test_a_checkpoint_every_interval_inside_one_big_file(savedir, tmp_path):
    src = tmp_path / "src"
    os.makedirs(str(src))
    # helpers.costly_text costs xz about 0.4 s of CPU per MiB: seconds of
    # work queued behind the reader,
    # which reads all of it at once (it is under the pipeline's limit).
    # 32 MiB keeps the backup past the interval + 1 s on a quiet 2-core
    # machine too (16 MiB took under 2 s there).
    size = 32 << 20
    with open(str(src / "big"), "wb") as handle:
        handle.write(helpers.costly_text(random.Random(7), size))
    seen = watch_backup(savedir, str(src), "big", "xz")
    started, finished = seen[0][0], seen[-1][0]
    assert finished - started > LATEST, "too fast to show anything: %r" % seen
    # When each checkpoint was published (the first record with its count).
    published = []
    for mtime, record in seen[:-1]:
        if record["checkpoints"] > (published[-1][1]["checkpoints"] if published else 0):
            published.append((mtime, record))
    times = [started] + [mtime for mtime, _record in published] + [finished]
    assert longest_gap(times) <= LATEST, [(mtime - started, record["checkpoints"])
                                          for mtime, record in seen]
    # Each checkpoint holds more of the file than the one before.
    saved = [sum(helpers.saved_so_far(savedir, record)) for _mtime, record in published]
    assert saved == sorted(set(saved)) and saved[-1] > 0, saved
