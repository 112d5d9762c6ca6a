#!/usr/bin/env python3
"""Incremental, resume and memory benchmarks (issue 4); prints numbers.

    python3 bench/bench_incremental.py rss [--files 300000] [--work DIR]
        peak RSS of a --no-stats backup of N small files in find order, and
        of the same with --progress-report full (each into a fresh save
        directory).
    python3 bench/bench_incremental.py resume [--source DIR] [--work DIR]
        full backup time; then, in a fresh save directory, a backup killed
        with SIGKILL at half that time and the re-run's time (ratio).
    python3 bench/bench_incremental.py unchanged [--source DIR] [--work DIR]
        first backup time vs an unchanged re-backup (ratio).
    python3 bench/bench_incremental.py entry-cost [--source DIR] [--work DIR]
            [--repeat N] [--profile]
        CPU microseconds per unchanged entry beyond its lstat: a first
        backup (a separate process), then --repeat unchanged re-backups run
        in this process, each timed in CPU seconds of the process (all its
        threads), beside a loop that only lstats the same paths.  The fixed
        cost of starting Python and importing backshift is left out; that
        of opening the save directory is in.  --profile runs one more
        re-backup under cProfile and prints its top costs.

--source defaults to /usr/share (only read).  Times are wall seconds of the
real bin/backshift process, and its CPU seconds (user + system, all
threads), which a machine busy with other work disturbs less; RSS is its
ru_maxrss.
"""

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKSHIFT = [sys.executable, os.path.join(REPO, "bin", "backshift")]
LAST_CPU = [0.0]  # CPU seconds of the last backup process


def find_list(source: str, work: str) -> str:
    """Write find -print0 output for ``source`` to a file; its path."""
    path = os.path.join(work, "paths-%d" % abs(hash(source)))
    with open(path, "wb") as handle:
        subprocess.run(["find", source, "-xdev", "-print0"], stdout=handle, check=True)
    return path


def init(savedir: str) -> None:
    shutil.rmtree(savedir, ignore_errors=True)
    subprocess.run(BACKSHIFT + ["--save-directory", savedir, "--init-savedir"], check=True)


