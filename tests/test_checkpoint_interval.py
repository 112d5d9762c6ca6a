"""--checkpoint-interval is honoured (within a second) however far the
reader runs ahead of the compressing workers: the unfinished backup record
is replaced at that interval while one slow-to-compress file is stored,
first with the last tree already durable, then with newer ones.

Watched from outside, as --expire sees it: the record file's mtime."""

import json
import os
import random
import subprocess
import time

import helpers

INTERVAL = 1.0


def test_the_record_is_replaced_every_interval_while_a_big_file_is_stored(savedir, tmp_path):
    src = tmp_path / "src"
    os.makedirs(str(src))
    # Text of a small alphabet: xz -6 takes seconds over it (the reader
    # hands it all to the workers at once: it is under the pipeline's limit).
    with open(str(src / "slow"), "wb") as handle:
        handle.write(bytes(random.Random(3).choices(b"abcdefghijklmnop", k=2 << 20)))
    backup = subprocess.Popen(helpers.BACKSHIFT + [
        "--save-directory", savedir, "--backup", "--subset", "test", "--no-fsync",
        "--compression", "xz:6", "--checkpoint-interval", str(INTERVAL)],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    backup.stdin.write(b"%s\0%s/slow\0" % (str(src).encode(), str(src).encode()))
    backup.stdin.close()
    backups = os.path.join(savedir, "backups")
    updates = []  # (record mtime, checkpoints) as seen changing
    longest = 0.0
    while backup.poll() is None:
        ids = [name for name in os.listdir(backups) if not name.startswith(".")]
        if ids:
            try:
                mtime = os.stat(os.path.join(backups, ids[0])).st_mtime
                with open(os.path.join(backups, ids[0]), "rb") as handle:
                    record = json.loads(handle.read())
            except (OSError, ValueError):
                continue  # replaced between listing and reading: look again
            if record["state"] != "unfinished":
                break
            if not updates or updates[-1][0] != mtime:
                updates.append((mtime, record["checkpoints"]))
            longest = max(longest, time.time() - updates[-1][0])
        time.sleep(0.05)  # watching, not ordering: the backup runs regardless
    err = backup.stderr.read()
    backup.wait()
    assert backup.returncode == 0, err
    record = helpers.read_record(savedir, helpers.list_ids(savedir)[0])
    ran = (time.mktime(time.strptime(record["finished"][:19], "%Y-%m-%dT%H:%M:%S"))
           - time.mktime(time.strptime(record["started"][:19], "%Y-%m-%dT%H:%M:%S")))
    # Never longer than the interval and a second without a fresh record,
    # however long the workers took; and a fresh record for every interval.
    assert longest <= INTERVAL + 1.0, (longest, updates)
    assert len(updates) >= ran / INTERVAL - 2, (ran, updates)
