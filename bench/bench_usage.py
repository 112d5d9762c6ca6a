#!/usr/bin/env python3
"""Where a save directory's disk space goes: its files by kind, apparent and allocated.

    python3 bench/bench_usage.py SAVEDIR

Objects are told apart by what refers to them (FORMAT.md, "Objects"): the
complete and unfinished backups' trees are walked, and each object is a
data chunk, a pack, a directory record's chunk or a top record (or
unreferenced).  Beside them: backup records, the format file and the
directories themselves.  For each kind: how many files, their apparent
size, what they take on disk (``st_blocks``: the unit of ``du``), the share
of that lost to partly filled blocks, and the content they hold
uncompressed.  Prints numbers only; it asserts nothing.
"""

import argparse
import os
import sys
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from backshift.objectstore import ObjectError  # noqa: E402
from backshift.records import FLAG_INLINE, FLAG_PACKED, KIND_DIR, KIND_FILE, KIND_HARDLINK  # noqa: E402
from backshift.savedir import SaveDir  # noqa: E402
from backshift.tree import TreeReader  # noqa: E402

KINDS = ("data chunk", "pack", "directory record", "top record", "unreferenced")


def object_kinds(savedir: SaveDir) -> Dict[bytes, str]:
    """Each referenced object's kind, by digest."""
    kinds: Dict[bytes, str] = {}
    reader = TreeReader(savedir.objects)
    for record in savedir.catalog.records():
        for digest, _length in record.root or []:
            kinds.setdefault(digest, "top record")
        for _path, entry in reader.walk(record.root or [], include_implicit=True,
                                        on_damage=lambda path, reason: None):
            if entry.flags & FLAG_INLINE:
                continue
            if entry.kind == KIND_DIR:
                kind = "directory record"
            elif entry.kind in (KIND_FILE, KIND_HARDLINK):
                kind = "pack" if entry.flags & FLAG_PACKED else "data chunk"
            else:
                continue
            for digest, _length in entry.chunks:
                kinds.setdefault(digest, kind)
    return kinds


def usage(path: str) -> Dict[str, List[int]]:
    """kind -> [files, apparent bytes, allocated bytes, uncompressed bytes]."""
    savedir = SaveDir(path, "bench")
    kinds = object_kinds(savedir)
    table: Dict[str, List[int]] = {}

    def count(kind: str, st: os.stat_result, content: int = 0) -> None:
        row = table.setdefault(kind, [0, 0, 0, 0])
        row[0] += 1
        row[1] += st.st_size
        row[2] += st.st_blocks * 512
        row[3] += content

    for _prefix, directory, names in savedir.objects.directories():
        for name in names:
            st = os.lstat(os.path.join(directory, name))
            try:
                digest = bytes.fromhex(name)
            except ValueError:
                count("other", st)
                continue
            kind = kinds.get(digest, "unreferenced")
            try:
                content = savedir.objects.read_raw(digest)[1]
            except ObjectError:
                content = 0
            count(kind, st, content)
    for directory, _subdirs, names in os.walk(path):
        count("directories", os.lstat(directory))
        if os.path.basename(directory) == "backups":
            for name in names:
                count("backup records", os.lstat(os.path.join(directory, name)))
        elif directory == path:
            for name in names:
                count("other", os.lstat(os.path.join(directory, name)))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("savedir")
    args = parser.parse_args()
    table = usage(args.savedir)
    print("| kind | files | apparent | allocated | lost to blocks | content |")
    print("|---|---|---|---|---|---|")
    total = [0, 0, 0, 0]
    order = KINDS + ("backup records", "directories", "other")
    for kind in sorted(table, key=lambda k: (-table[k][2], order.index(k) if k in order else 99)):
        row = table[kind]
        total = [a + b for a, b in zip(total, row)]
        print("| %s | %d | %d | %d | %.0f%% | %d |"
              % (kind, row[0], row[1], row[2], 100.0 * (row[2] - row[1]) / max(1, row[2]),
                 row[3]))
    print("| total | %d | %d | %d | %.0f%% | %d |"
          % (total[0], total[1], total[2], 100.0 * (total[2] - total[1]) / max(1, total[2]),
             total[3]))


if __name__ == "__main__":
    main()