def backup(savedir: str, paths: str, extra: List[str] = (),
           kill_after: Optional[float] = None) -> Tuple[float, int, int]:
    """(wall seconds, peak RSS KiB, exit status) of one backup process.

    Its CPU seconds are left in LAST_CPU[0].
    """
    with open(paths, "rb") as stdin:
        started = time.monotonic()
        proc = subprocess.Popen(BACKSHIFT + ["--save-directory", savedir, "--backup",
                                             "--subset", "bench"] + list(extra),
                                stdin=stdin, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if kill_after is not None:
            time.sleep(kill_after)
            proc.send_signal(signal.SIGKILL)
        _pid, status, usage = os.wait4(proc.pid, 0)
        LAST_CPU[0] = usage.ru_utime + usage.ru_stime
        proc.returncode = status
        elapsed = time.monotonic() - started
    return elapsed, usage.ru_maxrss, os.waitstatus_to_exitcode(status)


def newest_record(savedir: str) -> dict:
    directory = os.path.join(savedir, "backups")
    newest = sorted(name for name in os.listdir(directory) if not name.startswith("."))[-1]
    with open(os.path.join(directory, newest), "rb") as handle:
        return json.load(handle)


def make_small_files(top: str, count: int) -> None:
    """``count`` files of 20-600 bytes, 1000 per directory (skipped if present)."""
    marker = os.path.join(top, ".complete-%d" % count)
    if os.path.exists(marker):
        return
    shutil.rmtree(top, ignore_errors=True)
    for n in range(count):
        if n % 1000 == 0:
            directory = os.path.join(top, "d%03d" % (n // 100_000), "e%03d" % (n // 1000))
            os.makedirs(directory)
        with open(os.path.join(directory, "file-%06d" % n), "wb") as handle:
            handle.write(b"%d " % n * (5 + n % 100))
    open(marker, "wb").close()


def bench_rss(args: argparse.Namespace) -> None:
    top = os.path.join(args.work, "small-files")
    make_small_files(top, args.files)
    paths = find_list(top, args.work)
    savedir = os.path.join(args.work, "savedir-rss")
    for label, extra in (("--no-stats", ["--no-stats"]),
                         ("--progress-report full", ["--progress-report", "full"])):
        init(savedir)
        elapsed, rss, code = backup(savedir, paths, ["--no-fsync"] + extra)
        print("rss: %d files, %s: peak RSS %.1f MB, %.1f s, exit %d"
              % (args.files, label, rss / 1024, elapsed, code))
    shutil.rmtree(savedir, ignore_errors=True)


def bench_resume(args: argparse.Namespace) -> None:
    paths = find_list(args.source, args.work)
    savedir = os.path.join(args.work, "savedir-resume")
    init(savedir)
    full, _rss, code = backup(savedir, paths, args.extra)
    full_cpu = LAST_CPU[0]
    print("resume: full backup %.1f s, %.1f CPU s (exit %d)" % (full, full_cpu, code))
    init(savedir)
    interval = max(1.0, full / 20)  # the default 60 s, scaled to this backup's length
    killed, _rss, _code = backup(savedir, paths,
                                 args.extra + ["--checkpoint-interval", str(interval)],
                                 kill_after=full / 2)
    record = newest_record(savedir)
    print("resume: killed with SIGKILL after %.1f s (checkpoint interval %.1f s, %d checkpoints,"
          " %d files, %d bytes saved)" % (killed, interval, record["checkpoints"],
                                          record["files"], record["bytes"]))
    again, _rss, code = backup(savedir, paths, args.extra)
    record = newest_record(savedir)
    print("resume: re-run %.1f s, %.1f CPU s (exit %d, %s, %d files reused, %d bytes read): "
          "%.2fx the full backup (%.2fx by CPU)"
          % (again, LAST_CPU[0], code, record["state"], record["files_reused"],
             record["bytes_read"], again / full, LAST_CPU[0] / full_cpu))
    shutil.rmtree(savedir, ignore_errors=True)


def bench_unchanged(args: argparse.Namespace) -> None:
    paths = find_list(args.source, args.work)
    savedir = os.path.join(args.work, "savedir-unchanged")
    init(savedir)
    first, rss, code = backup(savedir, paths, args.extra)
    first_cpu = LAST_CPU[0]
    print("unchanged: first backup %.1f s, %.1f CPU s, peak RSS %.1f MB (exit %d)"
          % (first, first_cpu, rss / 1024, code))
    time.sleep(2.5)  # let the timestamp guard pass for files changed just before
    again, rss, code = backup(savedir, paths, args.extra)
    record = newest_record(savedir)
    print("unchanged: re-backup %.1f s, %.1f CPU s, peak RSS %.1f MB (exit %d, %d of %d entries "
          "reused, %d bytes read, %d bytes reused): %.3fx the first (%.3fx by CPU)"
          % (again, LAST_CPU[0], rss / 1024, code, record["files_reused"], record["files"],
             record["bytes_read"], record["bytes_reused"], again / first,
             LAST_CPU[0] / first_cpu))
    shutil.rmtree(savedir, ignore_errors=True)


def _rebackup(savedir: str, paths: str) -> float:
    """CPU seconds of one unchanged re-backup run in this process."""
    from backshift.cli import main as backshift_main  # noqa: E402 (after sys.path)
    with open(paths, "rb") as stdin:
        started = time.process_time()
        code = backshift_main(["--save-directory", savedir, "--backup", "--subset", "bench",
                               "--no-stats", "--no-fsync"], stdin=stdin,
                              stdout=io.BytesIO(), stderr=sys.stderr)
        spent = time.process_time() - started
    if code != 0:
        raise SystemExit("re-backup exited %d" % code)
    return spent


def _lstat_all(names: List[bytes]) -> float:
    """CPU seconds of lstat on every path, in as tight a loop as Python has."""
    lstat = os.lstat
    started = time.process_time()
    for path in names:
        try:
            lstat(path)
        except OSError:
            pass
    return time.process_time() - started


def bench_entry_cost(args: argparse.Namespace) -> None:
    sys.path.insert(0, REPO)
    paths = find_list(args.source, args.work)
    with open(paths, "rb") as handle:
        names = [name for name in handle.read().split(b"\0") if name]
    savedir = os.path.join(args.work, "savedir-entry-cost")
    init(savedir)
    first, _rss, code = backup(savedir, paths, args.extra + ["--compression", args.compression])
    print("entry-cost: %d paths; first backup %.1f s, %.1f CPU s (exit %d)"
          % (len(names), first, LAST_CPU[0], code))
    time.sleep(2.5)  # past the timestamp guard for files changed just before
    _rebackup(savedir, paths)  # warms the caches and the imports alike for every run
    per_entry = []
    for _ in range(args.repeat):
        spent = _rebackup(savedir, paths)
        lstat = _lstat_all(names)
        extra = (spent - lstat) / len(names) * 1e6
        per_entry.append(extra)
        # Also in lstats: a machine slowed by other work slows both alike.
        print("entry-cost: re-backup %.3f CPU s, lstat alone %.3f CPU s: %.1f us per entry "
              "beyond its lstat (lstat %.1f us; %.1f lstats)"
              % (spent, lstat, extra, lstat / len(names) * 1e6, spent / lstat - 1))
    record = newest_record(savedir)
    print("entry-cost: %d of %d entries reused; best %.1f us, median %.1f us per entry "
          "beyond lstat" % (record["files_reused"], record["files"], min(per_entry),
                           sorted(per_entry)[len(per_entry) // 2]))
    if args.profile:
        profile = cProfile.Profile()
        profile.enable()
        _rebackup(savedir, paths)
        profile.disable()
        stats = pstats.Stats(profile)
        stats.sort_stats("tottime").print_stats(25)
    shutil.rmtree(savedir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("rss", "resume", "unchanged", "entry-cost"))
    parser.add_argument("--files", type=int, default=300_000)
    parser.add_argument("--source", default="/usr/share")
    parser.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    parser.add_argument("--repeat", type=int, default=5, help="entry-cost: re-backups timed")
    parser.add_argument("--profile", action="store_true", help="entry-cost: profile one more")
    parser.add_argument("--compression", default="xz", help="entry-cost: of the first backup")
    parser.add_argument("--fsync", action="store_true", help="durable writes (default --no-fsync)")
    args = parser.parse_args()
    args.extra = [] if args.fsync else ["--no-fsync"]
    if args.work is None:
        args.work = tempfile.mkdtemp(prefix="bench-incremental-")
    os.makedirs(args.work, exist_ok=True)
    {"rss": bench_rss, "resume": bench_resume, "unchanged": bench_unchanged,
     "entry-cost": bench_entry_cost}[args.what](args)


if __name__ == "__main__":
    main()
