#!/usr/bin/env python3
"""backshift beside restic, borg, bup and rsync --link-dest, in one run.

Usage: python3 bench/bench_peers.py [--rows ROW,...] [--source DIR] [--work DIR]
           [--tools NAME,...] [--versions N] [--versions-source DIR]
           [--sshfs-source DIR] [--huge-files N] [--warm] [--keep]

Prints one table per tool (every measure taken of it) and then one line per
*row*: a measure of backshift beside the same measure of a peer, their
ratio and the goal for it.  The rows (all by default; --rows picks some):

  first     first backup of the data set, xz default      / restic     <= 1.5
  zlib      the same with --compression zlib              / restic     <= 1.0
  cold      unchanged re-backup, cold cache               / bup index+save <= 0.5
  warm      unchanged re-backup, warm cache, after sync   / bup        <= 0.5
  flush     unchanged re-backup right after the first one,
            its writes still being flushed                / bup        <= 0.8
  restore   full restore through tar                      / borg lz4 extract <= 0.5
  versions  repository du after N versions of a tree      / borg auto,lzma,6 <= 1.0
  sshfs     first backup of --sshfs-source with the save directory on sshfs
            (sshd on 127.0.0.1)                           / restic sftp backend <= 1.2
            (borg over ssh to the same sshd alongside)
  huge      peak RSS of a re-backup of one directory of --huge-files files
            (backshift's first backup of it alongside)     <= 64 MB

Data set: a copy of /usr/share made under the work directory (default), or
the tree --source names, used in place.  The tools a row needs are run (add
others, e.g. rsync, with --tools), each through the steps the rows need, in
this order: first backup; at once an unchanged re-backup ("flush"); sync,
evict, re-backup ("cold"); sync, re-backup ("warm"); evict the repository,
restore.  Times are wall seconds; CPU seconds (user + system of every
process) are shown beside backshift's.  Before each cold step the files it
reads (the source, or the repository for a restore) are evicted from the
page cache with posix_fadvise (DONTNEED) on each file, so every tool starts
cold on data alike (inodes and directories stay cached); --warm skips every
eviction (a warm-cache run of all rows).

"versions": --versions successive versions of one tree (made from
--versions-source, default /usr/lib/python3.11, by editing 3% of the files,
deleting and adding 0.5%, and renaming one directory per version, with a
fixed random seed) are copied in turn to one path with ``rsync -a --delete``
(not timed) and backed up from there; total time and final repository du.

backshift runs as installed: its modules are compiled to bytecode first
(``compileall``, as pip and Debian's packaging do), since with
PYTHONDONTWRITEBYTECODE set each run would compile them again (about 0.1 s
of CPU per run, which bup, borg and restic, installed, do not pay).

Every tool runs with its default durability (backshift fsyncs, as restic
and borg do).  A tool that is not installed is skipped with a note; nothing
is installed.
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from peer_tools import (MB, REPO, TOOLS, Backshift, Run, SftpRestic,  # noqa: E402
                        SshBorg, SshfsBackshift, Sshd, Tool, count_files, du, evict,
                        fresh_dir, run_pipeline)

# Row: key, what is measured, backshift's tool, the peer tool, the measure
# taken of each, the goal (ratio; for "huge", megabytes).
ROWS: Tuple[Tuple[str, str, str, str, str, float], ...] = (
    ("first", "first backup, xz default", "backshift", "restic", "first_s", 1.5),
    ("zlib", "first backup, --compression zlib", "backshift-zlib", "restic", "first_s", 1.0),
    ("cold", "unchanged re-backup, cold cache", "backshift", "bup", "cold_s", 0.5),
    ("warm", "unchanged re-backup, warm cache, after sync", "backshift", "bup", "warm_s", 0.5),
    ("flush", "unchanged re-backup right after the first", "backshift", "bup", "flush_s", 0.8),
    ("restore", "full restore through tar / borg extract", "backshift", "borg-lz4",
     "restore_s", 0.5),
    ("versions", "versions of a tree, repository du", "backshift", "borg-lzma",
     "versions_du", 1.0),
    ("sshfs", "save directory on sshfs, first backup", "backshift-sshfs", "restic-sftp",
     "first_s", 1.2),
    ("huge", "peak RSS MB, re-backup of one huge directory", "backshift", "", "huge_again_mb",
     64.0),
)
ROW_KEYS = tuple(row[0] for row in ROWS)
# The steps of a tool's run each row needs (the first backup comes with all of them).
STEPS = {"first": {"first"}, "zlib": {"first"}, "cold": {"cold"}, "warm": {"warm"},
         "flush": {"flush"}, "restore": {"restore"}, "versions": {"versions"},
         "sshfs": {"sshfs"}, "huge": {"huge"}}
SIDE_TOOLS = {"sshfs": ("borg-ssh",), "huge": ()}


# -- data sets ----------------------------------------------------------------------

def make_versions(origin: str, where: str, count: int, seed: int = 3) -> List[str]:
    """``count`` successive versions of a copy of ``origin``, each a directory."""
    rng = random.Random(seed)
    os.makedirs(where, exist_ok=True)
    versions = []
    previous = None
    for number in range(count):
        version = os.path.join(where, "v%d" % number)
        shutil.rmtree(version, ignore_errors=True)
        subprocess.run(["cp", "-a", previous or origin, version], check=True)
        if previous is not None:
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


def make_huge_directory(path: str, count: int) -> None:
    """One directory of ``count`` small files; kept for later runs (with --keep)."""
    done = _huge_marker(path, count)
    if os.path.exists(done):
        return
    fresh_dir(path)
    for number in range(count):
        # Sizes 2..1,000 bytes: the smallest inline in their entry, most packed.
        fd = os.open(os.path.join(path, "file%07d" % number), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, (b"%d " % number) * (1 + number % 150))
        os.close(fd)
    open(done, "w").close()


def _huge_marker(path: str, count: int) -> str:
    return os.path.join(os.path.dirname(path), ".complete-%d" % count)


# -- the steps ------------------------------------------------------------------------

class Results:
    """Measures by tool name, in the order tools ran."""

    def __init__(self) -> None:
        self.rows: Dict[str, Dict[str, float]] = {}
        self.notes: List[str] = []

    def put(self, tool: str, key: str, value: float) -> None:
        self.rows.setdefault(tool, {})[key] = value

    def get(self, tool: str, key: str) -> Optional[float]:
        return self.rows.get(tool, {}).get(key)


def _timed(results: Results, tool: Tool, key: str, run: Run) -> None:
    results.put(tool.name, key, run.seconds)
    results.put(tool.name, key[:-2] + "_cpu", run.cpu)
    peak = results.get(tool.name, "peak_mb") or 0.0
    results.put(tool.name, "peak_mb", max(peak, run.peak_kib * 1024 / MB))
    print("  %s %s: %.2f s (%.1f CPU s, %.0f MB)" % (tool.name, key[:-2], run.seconds,
                                                    run.cpu, run.peak_kib * 1024 / MB),
          file=sys.stderr)


def _first_backup(tool: Tool, source: str, cold: bool, results: Results) -> None:
    """An empty repository, the first backup of ``source``, the repository's size."""
    tool.init()
    if cold:
        evict(source)
    _timed(results, tool, "first_s", tool.backup(source))
    results.put(tool.name, "du", du(tool.local_path))
    results.put(tool.name, "files", count_files(tool.local_path))


