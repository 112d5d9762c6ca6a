#!/usr/bin/env python3
"""Expiry and verification, measured: space freed and verify speed.

Builds a tree, backs it up on several "days" with part of the data
replaced each day, then expires every backup but the newest and reports
how much of the space held only by the expired days came back (``du``
before and after), and how fast ``--check`` and ``--verify`` read the save
directory (MB/s of content, i.e. uncompressed, and of bytes on disk).

    python3 bench/bench_expiry.py [--size-mib 256] [--days 4] [--churn 0.25]
                                  [--cold] [--peers] [--work DIR]

``--cold`` empties the page cache before each verify (root only).
``--peers`` also times ``borg check --verify-data`` and ``restic check
--read-data`` on the same final tree, for calibration.
Prints numbers only; it asserts nothing.
"""

import argparse
import os
import random
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BACKSHIFT = [sys.executable, os.path.join(os.path.dirname(HERE), "bin", "backshift")]
MIB = 1024 * 1024


def du(path: str) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", path], check=True,
                         stdout=subprocess.PIPE).stdout
    return int(out.split()[0])


def write_file(path: str, size: int, rng: random.Random) -> None:
    """Half the files are incompressible, half compressible text."""
    with open(path, "wb") as handle:
        if rng.random() < 0.5:
            handle.write(os.urandom(size))
        else:
            words = [b"%x" % rng.getrandbits(24) for _ in range(4000)]
            left = size
            while left > 0:
                line = b" ".join(rng.choice(words) for _ in range(2000)) + b"\n"
                handle.write(line[:left])
                left -= len(line)


def make_day(top: str, day: int, size: int, churn: float, rng: random.Random) -> None:
    """Day 0: ``size`` bytes in files of 1-8 MiB plus small files; later days
    replace ``churn`` of the big files by new ones."""
    os.makedirs(top, exist_ok=True)
    big = sorted(name for name in os.listdir(top) if name.startswith("big-"))
    if day == 0:
        total, number = 0, 0
        while total < size:
            length = rng.randrange(1 * MIB, 8 * MIB)
            write_file(os.path.join(top, "big-%d-%d" % (day, number)), length, rng)
            total += length
            number += 1
        small = os.path.join(top, "small")
        os.makedirs(small)
        for index in range(2000):
            with open(os.path.join(small, "f%d" % index), "wb") as handle:
                handle.write(b"small file %d\n" % index * rng.randrange(1, 200))
        return
    for number, name in enumerate(rng.sample(big, max(1, int(len(big) * churn)))):
        length = os.path.getsize(os.path.join(top, name))
        os.unlink(os.path.join(top, name))
        write_file(os.path.join(top, "big-%d-%d" % (day, number)), length, rng)


