#!/usr/bin/env python3
"""--find over many backups of a mostly unchanged tree against over one; prints numbers.

    python3 bench/bench_find.py [--source /usr/share] [--backups 30] [--work DIR]
        [--pattern '*/README*']

Copies SOURCE, backs it up BACKUPS times (zlib, no fsync: only the
directory records matter here) with a few changes between backups (three
files edited, one added, one removed), then times ``--find PATTERN`` over
the first backup alone and over all of them (best of three, wall seconds of
the real bin/backshift process).  Directory records already searched are
not read again, so the ratio should stay far below the number of backups;
the target is under 3.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKSHIFT = [sys.executable, os.path.join(REPO, "bin", "backshift")]


def change_a_little(top: str, files: List[str], rng: random.Random, round_: int) -> None:
    """Edit three files, add one, remove one."""
    for path in rng.sample(files, 3):
        with open(path, "ab") as handle:
            handle.write(b"edited in round %d\n" % round_)
    added = os.path.join(os.path.dirname(rng.choice(files)), "added-%d.txt" % round_)
    with open(added, "wb") as handle:
        handle.write(b"new in round %d\n" % round_)
    files.append(added)
    gone = files.pop(rng.randrange(len(files)))
    os.unlink(gone)


def timed(args: List[str]) -> (float, int):
    """Best wall seconds of three runs, and the number of lines printed."""
    best, lines = float("inf"), 0
    for _ in range(3):
        started = time.monotonic()
        out = subprocess.run(BACKSHIFT + args, stdout=subprocess.PIPE, check=True).stdout
        best = min(best, time.monotonic() - started)
        lines = out.count(b"\n")
    return best, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/usr/share")
    parser.add_argument("--backups", type=int, default=30)
    parser.add_argument("--work", default=None)
    parser.add_argument("--pattern", default="*/README*")
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-find-", dir=options.work)
    try:
        tree = os.path.join(work, "tree")
        subprocess.run(["cp", "-a", options.source, tree], check=True)
        files = sorted(os.path.join(where, name) for where, _dirs, names in os.walk(tree)
                       for name in names if os.path.isfile(os.path.join(where, name))
                       and not os.path.islink(os.path.join(where, name)))
        savedir = os.path.join(work, "save")
        base = ["--save-directory", savedir]
        rng = random.Random(12)
        started = time.monotonic()
        for number in range(options.backups):
            if number:
                change_a_little(tree, files, rng, number)
            paths = subprocess.run(["find", tree, "-print0"], stdout=subprocess.PIPE,
                                   check=True).stdout
            subprocess.run(BACKSHIFT + base + ["--init-savedir", "--backup", "--subset", "b",
                                               "--no-fsync", "--compression", "zlib",
                                               "--settle-time", "0"],
                           input=paths, check=True)
        print("%d backups of %s (%d files) made in %.1f s" % (
            options.backups, options.source, len(files), time.monotonic() - started))
        first = subprocess.run(BACKSHIFT + base + ["--list-backups"], stdout=subprocess.PIPE,
                               check=True).stdout.split(b"\t", 1)[0].decode()
        one, one_lines = timed(base + ["--find", options.pattern, "--backup-id", first])
        every, all_lines = timed(base + ["--find", options.pattern])
        print("find %r over 1 backup:   %6.2f s, %d matches" % (options.pattern, one, one_lines))
        print("find %r over %d backups: %6.2f s, %d matches" % (
            options.pattern, options.backups, every, all_lines))
        print("ratio %.2f (target < 3): %s" % (every / one, "ok" if every / one < 3 else "FAIL"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
