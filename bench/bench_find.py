#!/usr/bin/env python3
"""--find over many backups of a mostly unchanged tree against over one; prints numbers.

    python3 bench/bench_find.py [--source /usr/share] [--backups 30] [--work DIR]
        [--pattern '*/README*'] [--runs 5] [--savedir DIR]

Copies SOURCE, backs it up BACKUPS times (zlib, no fsync: only the
directory records matter here) with a few changes between backups (three
files edited, one added, one removed), then times ``--find PATTERN`` over
the first backup alone and over all of them, with the same pattern.

Fairness: both searches run as the real bin/backshift process (interpreter
start-up included in both), with the page cache warm (one untimed run of
each first), alternately, so that load from other programs falls on both
alike; the best of --runs is taken, as wall and as CPU seconds (user +
system of the process).  Directory records already searched are not read
again, so the ratio should stay far below the number of backups; the target
is under 3 (wall, and CPU).

With --savedir the backups are kept there and made only if it holds none,
so that a search can be timed again (or profiled) without making them anew.
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


class Timing:
    """Best wall and CPU seconds of one search, and the number of lines it printed."""

    def __init__(self, args: List[str]) -> None:
        self.args = args
        self.wall = self.cpu = float("inf")
        self.lines = 0

    def run(self, count: bool = True) -> None:
        started = time.monotonic()
        proc = subprocess.Popen(BACKSHIFT + self.args, stdout=subprocess.PIPE)
        out = proc.stdout.read()
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        proc.stdout.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise SystemExit("backshift %s failed (exit %d)" % (" ".join(self.args),
                                                                proc.returncode))
        if count:
            self.wall = min(self.wall, wall)
            self.cpu = min(self.cpu, usage.ru_utime + usage.ru_stime)
        self.lines = out.count(b"\n")


def make_backups(source: str, work: str, savedir: str, backups: int) -> None:
    """BACKUPS backups of a copy of SOURCE, a few changes between them."""
    tree = os.path.join(work, "tree")
    subprocess.run(["cp", "-a", source, tree], check=True)
    files = sorted(os.path.join(where, name) for where, _dirs, names in os.walk(tree)
                   for name in names if os.path.isfile(os.path.join(where, name))
                   and not os.path.islink(os.path.join(where, name)))
    rng = random.Random(12)
    started = time.monotonic()
    for number in range(backups):
        if number:
            change_a_little(tree, files, rng, number)
        paths = subprocess.run(["find", tree, "-print0"], stdout=subprocess.PIPE,
                               check=True).stdout
        subprocess.run(BACKSHIFT + ["--save-directory", savedir, "--init-savedir", "--backup",
                                    "--subset", "b", "--no-fsync", "--compression", "zlib",
                                    "--settle-time", "0"],
                       input=paths, check=True)
    print("%d backups of %s (%d files) made in %.1f s" % (
        backups, source, len(files), time.monotonic() - started))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/usr/share")
    parser.add_argument("--backups", type=int, default=30)
    parser.add_argument("--work", default=None)
    parser.add_argument("--pattern", default="*/README*")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--savedir", default=None)
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-find-", dir=options.work)
    try:
        savedir = options.savedir or os.path.join(work, "save")
        base = ["--save-directory", savedir]
        if not os.path.isdir(os.path.join(savedir, "backups")):
            make_backups(options.source, work, savedir, options.backups)
        ids = subprocess.run(BACKSHIFT + base + ["--list-backups"], stdout=subprocess.PIPE,
                             check=True).stdout.splitlines()
        first = ids[0].split(b"\t", 1)[0].decode()
        one = Timing(base + ["--find", options.pattern, "--backup-id", first])
        every = Timing(base + ["--find", options.pattern])
        one.run(count=False)  # the page cache warm for both
        every.run(count=False)
        for _ in range(options.runs):
            one.run()
            every.run()
        print("find %r, warm page cache, best of %d, wall (CPU) seconds:" % (
            options.pattern, options.runs))
        print("  over 1 backup:   %6.2f s (%5.2f s CPU), %d matches" % (
            one.wall, one.cpu, one.lines))
        print("  over %d backups: %6.2f s (%5.2f s CPU), %d matches" % (
            len(ids), every.wall, every.cpu, every.lines))
        wall, cpu = every.wall / one.wall, every.cpu / one.cpu
        print("ratio %.2f wall, %.2f CPU (target < 3): %s" % (
            wall, cpu, "ok" if max(wall, cpu) < 3 else "FAIL"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
