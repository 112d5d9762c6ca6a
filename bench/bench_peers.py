#!/usr/bin/env python3
"""backshift beside restic, borg, bup and rsync --link-dest, in one run.

Usage: python3 bench/bench_peers.py [--source DIR] [--work DIR]
           [--tools NAME,...] [--versions N] [--versions-source DIR] [--keep]

Data set: a copy of /usr/share made under the work directory (default), or
the tree --source names, used in place.  For each tool it measures, on the
same data in the same run:

  first backup (wall seconds), repository size (allocated bytes as
  ``du -s``, apparent bytes, files), an unchanged re-backup (for bup:
  ``bup index`` + ``bup save``), a full restore into an empty directory
  (backshift: ``--produce-tar | tar x``; borg extract; restic restore;
  bup restore; ``cp -a`` of the newest rsync snapshot), and the peak RSS of
  any process of those runs.

The "versions" scenario: --versions successive versions of one tree (made
from --versions-source, default /usr/lib/python3.11, by editing 3% of the
files, deleting and adding 0.5%, and renaming one directory per version,
with a fixed random seed) are copied in turn to one path with
``rsync -a --delete`` (not timed) and backed up from there; it reports the
total backup time and the final repository size.

Tools: backshift (defaults), backshift-zlib (--compression zlib), restic,
borg-lz4, borg-lzma (--compression auto,lzma,6), bup, rsync.  A tool that
is not installed is skipped with a note; nothing is installed.  Every tool
runs with its default durability (backshift fsyncs, as restic and borg do).
Before each timed step the files it reads (the source, or the repository
for a restore) are evicted from the page cache with posix_fadvise
(DONTNEED) on each file, so every tool starts cold on data alike (inodes
and directories stay cached); --warm skips that.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BACKSHIFT = [sys.executable, os.path.join(REPO, "bin", "backshift")]
ALL_TOOLS = ("backshift", "backshift-zlib", "restic", "borg-lz4", "borg-lzma", "bup", "rsync")
MB = 1e6


class Run:
    """Wall time and peak RSS of a pipeline of processes."""

    def __init__(self, seconds: float, peak_kib: int) -> None:
        self.seconds = seconds
        self.peak_kib = peak_kib


def run_pipeline(commands: Sequence[Sequence[str]], cwd: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, ok: Sequence[int] = (0,)) -> Run:
    """Run commands as a shell pipeline would; wall time and the largest max RSS."""
    started = time.perf_counter()
    procs: List[subprocess.Popen] = []
    previous = None
    for index, command in enumerate(commands):
        last = index == len(commands) - 1
        errors = tempfile.TemporaryFile()
        proc = subprocess.Popen(list(command), cwd=cwd, env=env, stdin=previous,
                                stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                                stderr=errors)
        proc.errors = errors  # type: ignore[attr-defined]
        if previous is not None:
            previous.close()
        previous = proc.stdout
        procs.append(proc)
    peak = 0
    failures = []
    for proc, command in zip(procs, commands):
        # wait4 gives each process's own rusage (with its waited-for children).
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.errors.seek(0)  # type: ignore[attr-defined]
        err = proc.errors.read()  # type: ignore[attr-defined]
        proc.errors.close()  # type: ignore[attr-defined]
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = max(peak, usage.ru_maxrss)
        if proc.returncode not in ok:
            failures.append("%s: exit %d: %s" % (" ".join(command[:3]), proc.returncode,
                                                 err.decode(errors="replace")[-500:]))
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError("; ".join(failures))
    return Run(seconds, peak)


def du(path: str, apparent: bool = False) -> int:
    args = ["du", "-s", "--block-size=1"] + (["--apparent-size"] if apparent else []) + [path]
    return int(subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout.split()[0])


def count_files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def evict(top: str) -> None:
    """Drop the cached pages of every file under top (only those files)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for directory, _dirs, files in os.walk(top):
        for name in files:
            try:
                fd = os.open(os.path.join(directory, name),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


# -- the tools -----------------------------------------------------------------

class Tool:
    """One backup program: init, backup of a path, restore of the latest backup."""

    name = ""
    needs: Tuple[str, ...] = ()
    ok: Tuple[int, ...] = (0,)

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.env = dict(os.environ)
        self.count = 0

    def missing(self) -> Optional[str]:
        for program in self.needs:
            if shutil.which(program) is None:
                return "%s not installed" % program
        return None

    def init(self) -> None:
        shutil.rmtree(self.repo, ignore_errors=True)

    def backup(self, source: str) -> Run:
        self.count += 1
        return run_pipeline(self.backup_commands(source), env=self.env, ok=self.ok)

    def backup_commands(self, source: str) -> List[List[str]]:
        raise NotImplementedError

    def restore(self, target: str, source: str) -> Run:
        raise NotImplementedError

    def _sh(self, *commands: Sequence[str]) -> None:
        for command in commands:
            subprocess.run(list(command), check=True, env=self.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)


class Backshift(Tool):
    name = "backshift"
    needs = ("find", "tar")
    ok = (0, 1)  # 1: some file could not be read (reported, as tar does)
    options: Tuple[str, ...] = ()

    def init(self) -> None:
        super().init()
        self._sh(BACKSHIFT + ["--save-directory", self.repo, "--init-savedir"])

    def backup_commands(self, source: str) -> List[List[str]]:
        return [["find", source, "-print0"],
                BACKSHIFT + ["--save-directory", self.repo, "--backup", "--subset", "bench",
                             "--no-stats"] + list(self.options)]

    def restore(self, target: str, source: str) -> Run:
        out = subprocess.run(BACKSHIFT + ["--save-directory", self.repo, "--list-backups"],
                             check=True, stdout=subprocess.PIPE).stdout.decode()
        backup_id = out.strip().splitlines()[-1].split()[0]
        return run_pipeline([BACKSHIFT + ["--save-directory", self.repo, "--produce-tar",
                                          "--backup-id", backup_id],
                             ["tar", "-C", target, "-xf", "-"]])


class BackshiftZlib(Backshift):
    name = "backshift-zlib"
    options = ("--compression", "zlib")


class Restic(Tool):
    name = "restic"
    needs = ("restic",)

    def __init__(self, repo: str) -> None:
        super().__init__(repo)
        self.env.update(RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo,
                        RESTIC_CACHE_DIR=repo + "-cache")

    def init(self) -> None:
        super().init()
        shutil.rmtree(self.repo + "-cache", ignore_errors=True)
        self._sh(["restic", "init"])

    def backup_commands(self, source: str) -> List[List[str]]:
        return [["restic", "backup", "--quiet", source]]

    def restore(self, target: str, source: str) -> Run:
        return run_pipeline([["restic", "restore", "latest", "--target", target]], env=self.env)


class Borg(Tool):
    name = "borg-lz4"
    needs = ("borg",)
    compression = "lz4"

    def __init__(self, repo: str) -> None:
        super().__init__(repo)
        self.env.update(BORG_PASSPHRASE="", BORG_BASE_DIR=repo + "-base",
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")

    def init(self) -> None:
        super().init()
        shutil.rmtree(self.repo + "-base", ignore_errors=True)
        self._sh(["borg", "init", "--encryption", "none", self.repo])

    def backup_commands(self, source: str) -> List[List[str]]:
        return [["borg", "create", "--compression", self.compression,
                 "%s::b%d" % (self.repo, self.count), source]]

    def restore(self, target: str, source: str) -> Run:
        return run_pipeline([["borg", "extract", "%s::b%d" % (self.repo, self.count)]],
                            cwd=target, env=self.env)


class BorgLzma(Borg):
    name = "borg-lzma"
    compression = "auto,lzma,6"


class Bup(Tool):
    name = "bup"
    needs = ("bup",)

    def __init__(self, repo: str) -> None:
        super().__init__(repo)
        self.env.update(BUP_DIR=repo)

    def init(self) -> None:
        super().init()
        self._sh(["bup", "init"])

    def backup(self, source: str) -> Run:
        self.count += 1
        index = run_pipeline([["bup", "index", source]], env=self.env)
        save = run_pipeline([["bup", "save", "-n", "bench", source]], env=self.env)
        return Run(index.seconds + save.seconds, max(index.peak_kib, save.peak_kib))

    def restore(self, target: str, source: str) -> Run:
        path = "/bench/latest" + os.path.abspath(source) + "/."
        return run_pipeline([["bup", "restore", "-q", "-C", target, path]], env=self.env)


class Rsync(Tool):
    name = "rsync"
    needs = ("rsync", "cp")

    def init(self) -> None:
        super().init()
        os.makedirs(self.repo)

    def backup_commands(self, source: str) -> List[List[str]]:
        snapshot = os.path.join(self.repo, "snap%d" % self.count)
        link = ["--link-dest=" + os.path.join(self.repo, "snap%d" % (self.count - 1))] \
            if self.count > 1 else []
        return [["rsync", "-aH"] + link + [source.rstrip("/") + "/", snapshot + "/"]]

    def restore(self, target: str, source: str) -> Run:
        return run_pipeline([["cp", "-a", os.path.join(self.repo, "snap%d" % self.count),
                              os.path.join(target, "data")]])


TOOLS = {cls.name: cls for cls in (Backshift, BackshiftZlib, Restic, Borg, BorgLzma, Bup, Rsync)}


# -- the versions data set ---------------------------------------------------------

def make_versions(origin: str, where: str, count: int, seed: int = 3) -> List[str]:
    """``count`` successive versions of a copy of ``origin``, each a directory."""
    rng = random.Random(seed)
    os.makedirs(where, exist_ok=True)
    versions = []
    previous = None
    for number in range(count):
        version = os.path.join(where, "v%d" % number)
        shutil.rmtree(version, ignore_errors=True)
        if previous is None:
            subprocess.run(["cp", "-a", origin, version], check=True)
        else:
            subprocess.run(["cp", "-a", previous, version], check=True)
            _mutate(version, rng, number)
        versions.append(version)
        previous = version
    return versions


def _mutate(top: str, rng: random.Random, number: int) -> None:
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(top) for f in names
                   if os.path.isfile(os.path.join(d, f))
                   and not os.path.islink(os.path.join(d, f)))
    for path in rng.sample(files, max(1, len(files) * 3 // 100)):
        with open(path, "rb") as handle:
            data = handle.read()
        at = rng.randrange(len(data) + 1)
        cut = min(len(data), at + rng.randrange(200))
        insert = b"# version %d: changed line %d\n" % (number, rng.randrange(10 ** 6))
        with open(path, "wb") as handle:
            handle.write(data[:at] + insert * rng.randrange(1, 20) + data[cut:])
    removed = rng.sample(files, max(1, len(files) // 200))
    for path in removed:
        os.unlink(path)
    remaining = sorted(set(files) - set(removed))
    for index, path in enumerate(rng.sample(remaining, max(1, len(files) // 200))):
        with open(path, "rb") as handle:
            data = handle.read()
        with open("%s.new%d_%d" % (path, number, index), "wb") as handle:
            handle.write(b"# added in version %d\n" % number + data)
    directories = sorted(d for d, _, _ in os.walk(top) if d != top)
    if directories:
        chosen = rng.choice(directories)
        if os.path.isdir(chosen):
            os.rename(chosen, chosen + "_v%d" % number)


# -- main ------------------------------------------------------------------------

def bench_tool(tool: Tool, source: str, scratch: str, versions: List[str],
               project: str, cold: bool = True) -> Dict[str, float]:
    row: Dict[str, float] = {}
    tool.init()
    if cold:
        evict(source)
    first = tool.backup(source)
    row["first_s"] = first.seconds
    row["du"] = du(tool.repo)
    row["apparent"] = du(tool.repo, apparent=True)
    row["files"] = count_files(tool.repo)
    again = tool.backup(source)
    row["again_s"] = again.seconds
    restored = fresh_dir(os.path.join(scratch, "restore-" + tool.name))
    if cold:
        evict(tool.repo)
    back = tool.restore(restored, source)
    row["restore_s"] = back.seconds
    shutil.rmtree(restored, ignore_errors=True)
    peak = max(first.peak_kib, again.peak_kib, back.peak_kib)
    if versions:
        tool.init()
        tool.count = 0
        total = 0.0
        for version in versions:
            subprocess.run(["rsync", "-a", "--delete", version + "/", project + "/"], check=True)
            if cold:
                evict(project)
            run = tool.backup(project)
            total += run.seconds
            peak = max(peak, run.peak_kib)
        row["versions_s"] = total
        row["versions_du"] = du(tool.repo)
    row["peak_mb"] = peak * 1024 / MB
    tool.init()  # free the disk for the next tool
    shutil.rmtree(tool.repo, ignore_errors=True)
    return row


def print_table(rows: Dict[str, Dict[str, float]], notes: List[str]) -> None:
    columns = [("first_s", "first s", "%.1f"), ("du", "du MB", "%.1f"),
               ("apparent", "apparent MB", "%.1f"), ("files", "files", "%d"),
               ("again_s", "again s", "%.1f"), ("restore_s", "restore s", "%.1f"),
               ("peak_mb", "peak RSS MB", "%.0f"), ("versions_s", "versions s", "%.1f"),
               ("versions_du", "versions du MB", "%.1f")]
    scale = {"du": MB, "apparent": MB, "versions_du": MB}
    print("%-15s" % "tool" + "".join("%15s" % title for _, title, _ in columns))
    for name, row in rows.items():
        cells = []
        for key, _title, fmt in columns:
            cells.append("%15s" % (fmt % (row[key] / scale.get(key, 1)) if key in row else "-"))
        print("%-15s" % name + "".join(cells))
    for note in notes:
        print("note:", note)


def print_ratios(rows: Dict[str, Dict[str, float]]) -> None:
    me = rows.get("backshift")
    if not me:
        return
    targets = [("first backup time / restic's", "first_s", "restic", 1.0),
               ("repository du / restic's", "du", "restic", 1.0),
               ("unchanged re-backup / bup index+save", "again_s", "bup", 0.8),
               ("full restore / borg extract (lz4)", "restore_s", "borg-lz4", 1.0),
               ("versions repository du / borg auto,lzma,6", "versions_du", "borg-lzma", 1.0),
               ("versions total time / borg lz4", "versions_s", "borg-lz4", 1.0)]
    print()
    print("targets (backshift with default settings):")
    for text, key, peer, limit in targets:
        other = rows.get(peer, {})
        if key in me and other.get(key):
            ratio = me[key] / other[key]
            print("  %-44s %6.2f  (target <= %.1f: %s)" % (text, ratio, limit,
                                                           "met" if ratio <= limit else "NOT met"))
        else:
            print("  %-44s      -  (%s not measured)" % (text, peer))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", help="back up this tree (default: a copy of /usr/share)")
    parser.add_argument("--work", default="/tmp/backshift-bench-peers",
                        help="scratch directory (removed at the end unless --keep)")
    parser.add_argument("--tools", default=",".join(ALL_TOOLS))
    parser.add_argument("--versions", type=int, default=6, help="versions (0: skip)")
    parser.add_argument("--versions-source", default="/usr/lib/python3.11")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--warm", action="store_true",
                        help="do not evict the data read from the page cache before each step")
    args = parser.parse_args(argv)

    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    if args.source:
        source = os.path.abspath(args.source)
    else:
        source = os.path.join(work, "share")
        if not os.path.isdir(source):
            print("copying /usr/share to %s ..." % source, file=sys.stderr)
            subprocess.run(["cp", "-a", "/usr/share", source], check=True)
    versions: List[str] = []
    if args.versions > 0:
        print("making %d versions of %s ..." % (args.versions, args.versions_source),
              file=sys.stderr)
        versions = make_versions(args.versions_source, os.path.join(work, "versions"),
                                 args.versions)
    project = os.path.join(work, "project")
    print("data: %s, %.1f MB apparent, %d entries; versions: %d of %s (%.1f MB each)"
          % (source, du(source, apparent=True) / MB,
             int(subprocess.run("find '%s' | wc -l" % source, shell=True, check=True,
                                stdout=subprocess.PIPE).stdout),
             len(versions), args.versions_source,
             du(versions[-1], apparent=True) / MB if versions else 0))
    print("cpus: %d; python: %s" % (os.cpu_count() or 0, sys.version.split()[0]))
    rows: Dict[str, Dict[str, float]] = {}
    notes: List[str] = []
    for name in args.tools.split(","):
        if name not in TOOLS:
            parser.error("unknown tool %r (choose from %s)" % (name, ", ".join(ALL_TOOLS)))
        tool = TOOLS[name](os.path.join(work, "repo-" + name))
        why = tool.missing()
        if why:
            notes.append("%s skipped: %s" % (name, why))
            continue
        print("running %s ..." % name, file=sys.stderr)
        fresh_dir(project)
        try:
            rows[name] = bench_tool(tool, source, work, versions, project, not args.warm)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            notes.append("%s failed: %s" % (name, exc))
        print("  %s: %s" % (name, rows.get(name)), file=sys.stderr)
    print_table(rows, notes)
    print_ratios(rows)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