def bench_tool(tool: Tool, steps: set, source: str, work: str, versions: List[str],
               cold: bool, results: Results) -> None:
    """Run a tool through the steps asked for, in the order the module docstring gives."""
    if steps & {"first", "flush", "cold", "warm", "restore"}:
        _first_backup(tool, source, cold, results)
        if "flush" in steps:
            _timed(results, tool, "flush_s", tool.backup(source))
        if "cold" in steps:
            subprocess.run(["sync"], check=True)
            if cold:
                evict(source)
            _timed(results, tool, "cold_s", tool.backup(source))
        if "warm" in steps:
            subprocess.run(["sync"], check=True)
            _timed(results, tool, "warm_s", tool.backup(source))
        if "restore" in steps:
            restored = fresh_dir(os.path.join(work, "restore-" + tool.name))
            if cold:
                evict(tool.local_path)
            _timed(results, tool, "restore_s", tool.restore(restored, source))
            shutil.rmtree(restored, ignore_errors=True)
    if "versions" in steps and versions:
        project = fresh_dir(os.path.join(work, "project"))
        tool.init()
        total = Run(0.0, 0)
        for version in versions:
            subprocess.run(["rsync", "-a", "--delete", version + "/", project + "/"], check=True)
            if cold:
                evict(project)
            total = total + tool.backup(project)
        _timed(results, tool, "versions_s", total)
        results.put(tool.name, "versions_du", du(tool.local_path))
    tool.init()  # free the disk for the next tool
    shutil.rmtree(tool.local_path, ignore_errors=True)


