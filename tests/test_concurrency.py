"""Issue 4 item 3: many backup processes write one save directory at once.

Four real backup processes (two of the same host and subset, one of another
subset, one of another host) run at the same time with no lock; data they
share is stored once and every backup restores.  tests/test_sshfs.py runs
the same check with the save directory on a real sshfs mount.
"""

import os
import subprocess
from typing import List, Tuple

from helpers import (BACKSHIFT, assert_same_tree, du_bytes, extract, find_print0, list_ids,
                     produce_tar, read_record, run_ok)

SHARED = 6 * 1024 * 1024


def make_sources(base: str) -> List[str]:
    """Four source trees sharing one big file and a directory of small ones."""
    shared = os.urandom(SHARED)
    small = [os.urandom(500 + 300 * n) for n in range(30)]
    names = []
    for n in range(4):
        top = os.path.join(base, "src%d" % n)
        os.makedirs(os.path.join(top, "common"))
        with open(os.path.join(top, "shared.bin"), "wb") as handle:
            handle.write(shared)
        for i, data in enumerate(small):
            with open(os.path.join(top, "common", "s%02d" % i), "wb") as handle:
                handle.write(data)
        with open(os.path.join(top, "own.bin"), "wb") as handle:
            handle.write(os.urandom(200_000))  # unique to this tree
        names.append("src%d" % n)
    return names


def four_at_once(savedir: str, base: str, extra: Tuple[str, ...] = ()) -> None:
    """Back up four trees concurrently into ``savedir``; check stored-once and restores."""
    names = make_sources(base)
    who = [("alpha", "root"), ("alpha", "root"), ("alpha", "home"), ("beta", "root")]
    procs = []
    for name, (host, subset) in zip(names, who):
        proc = subprocess.Popen(BACKSHIFT + [
            "--save-directory", savedir, "--backup", "--subset", subset, "--hostname", host,
            "--checkpoint-interval", "0.1"] + list(extra),
            cwd=base, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
    # Start feeding only once all four are up, so their work overlaps.
    for name, proc in zip(names, procs):
        proc.stdin.write(find_print0(name, cwd=base))
        proc.stdin.close()
    for proc in procs:
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 0, err.decode(errors="replace")
        proc.stdout.close()
        proc.stderr.close()
    ids = list_ids(savedir)
    assert len(ids) == 4
    by_host = sorted((read_record(savedir, i)["hostname"], read_record(savedir, i)["subset"])
                     for i in ids)
    assert by_host == sorted(who)
    for backup_id in ids:
        record = read_record(savedir, backup_id)
        assert record["state"] == "complete"
        dest = os.path.join(base, "restore-" + backup_id)
        extract(produce_tar(savedir, backup_id), dest)
        restored = os.listdir(dest)
        assert len(restored) == 1
        assert_same_tree(os.path.join(base, restored[0]), os.path.join(dest, restored[0]))
    # The shared 6 MiB is stored once: four copies would need 24 MiB.
    unique = 4 * 200_000
    assert du_bytes(os.path.join(savedir, "objects")) < SHARED + unique + 2 * 1024 * 1024
    leftovers = [name for _dir, _subdirs, files in os.walk(savedir) for name in files
                 if name.startswith(".tmp-")]
    assert not leftovers
    run_ok(["--save-directory", savedir, "--check"])


def test_four_writers_at_once(savedir, tmp_path):
    base = str(tmp_path / "sources")
    os.makedirs(base)
    four_at_once(savedir, base, ("--no-fsync",))