def run(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(BACKSHIFT + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          check=False, **kwargs)


def object_sizes(savedir: str):
    """(content bytes, bytes on disk) of every object."""
    content = disk = 0
    root = os.path.join(savedir, "objects")
    for prefix in os.listdir(root):
        directory = os.path.join(root, prefix)
        for name in os.listdir(directory):
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            with open(path, "rb") as handle:
                header = handle.read(16)
            content += struct.unpack_from("<Q", header, 8)[0]
            disk += os.path.getsize(path)
    return content, disk


def drop_caches(cold: bool) -> None:
    if not cold:
        return
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as handle:
        handle.write("3\n")


def timed(label: str, command, cold: bool, content: int, disk: int) -> float:
    """Run a command; print wall time, CPU time (this machine may be shared) and MB/s."""
    drop_caches(cold)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    status = "ok" if result.returncode == 0 else "exit %d" % result.returncode
    if content:
        on_disk = "%6.1f MB/s on disk  " % (disk / elapsed / 1e6) if disk else ""
        print("%-32s %6.2f s wall %6.2f s CPU  %6.1f MB/s content (%6.1f per CPU s)  %s(%s)"
              % (label, elapsed, cpu, content / elapsed / 1e6, content / max(cpu, 1e-6) / 1e6,
                 on_disk, status))
    else:
        print("%-32s %6.2f s wall %6.2f s CPU  (%s)" % (label, elapsed, cpu, status))
    return elapsed


def timed_env(label: str, command, env, cold: bool, content: int) -> None:
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        timed(label, command, cold, content, 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def peers(tree: str, work: str, cold: bool, content: int) -> None:
    env = dict(os.environ, BORG_PASSPHRASE="", BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               RESTIC_PASSWORD="bench")
    if shutil.which("borg"):
        repo = os.path.join(work, "borg")
        subprocess.run(["borg", "init", "-e", "none", repo], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["borg", "create", repo + "::a", "."], cwd=tree, env=env, check=True)
        timed_env("borg check --verify-data", ["borg", "check", "--verify-data", repo], env,
                  cold, content)
    if shutil.which("restic"):
        repo = os.path.join(work, "restic")
        subprocess.run(["restic", "init", "-q", "--repo", repo], env=env, check=True)
        subprocess.run(["restic", "backup", "-q", "--repo", repo, "."], cwd=tree, env=env,
                       check=True)
        timed_env("restic check --read-data",
                  ["restic", "check", "-q", "--read-data", "--repo", repo], env, cold, content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--churn", type=float, default=0.25)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--peers", action="store_true")
    parser.add_argument("--work", help="scratch directory (default: a new temporary one)")
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-expiry-")
    tree = os.path.join(work, "tree")
    savedir = os.path.join(work, "save")
    rng = random.Random(1)
    try:
        run(["--save-directory", savedir, "--init-savedir"])
        backup_seconds = 0.0
        for day in range(args.days):
            make_day(tree, day, args.size_mib * MIB, args.churn, rng)
            listing = subprocess.run(["find", ".", "-print0"], cwd=tree, check=True,
                                     stdout=subprocess.PIPE).stdout
            started = time.monotonic()
            result = run(["--save-directory", savedir, "--backup", "--subset", "bench"],
                         input=listing, cwd=tree)
            backup_seconds += time.monotonic() - started
            assert result.returncode == 0, result.stderr.decode()
        tree_bytes = du(tree)
        content, disk = object_sizes(savedir)
        print("tree %.1f MiB; %d daily backups (%.0f%% of the big files new each day), "
              "backed up in %.1f s" % (tree_bytes / MIB, args.days, 100 * args.churn,
                                       backup_seconds))
        print("save directory before expire: %.1f MiB (du), objects hold %.1f MiB of content"
              % (du(savedir) / MIB, content / MIB))

        check = BACKSHIFT + ["--save-directory", savedir, "--check"]
        verify = BACKSHIFT + ["--save-directory", savedir, "--verify"]
        timed("backshift --check", check, args.cold, content, disk)
        timed("backshift --verify", verify, args.cold, content, disk)

        # Objects unused for the grace period may go: wait out a zero grace.
        before = du(savedir)
        time.sleep(6)
        started = time.monotonic()
        result = run(["--save-directory", savedir, "--expire", "--max-age", "0s",
                      "--keep-last", "1", "--expire-grace", "0s", "--progress-report",
                      "minimal"])
        expire_seconds = time.monotonic() - started
        after = du(savedir)
        summary = [line for line in result.stderr.decode().splitlines() if "freed" in line]
        # What only the expired days held: everything beyond one copy of today's tree,
        # compressed as stored (the saved size of today's tree is what must stay).
        kept_content, kept_disk = object_sizes(savedir)
        print("expire --max-age 0s --keep-last 1: %.2f s; %s" % (expire_seconds,
                                                                 summary[-1] if summary else ""))
        print("du before %.1f MiB, after %.1f MiB: freed %.1f MiB (%.0f%%); left %.1f MiB of "
              "objects holding %.1f MiB of content (the newest backup's)"
              % (before / MIB, after / MIB, (before - after) / MIB,
                 100.0 * (before - after) / before, kept_disk / MIB, kept_content / MIB))
        timed("backshift --verify after expire", verify, args.cold, kept_content, kept_disk)
        if args.peers:
            peers(tree, work, args.cold, tree_bytes)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