def bench_sshfs(source: str, work: str, cold: bool, results: Results) -> None:
    """First backup of ``source`` into a repository behind the loopback sshd, per tool."""
    sshd = Sshd(os.path.join(work, "sshd"))
    try:
        remote = fresh_dir(os.path.join(work, "sshfs-remote"))
        mountpoint = os.path.join(work, "sshfs-mount")
        sshd.mount(remote, mountpoint)
        tools: List[Tool] = [SshfsBackshift(os.path.join(mountpoint, "save"), sshd,
                                            os.path.join(remote, "save")),
                             SftpRestic(os.path.join(remote, "restic"), sshd),
                             SshBorg(os.path.join(remote, "borg"), sshd)]
        for tool in tools:
            why = tool.missing()
            if why:
                results.notes.append("%s skipped: %s" % (tool.name, why))
                continue
            try:
                _first_backup(tool, source, cold, results)
            except (RuntimeError, subprocess.CalledProcessError) as exc:
                results.notes.append("%s failed: %s" % (tool.name, exc))
    finally:
        sshd.close()


def bench_huge(path: str, count: int, work: str, results: Results) -> None:
    """Peak RSS of backshift backing up, re-backing up and restoring one huge directory."""
    print("making a directory of %d files ..." % count, file=sys.stderr)
    make_huge_directory(path, count)
    tool = Backshift(os.path.join(work, "repo-huge"))
    tool.name = "backshift-huge"
    tool.init()
    for key, run in (("huge_first", lambda: tool.backup(path)),
                     ("huge_again", lambda: tool.backup(path)),
                     ("huge_restore", lambda: run_pipeline([tool.produce_tar()]))):
        measured = run()
        results.put(tool.name, key + "_s", measured.seconds)
        results.put(tool.name, key + "_mb", measured.peak_kib * 1024 / MB)
        print("  huge %s: %.2f s, %.0f MB" % (key, measured.seconds,
                                               measured.peak_kib * 1024 / MB), file=sys.stderr)
    shutil.rmtree(tool.local_path, ignore_errors=True)


# -- printing -------------------------------------------------------------------------

COLUMNS = (("first_s", "first s", "%.1f", 1), ("first_cpu", "CPU s", "%.1f", 1),
           ("du", "du MB", "%.1f", MB), ("files", "files", "%d", 1),
           ("flush_s", "flush s", "%.2f", 1), ("cold_s", "cold s", "%.2f", 1),
           ("warm_s", "warm s", "%.2f", 1), ("restore_s", "restore s", "%.1f", 1),
           ("peak_mb", "RSS MB", "%.0f", 1), ("versions_s", "versions s", "%.1f", 1),
           ("versions_du", "vers. MB", "%.1f", MB),
           ("huge_first_mb", "huge 1st MB", "%.0f", 1), ("huge_again_mb", "huge again MB", "%.0f", 1),
           ("huge_restore_mb", "huge tar MB", "%.0f", 1))


def print_tools(results: Results) -> None:
    columns = [column for column in COLUMNS
               if any(column[0] in row for row in results.rows.values())]
    print("%-16s" % "tool" + "".join("%14s" % title for _, title, _, _ in columns))
    for name, row in results.rows.items():
        print("%-16s" % name + "".join(
            "%14s" % (fmt % (row[key] / scale) if key in row else "-")
            for key, _title, fmt, scale in columns))
    for note in results.notes:
        print("note:", note)


def _cell(results: Results, tool: str, key: str) -> str:
    value = results.get(tool, key)
    if value is None:
        return "-"
    if key.endswith("_du"):
        return "%.1f MB" % (value / MB)
    if key.endswith("_mb"):
        return "%.0f MB" % value
    cpu = results.get(tool, key[:-2] + "_cpu")
    text = "%.2f s" % value
    return text + (" (%.1f CPU s)" % cpu if cpu is not None and tool.startswith("backshift")
                   else "")


def print_rows(results: Results, rows: Sequence[str]) -> None:
    """The issue's table: backshift, peer, ratio, goal for each row run."""
    print()
    print("| measure | backshift | peer | ratio | goal | |")
    print("|---|---|---|---|---|---|")
    for key, text, mine, peer, measure, goal in ROWS:
        if key not in rows:
            continue
        value = results.get(mine, measure) if key != "huge" else \
            results.get("backshift-huge", measure)
        if key == "huge":
            first = results.get("backshift-huge", "huge_first_mb")
            tar = results.get("backshift-huge", "huge_restore_mb")
            peer_text = "first backup %s, restore %s" % (
                "%.0f MB" % first if first else "-", "%.0f MB" % tar if tar else "-")
            ratio = None
            met = value is not None and value <= goal
            mine_text = "%.0f MB" % value if value is not None else "-"
            goal_text = "<= %.0f MB" % goal
        else:
            other = results.get(peer, measure)
            peer_text = "%s %s" % (peer, _cell(results, peer, measure))
            if key == "sshfs":
                peer_text += "; borg-ssh %s" % _cell(results, "borg-ssh", measure)
            ratio = value / other if value is not None and other else None
            met = ratio is not None and ratio <= goal
            mine_text = _cell(results, mine, measure)
            goal_text = "<= %.1f" % goal
        print("| %s | %s | %s | %s | %s | %s |" % (
            text, mine_text, peer_text, "%.2f" % ratio if ratio is not None else "-",
            goal_text, "met" if met else "NOT met"))


