#!/usr/bin/env python3
"""Round trips per object with the save directory on sshfs, counted.

Over sshfs every file system call that reaches the server is an SFTP
request: a round trip through sshfs, ssh and sshd, and CPU in each of them.
This mounts a directory of a loopback sshd (bench/peer_tools.py) with
sshfs logging each request it sends, backs up --source into a fresh save
directory there (the first backup, every object new) and then again (the
unchanged re-backup: every object touched), and prints, per backup, the
requests of each type and in all, per object file in the save directory.
Counts, not times: they do not depend on the machine's load.

    python3 bench/bench_sshfs.py [--source /usr/lib/python3] [--work DIR]
"""

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Counter, List

from peer_tools import BACKSHIFT, Sshd, count_files, evict, fresh_dir

REQUEST = re.compile(rb"^\[\d+\] ([A-Z_]+)", re.MULTILINE)


def requests_since(log: str, offset: int) -> "Counter[str]":
    with open(log, "rb") as handle:
        handle.seek(offset)
        return collections.Counter(name.decode() for name in REQUEST.findall(handle.read()))


def backup(savedir: str, source: str) -> None:
    with subprocess.Popen(["find", source, "-print0"], stdout=subprocess.PIPE) as find:
        subprocess.run(BACKSHIFT + ["--save-directory", savedir, "--backup", "--subset", "bench",
                                    "--no-stats"], stdin=find.stdout, check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="/usr/lib/python3")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bench-sshfs-")
    sshd = Sshd(os.path.join(work, "sshd"))
    log = os.path.join(work, "sshfs.log")
    sshfs = None
    try:
        remote = fresh_dir(os.path.join(work, "remote"))
        mountpoint = os.path.join(work, "mount")
        sshfs = sshd.mount_traced(remote, mountpoint, log)
        savedir = os.path.join(mountpoint, "save")
        subprocess.run(BACKSHIFT + ["--save-directory", savedir, "--init-savedir"], check=True)
        rows: List[str] = []
        for label in ("first backup", "unchanged re-backup"):
            evict(args.source)
            offset = os.path.getsize(log)
            backup(savedir, args.source)
            counts = requests_since(log, offset)
            objects = count_files(os.path.join(remote, "save", "objects"))
            total = sum(counts.values())
            rows.append("%-20s %6d objects  %6d requests  %5.1f per object:  %s" % (
                label, objects, total, total / objects,
                "  ".join("%s %.2f" % (name, n / objects) for name, n in counts.most_common())))
        print("\n".join(rows))
    finally:
        sshd.close()
        if sshfs is not None:
            sshfs.wait()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
