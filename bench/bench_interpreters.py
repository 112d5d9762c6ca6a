#!/usr/bin/env python3
"""Benchmark backshift under several Python interpreters, side by side.

Usage: python3 bench/bench_interpreters.py [--source DIR] [--size-mib N]
           [--interpreters python3,pypy3] [--compression SPEC] [--fsync] [--repeat N]

For each interpreter, in turn and in one run (so the ratios compare like with
like on the same machine and cache state): a first backup of the tree into a
fresh save directory, an unchanged re-backup of the same tree, and a restore
(--produce-tar into /dev/null).  The program runs as a real process,
bin/backshift started with that interpreter, fed by a real `find -print0`.

The tree is --source, or else a generated one of about --size-mib MiB shaped
like a system: thousands of small text files, some medium ones, and a few
large ones, half compressible and half not (same bytes on every run).

Prints one row per (interpreter, phase): wall seconds, CPU seconds (user +
system of the child processes), files, and MB/s of file data (wall).
Objects are not fsync'ed unless --fsync, so that disk flushes, which are the
same for every interpreter, do not hide the interpreters' differences.
"""

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
BACKSHIFT = os.path.join(os.path.dirname(HERE), "bin", "backshift")
MIB = 1024 * 1024
WORDS = ("backup chunk digest object record tree tar restore expire verify host subset "
         "save directory file system kernel package library python shell config data").split()


def make_tree(top: str, size: int, seed: int = 7) -> Tuple[int, int]:
    """Write a deterministic tree of about ``size`` bytes; return (files, bytes)."""
    rng = random.Random(seed)
    files = written = 0

    def text(length: int) -> bytes:
        words = []
        total = 0
        while total < length:
            word = rng.choice(WORDS)
            words.append(word)
            total += len(word) + 1
        return " ".join(words).encode()[:length]

    def put(path: str, data: bytes) -> None:
        nonlocal files, written
        with open(path, "wb") as handle:
            handle.write(data)
        files += 1
        written += len(data)

    # Roughly a system's mix by count (most files small) and by bytes (most in large files).
    budget_small, budget_medium = size // 8, size // 4
    n = 0
    while written < budget_small:
        folder = os.path.join(top, "small", "d%03d" % (n // 50))
        os.makedirs(folder, exist_ok=True)
        put(os.path.join(folder, "f%05d.txt" % n), text(rng.randint(100, 4000)))
        n += 1
    os.makedirs(os.path.join(top, "medium"))
    while written < budget_small + budget_medium:
        length = rng.randint(16 * 1024, 256 * 1024)
        data = text(length) if n % 2 else rng.getrandbits(8 * length).to_bytes(length, "little")
        put(os.path.join(top, "medium", "m%05d" % n), data)
        n += 1
    os.makedirs(os.path.join(top, "large"))
    while written < size:
        length = min(8 * MIB, max(MIB, size - written))
        data = text(length) if n % 2 else rng.getrandbits(8 * length).to_bytes(length, "little")
        put(os.path.join(top, "large", "l%05d" % n), data)
        n += 1
    return files, written


def tree_stats(top: str) -> Tuple[int, int]:
    files = size = 0
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
    return files, size


def timed(command: List[str], stdin_command: List[str] = None, cwd: str = None,
          stdout=subprocess.DEVNULL) -> Tuple[float, float]:
    """Run command (fed by stdin_command's output); return (wall, child CPU) seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    feeder = None
    if stdin_command:
        feeder = subprocess.Popen(stdin_command, cwd=cwd, stdout=subprocess.PIPE)
    proc = subprocess.run(command, cwd=cwd, stdin=feeder.stdout if feeder else subprocess.DEVNULL,
                          stdout=stdout, stderr=subprocess.PIPE)
    if feeder:
        feeder.stdout.close()
        feeder.wait()
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):
        sys.exit("bench: %s failed: %s" % (" ".join(command), proc.stderr.decode(errors="replace")))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def version_of(interpreter: str) -> str:
    out = subprocess.run([interpreter, "-c", "import platform, sys; print(platform."
                          "python_implementation(), platform.python_version())"],
                         stdout=subprocess.PIPE, check=True).stdout.decode()
    return out.strip()


def bench_one(interpreter: str, source: str, scratch: str, args) -> Dict[str, Tuple[float, float]]:
    savedir = os.path.join(scratch, "save-" + os.path.basename(interpreter))
    shutil.rmtree(savedir, ignore_errors=True)
    base = [interpreter, BACKSHIFT, "--save-directory", savedir]
    backup = base + ["--backup", "--subset", "bench", "--compression", args.compression,
                     "--progress-report", "none"] + ([] if args.fsync else ["--no-fsync"])
    parent, name = os.path.split(os.path.abspath(source))
    find = ["find", name, "-print0"]
    results = {}
    subprocess.run(base + ["--init-savedir"], check=True)
    results["first backup"] = timed(backup, find, cwd=parent)
    results["unchanged re-backup"] = timed(backup, find, cwd=parent)
    listing = subprocess.run(base + ["--list-backups"], stdout=subprocess.PIPE, check=True)
    last_id = listing.stdout.decode().splitlines()[-1].split()[0]
    results["restore to /dev/null"] = timed(base + ["--produce-tar", "--backup-id", last_id])
    shutil.rmtree(savedir, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", help="tree to back up (default: a generated one)")
    parser.add_argument("--size-mib", type=int, default=96, help="size of the generated tree")
    parser.add_argument("--interpreters", default="python3,pypy3",
                        help="comma-separated interpreters to compare")
    parser.add_argument("--compression", default="xz", help="--compression for the backups")
    parser.add_argument("--fsync", action="store_true", help="let backshift fsync objects")
    parser.add_argument("--repeat", type=int, default=1, help="runs per interpreter (best kept)")
    args = parser.parse_args()
    interpreters = [name for name in args.interpreters.split(",") if shutil.which(name)]
    if not interpreters:
        sys.exit("bench: none of %s found" % args.interpreters)
    scratch = tempfile.mkdtemp(prefix="bench-interp-")
    try:
        if args.source:
            source = args.source
        else:
            source = os.path.join(scratch, "tree")
            make_tree(source, args.size_mib * MIB)
        files, size = tree_stats(source)
        print("tree: %s, %d files, %.1f MiB; compression %s; fsync %s"
              % ("generated" if not args.source else source, files, size / MIB,
                 args.compression, "on" if args.fsync else "off"))
        best: Dict[str, Dict[str, Tuple[float, float]]] = {}
        for _ in range(args.repeat):
            for interpreter in interpreters:  # alternate, so drift hits both alike
                for phase, (wall, cpu) in bench_one(interpreter, source, scratch, args).items():
                    old = best.setdefault(interpreter, {}).get(phase)
                    if old is None or wall < old[0]:
                        best[interpreter][phase] = (wall, cpu)
        print("%-22s %-22s %9s %9s %9s" % ("interpreter", "phase", "wall s", "CPU s", "MB/s"))
        for interpreter in interpreters:
            label = version_of(interpreter)
            for phase, (wall, cpu) in best[interpreter].items():
                print("%-22s %-22s %9.2f %9.2f %9.1f"
                      % (label, phase, wall, cpu, size / 1e6 / wall if wall else 0.0))
        if len(interpreters) > 1:
            first, *others = interpreters
            for other in others:
                for phase in best[first]:
                    print("wall-time ratio %s / %s, %s: %.2f"
                          % (other, first, phase, best[other][phase][0] / best[first][phase][0]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