# -- main ------------------------------------------------------------------------------

def plan(rows: Sequence[str], extra_tools: Sequence[str]) -> Dict[str, set]:
    """The local tools to run and the steps each needs, in a fixed order."""
    steps: Dict[str, set] = {}
    for key, _text, mine, peer, _measure, _goal in ROWS:
        if key not in rows or key in ("sshfs", "huge"):
            continue
        for name in (mine, peer):
            steps.setdefault(name, set()).update(STEPS[key])
    for name in extra_tools:
        steps.setdefault(name, set()).update({"first", "flush", "cold", "warm", "restore",
                                              "versions"})
    order = list(TOOLS)
    return {name: steps[name] for name in sorted(steps, key=order.index)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROW_KEYS),
                        help="rows to measure (default all: %s)" % ",".join(ROW_KEYS))
    parser.add_argument("--source", help="back up this tree (default: a copy of /usr/share)")
    parser.add_argument("--work", default="/var/tmp/backshift-bench-peers",
                        help="scratch directory (removed at the end unless --keep)")
    parser.add_argument("--tools", default="",
                        help="more tools to run through every step (e.g. rsync)")
    parser.add_argument("--versions", type=int, default=6, help="versions (0: skip)")
    parser.add_argument("--versions-source", default="/usr/lib/python3.11")
    parser.add_argument("--sshfs-source", default="/usr/lib/python3")
    parser.add_argument("--huge-files", type=int, default=300_000)
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch directory (the data sets are reused)")
    parser.add_argument("--warm", action="store_true",
                        help="do not evict the data read from the page cache before each step")
    args = parser.parse_args(argv)
    rows = [row for row in args.rows.split(",") if row]
    for row in rows:
        if row not in ROW_KEYS:
            parser.error("unknown row %r (choose from %s)" % (row, ", ".join(ROW_KEYS)))
    extra = [name for name in args.tools.split(",") if name]
    for name in extra:
        if name not in TOOLS:
            parser.error("unknown tool %r (choose from %s)" % (name, ", ".join(TOOLS)))

    subprocess.run([sys.executable, "-m", "compileall", "-q",
                    os.path.join(REPO, "backshift")], check=True, stdout=subprocess.DEVNULL)
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    tools = plan(rows, extra)
    results = Results()
    source = os.path.abspath(args.source) if args.source else os.path.join(work, "share")
    if any(steps - {"versions"} for steps in tools.values()):
        if not args.source and not os.path.isdir(source):
            print("copying /usr/share to %s ..." % source, file=sys.stderr)
            subprocess.run(["cp", "-a", "/usr/share", source], check=True)
        print("data: %s, %.1f MB apparent, %d entries"
              % (source, du(source, apparent=True) / MB,
                 sum(1 + len(files) for _, _, files in os.walk(source))))
    versions: List[str] = []
    if any("versions" in steps for steps in tools.values()) and args.versions > 0:
        print("making %d versions of %s ..." % (args.versions, args.versions_source),
              file=sys.stderr)
        versions = make_versions(args.versions_source, os.path.join(work, "versions"),
                                 args.versions)
        print("versions: %d of %s (%.1f MB each)" % (len(versions), args.versions_source,
                                                   du(versions[-1], apparent=True) / MB))
    print("cpus: %d; python: %s; cache: %s" % (os.cpu_count() or 0, sys.version.split()[0],
                                              "warm" if args.warm else "cold"))
    for name, steps in tools.items():
        tool = TOOLS[name](os.path.join(work, "repo-" + name))
        why = tool.missing()
        if why:
            results.notes.append("%s skipped: %s" % (name, why))
            continue
        print("running %s (%s) ..." % (name, ", ".join(sorted(steps))), file=sys.stderr)
        try:
            bench_tool(tool, steps, source, work, versions, not args.warm, results)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            results.notes.append("%s failed: %s" % (name, exc))
    if "sshfs" in rows:
        print("running the sshfs row on %s ..." % args.sshfs_source, file=sys.stderr)
        bench_sshfs(os.path.abspath(args.sshfs_source), work, not args.warm, results)
    if "huge" in rows:
        print("running the huge-directory row ...", file=sys.stderr)
        bench_huge(os.path.join(work, "huge", "dir"), args.huge_files, work, results)
    print_tools(results)
    print_rows(results, rows)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
