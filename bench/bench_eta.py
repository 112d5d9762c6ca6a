#!/usr/bin/env python3
"""How true the progress ETA is, on the worst case for a count-based one; prints numbers.

    python3 bench/bench_eta.py [--source /usr/share] [--megabytes 300] [--work DIR]
        [--compression xz:1] [--small-share 0.1] [--in-order] [--lines]

Builds a tree of real data taken from SOURCE: small files (copies of its
files under 16 KiB, --small-share of the bytes, 10% by default) and big
ones (24 MiB each, the rest), and backs it up with the small files first
and the big ones last, standard error on a pseudo-terminal, so the
progress report is on as for a person.  For each redraw it prints the
elapsed time, the ETA shown and the time that really remained (with
--lines, the whole progress line too); then, at 25%, 50% and 75% of the
run, whether the ETA shown was within 30% of the truth.  The load average
before and after is printed with them: other programs taking the CPUs
midway make the time left longer than any estimate could know.

SOURCE's files are taken in a shuffled (seeded) order, and the big files
are made of 64 KiB slices of them dealt in turn, so that each big file is
a sample of the whole.  Taken in directory order and run together
(--in-order), the big files of /usr/share differ sevenfold in how fast
xz -1 compresses them (2.4 MB/s for runs of gzipped man pages, 16 MB/s for
text), and the time left depends on which come last, which no estimate
from the throughput so far can know.
"""

import argparse
import os
import pty
import random
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKSHIFT = [sys.executable, os.path.join(REPO, "bin", "backshift")]
SMALL_MAX = 16 * 1024
BIG_SIZE = 24 * 1024 * 1024
SLICE = 64 * 1024
ETA = re.compile(rb"ETA (\d+):(\d\d):(\d\d)")


def source_files(source: str, in_order: bool) -> List[str]:
    """SOURCE's regular files, in directory order or shuffled (always the same way)."""
    files = []
    for where, dirs, names in os.walk(source):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(where, name)
            if os.path.isfile(path) and not os.path.islink(path):
                files.append(path)
    if not in_order:
        random.Random(12).shuffle(files)
    return files


def build_tree(source: str, tree: str, total: int, share: float,
               in_order: bool = False) -> List[bytes]:
    """Small files then big ones under ``tree``; the path list in that order."""
    small_dir, big_dir = os.path.join(tree, "small"), os.path.join(tree, "big")
    os.makedirs(small_dir)
    os.makedirs(big_dir)
    paths = [tree, small_dir]
    small_bytes = 0
    small_total = int(total * share)
    pieces = [bytearray() for _ in range(max(1, (total - small_total) // BIG_SIZE))]
    dealt = 0  # slices dealt so far
    for path in source_files(source, in_order):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            continue
        if len(data) < SMALL_MAX and small_bytes < small_total:
            target = os.path.join(small_dir, "s%06d" % (len(paths) - 2))
            with open(target, "wb") as handle:
                handle.write(data)
            paths.append(target)
            small_bytes += len(data)
            continue
        for start in range(0, len(data), SLICE):
            # In order: each piece filled in turn; else slices dealt round.
            open_pieces = [piece for piece in pieces if len(piece) < BIG_SIZE]
            if not open_pieces:
                break
            piece = open_pieces[0 if in_order else dealt % len(open_pieces)]
            piece += data[start:start + min(SLICE, BIG_SIZE - len(piece))]
            dealt += 1
        if small_bytes >= small_total and all(len(piece) >= BIG_SIZE for piece in pieces):
            break
    big = []
    for number, piece in enumerate(pieces):
        big.append(os.path.join(big_dir, "b%03d" % number))
        with open(big[-1], "wb") as handle:
            handle.write(piece)
    print("tree: %d small files, %.0f MB; %d big files, %.0f MB" % (
        len(paths) - 2, small_bytes / 1e6, len(big), sum(map(len, pieces)) / 1e6))
    return [os.fsencode(path) for path in paths + [big_dir] + big]


Redraw = Tuple[float, int, str]  # seconds since the start, ETA shown, the whole line


def run(savedir: str, paths: List[bytes], compression: str) -> Tuple[List[Redraw], float]:
    """Each redraw that shows an ETA, and the whole run's seconds."""
    master, slave = pty.openpty()
    started = time.monotonic()
    proc = subprocess.Popen(BACKSHIFT + ["--save-directory", savedir, "--init-savedir",
                                         "--backup", "--subset", "eta", "--compression",
                                         compression],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    proc.stdin.write(b"\0".join(paths) + b"\0")
    proc.stdin.close()
    redraws: List[Redraw] = []
    tail = b""
    while True:
        ready, _, _ = select.select([master], [], [], 600)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal's last writer has gone
            break
        if not data:
            break
        now = time.monotonic() - started
        tail += data
        *lines, tail = tail.split(b"\r")
        for line in lines:
            found = ETA.search(line)
            if found:
                hours, minutes, seconds = (int(group) for group in found.groups())
                redraws.append((now, hours * 3600 + minutes * 60 + seconds,
                                line.decode(errors="replace").strip()))
    os.close(master)
    proc.wait()
    ended = time.monotonic() - started
    if tail.strip():
        print("last line: %s" % tail.decode(errors="replace").strip())
    return redraws, ended


def shown_at(redraws: List[Redraw], moment: float) -> Optional[Redraw]:
    """The last redraw at or before ``moment``."""
    before = [redraw for redraw in redraws if redraw[0] <= moment]
    return before[-1] if before else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/usr/share")
    parser.add_argument("--megabytes", type=int, default=300)
    parser.add_argument("--work", default=None)
    parser.add_argument("--compression", default="xz:1")
    parser.add_argument("--small-share", type=float, default=0.1)
    parser.add_argument("--in-order", action="store_true",
                        help="take SOURCE's files in directory order, not shuffled")
    parser.add_argument("--lines", action="store_true", help="print each progress line too")
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-eta-", dir=options.work)
    try:
        paths = build_tree(options.source, os.path.join(work, "tree"),
                           options.megabytes * 1000 * 1000, options.small_share,
                           options.in_order)
        load_before = os.getloadavg()[0]
        redraws, ended = run(os.path.join(work, "save"), paths, options.compression)
        print("%d redraws in %.1f s; load average %.2f before, %.2f after (%d cores)" % (
            len(redraws), ended, load_before, os.getloadavg()[0], os.cpu_count() or 1))
        print("  elapsed    ETA shown   really left")
        for when, eta, line in redraws:
            print("  %7.1f  %9d s  %10.1f s%s" % (when, eta, ended - when,
                                                 "  | " + line if options.lines else ""))
        failures = 0
        for share in (0.25, 0.5, 0.75):
            redraw = shown_at(redraws, share * ended)
            if redraw is None:
                print("at %d%%: no ETA shown yet  FAIL" % (share * 100))
                failures += 1
                continue
            when, eta, _line = redraw
            truth = ended - when
            error = abs(eta - truth) / truth
            failures += error > 0.3
            print("at %d%% (%.1f s): ETA %d s, really %.1f s left, off by %.0f%%  %s" % (
                share * 100, when, eta, truth, 100 * error, "FAIL" if error > 0.3 else "ok"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
