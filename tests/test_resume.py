"""Issue 4 item 2: kill -9 at any moment; the next backup resumes and completes.

Real backup processes are killed with SIGKILL at several points (between
small files, inside a big file), then the next run of the same host and
subset must complete, read again nothing the killed run had checkpointed,
and restore to the source exactly.
"""

import base64
import os
import random
import subprocess
import time
from typing import Callable, Tuple

from helpers import (BACKSHIFT, assert_same_tree, extract, find_print0, list_ids,
                     produce_tar, read_record, run, run_ok)

from backshift.objectstore import ObjectStore
from backshift.records import FLAG_PARTIAL, KIND_FILE, KIND_HARDLINK
from backshift.tree import TreeReader

SETTLE_SECONDS = 2.2
BIG = 48 * 1024 * 1024  # xz must still be busy with it in the third run, however fast the rest


def make_source(top: str) -> int:
    """Two directories of small files around one big, compressible-but-costly file."""
    rng = random.Random(4)
    total = 0
    for part in ("a", "c"):
        os.makedirs(os.path.join(top, part))
        for n in range(400):
            data = base64.b64encode(rng.randbytes(rng.randrange(100, 12000)))
            with open(os.path.join(top, part, "f%03d" % n), "wb") as handle:
                handle.write(data)
            total += len(data)
    os.makedirs(os.path.join(top, "b"))
    with open(os.path.join(top, "b", "big"), "wb") as handle:
        # base64 text: xz has to work for it (slow enough to be killed inside)
        for _ in range(BIG // (3 << 20)):
            data = base64.b64encode(rng.randbytes(3 << 20))
            handle.write(data)
            total += len(data)
    return total


def saved_so_far(savedir: str, record: dict) -> Tuple[int, int]:
    """(bytes of whole files, bytes of PARTIAL prefixes) in a record's tree."""
    if record["root"] is None:
        return 0, 0
    reader = TreeReader(ObjectStore(savedir, "test"))
    root = [(bytes.fromhex(digest), length) for digest, length in record["root"]]
    whole = prefix = 0
    for _path, entry in reader.walk(root):
        if entry.kind not in (KIND_FILE, KIND_HARDLINK):
            continue
        if entry.flags & FLAG_PARTIAL:
            prefix += sum(length for _, length in entry.chunks)
        else:
            whole += entry.size
    return whole, prefix


def start_backup(savedir: str, cwd: str, paths: bytes) -> subprocess.Popen:
    proc = subprocess.Popen(BACKSHIFT + [
        "--save-directory", savedir, "--backup", "--subset", "resume",
        "--checkpoint-interval", "0.2"], cwd=cwd, stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.stdin.write(paths)
    proc.stdin.close()
    return proc


def kill_when(proc: subprocess.Popen, savedir: str, known: set,
              ready: Callable[[dict], bool]) -> str:
    """SIGKILL ``proc`` once its backup record satisfies ``ready``; its id."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "backup ended before it could be killed: " + \
            proc.stderr.read().decode(errors="replace")
        new = [i for i in list_ids(savedir) if i not in known]
        if new:
            try:
                record = read_record(savedir, new[0])
            except ValueError:
                record = None
            if record is not None and ready(record):
                proc.kill()
                proc.wait()
                proc.stderr.close()
                return new[0]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("backup never reached the kill point")


def has_partial(savedir: str) -> Callable[[dict], bool]:
    return lambda record: record["root"] is not None and saved_so_far(savedir, record)[1] > 0


def test_kill_9_at_several_points_then_resume(savedir, tmp_path):
    top = str(tmp_path / "src")
    total = make_source(top)
    time.sleep(SETTLE_SECONDS)
    # Sorted, so the small files of a/ come before the big file and c/ after.
    paths = b"".join(sorted(p + b"\0" for p in find_print0("src", cwd=str(tmp_path)).split(b"\0") if p))
    cwd = str(tmp_path)
    kill_points = [
        ("at once", lambda record: True),
        ("between small files", lambda record: record["checkpoints"] >= 2),
        ("inside the big file", has_partial(savedir)),
    ]
    newest_saved = (0, 0)
    for label, ready in kill_points:
        proc = start_backup(savedir, cwd, paths)
        killed = kill_when(proc, savedir, set(list_ids(savedir)), ready)
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
    result = run(["--save-directory", savedir, "--backup", "--subset", "resume"],
                 input=paths, cwd=cwd)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    final_id = list_ids(savedir)[-1]
    final = read_record(savedir, final_id)
    assert final["state"] == "complete"
    # Nothing already saved (whole files and the big file's prefix) is read again.
    assert final["bytes_read"] <= total - sum(newest_saved)
    assert final["bytes_reused"] >= newest_saved[0]
    dest = str(tmp_path / "restored")
    extract(produce_tar(savedir, final_id), dest)
    assert_same_tree(top, os.path.join(dest, "src"))


def test_partial_file_resumes_after_its_prefix(savedir, tmp_path):
    # Killed inside the big file, the next run reads only the rest of it.
    top = str(tmp_path / "src")
    os.makedirs(top)
    rng = random.Random(5)
    with open(os.path.join(top, "big"), "wb") as handle:
        for _ in range(BIG // (3 << 20)):
            handle.write(base64.b64encode(rng.randbytes(3 << 20)))
    size = os.path.getsize(os.path.join(top, "big"))
    time.sleep(SETTLE_SECONDS)
    paths = find_print0("src", cwd=str(tmp_path))
    proc = start_backup(savedir, str(tmp_path), paths)
    killed = kill_when(proc, savedir, set(), has_partial(savedir))
    prefix = saved_so_far(savedir, read_record(savedir, killed))[1]
    assert 0 < prefix < size
    run_ok(["--save-directory", savedir, "--backup", "--subset", "resume"],
           input=paths, cwd=str(tmp_path))
    final_id = list_ids(savedir)[-1]
    final = read_record(savedir, final_id)
    assert final["bytes_read"] == size - prefix
    dest = str(tmp_path / "restored")
    extract(produce_tar(savedir, final_id), dest)
    assert_same_tree(top, os.path.join(dest, "src"))
