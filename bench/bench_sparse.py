#!/usr/bin/env python3
"""A mostly empty sparse file: backshift beside GNU tar, borg and restic, in one run.

Usage: python3 bench/bench_sparse.py [--size-gib N] [--work DIR] [--tools NAME,...]

Makes one file of --size-gib GiB (default 9) holding eight 1 MiB extents of
random data and holes elsewhere, then for each tool measures the backup
(wall seconds, repository size as ``du -s``) and a restore into an empty
directory (wall seconds, allocated size of the restored file, and whether
its content matches, compared extent by extent).  Every tool runs with its
defaults (borg create and restic backup read the holes as zeros).  backshift restores
through ``--produce-tar --tar-format pax | tar -x``; GNU tar archives with
``--sparse``.  A tool that is not installed is skipped with a note.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKSHIFT = [sys.executable, os.path.join(REPO, "bin", "backshift")]
MIB = 1 << 20


def make_sparse(path: str, size: int) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
        for index in range(8):
            handle.seek(size // 8 * index + index * 4096)
            handle.write(os.urandom(MIB))


def digest(path: str) -> str:
    """Content digest reading only data extents; runs of zeros hash as their
    length whether holes or written, so any hole layout compares equal."""
    result = hashlib.sha256()
    zeros = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size, position = os.fstat(fd).st_size, 0
        while position < size:
            try:
                start = os.lseek(fd, position, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            zeros += start - position
            for offset in range(start, end, MIB):
                data = os.pread(fd, min(MIB, end - offset), offset)
                for at in range(0, len(data), 4096):
                    block = data[at:at + 4096]
                    if block.count(0) == len(block):
                        zeros += len(block)
                    else:
                        result.update(b"<%d>" % zeros + block)
                        zeros = 0
            position = end
        zeros += max(size - position, 0)
    finally:
        os.close(fd)
    result.update(b"<%d>" % zeros)
    return result.hexdigest()


def du(path: str) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", path], check=True,
                         stdout=subprocess.PIPE).stdout
    return int(out.split()[0])


def timed(command: Callable[[], None]) -> float:
    start = time.monotonic()
    command()
    return time.monotonic() - start


def sh(args: List[str], cwd: str, env=None, stdin=None) -> None:
    subprocess.run(args, cwd=cwd, env=env, stdin=stdin, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_backshift(work: str) -> Tuple[float, str, float]:
    repo = os.path.join(work, "backshift-repo")
    sh(BACKSHIFT + ["--save-directory", repo, "--init-savedir"], work)
    paths = subprocess.run(["find", "src", "-print0"], cwd=work, check=True,
                           stdout=subprocess.PIPE).stdout
    backup = timed(lambda: subprocess.run(
        BACKSHIFT + ["--save-directory", repo, "--backup", "--subset", "bench"],
        cwd=work, input=paths, check=True, stdout=subprocess.DEVNULL))
    backup_id = sorted(os.listdir(os.path.join(repo, "backups")))[-1]
    out = os.path.join(work, "restore-backshift")
    os.makedirs(out)
    restore = timed(lambda: subprocess.run(
        "%s --save-directory %s --produce-tar --backup-id %s --tar-format pax | tar -xpf -"
        % (" ".join(BACKSHIFT), repo, backup_id), shell=True, cwd=out, check=True))
    return backup, repo, restore


def run_gnu_tar(work: str) -> Tuple[float, str, float]:
    archive = os.path.join(work, "gnu.tar")
    backup = timed(lambda: sh(["tar", "--sparse", "-cf", archive, "src"], work))
    out = os.path.join(work, "restore-gnu-tar")
    os.makedirs(out)
    restore = timed(lambda: sh(["tar", "-xpf", archive], out))
    return backup, archive, restore


def run_borg(work: str) -> Tuple[float, str, float]:
    repo = os.path.join(work, "borg-repo")
    env = dict(os.environ, BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
               BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")
    sh(["borg", "init", "--encryption=none", repo], work, env)
    backup = timed(lambda: sh(["borg", "create", repo + "::a", "src"], work, env))
    out = os.path.join(work, "restore-borg")
    os.makedirs(out)
    restore = timed(lambda: sh(["borg", "extract", "--sparse", repo + "::a"], out, env))
    return backup, repo, restore


def run_restic(work: str) -> Tuple[float, str, float]:
    repo = os.path.join(work, "restic-repo")
    env = dict(os.environ, RESTIC_PASSWORD="bench")
    sh(["restic", "init", "--repo", repo], work, env)
    backup = timed(lambda: sh(["restic", "--repo", repo, "backup", "src"], work, env))
    out = os.path.join(work, "restore-restic")
    os.makedirs(out)
    # restic restore --sparse exists from 0.15 on; older ones write zeros.
    sparse = ["--sparse"] if b"--sparse" in subprocess.run(
        ["restic", "restore", "--help"], stdout=subprocess.PIPE).stdout else []
    restore = timed(lambda: sh(["restic", "--repo", repo, "restore", "latest", "--target", out]
                               + sparse, work, env))
    return backup, repo, restore


TOOLS = {"backshift": (None, run_backshift), "gnu-tar": ("tar", run_gnu_tar),
         "borg": ("borg", run_borg), "restic": ("restic", run_restic)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=9)
    parser.add_argument("--work", default=None)
    parser.add_argument("--tools", default=",".join(TOOLS))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-sparse-", dir=args.work)
    try:
        os.makedirs(os.path.join(work, "src"))
        source = os.path.join(work, "src", "sparse")
        make_sparse(source, int(args.size_gib * (1 << 30)))
        want = digest(source)
        print("file: %.1f GiB apparent, %.1f MiB allocated"
              % (os.path.getsize(source) / (1 << 30), du(source) / MIB))
        print("%-10s %10s %12s %11s %14s %8s" % ("tool", "backup s", "repo MiB", "restore s",
                                                 "restored MiB", "same"))
        for name in args.tools.split(","):
            binary, run = TOOLS[name]
            if binary and shutil.which(binary) is None:
                print("%-10s not installed" % name)
                continue
            backup, repo, restore = run(work)
            restored = os.path.join(work, "restore-" + name, "src", "sparse")
            print("%-10s %10.2f %12.1f %11.2f %14.1f %8s"
                  % (name, backup, du(repo) / MIB, restore, du(restored) / MIB,
                     digest(restored) == want))
            sys.stdout.flush()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
