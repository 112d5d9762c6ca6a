"""``--stats``: what the save directory holds, and what deduplication and compression save.

Bytes stored are the object files' sizes (and, beside them, the blocks the
file system allocated: what ``du`` says); bytes backed up are the sizes of
the files the complete backups hold, counted once per backup.  The
deduplication ratio is backed-up bytes over the distinct content the
objects hold; the compression ratio is that content over the bytes stored.
"""

import os
from typing import BinaryIO, List, NamedTuple

from .catalog import BackupRecord
from .objectstore import OBJECT_HEADER, OBJECT_MAGIC
from .report import human_bytes
from .savedir import SaveDir


class Totals(NamedTuple):
    backups: int
    complete: int
    objects: int
    stored: int      # object file sizes
    allocated: int   # blocks allocated to them
    content: int     # their uncompressed lengths
    backed_up: int   # file bytes of the complete backups


def totals(savedir: SaveDir) -> Totals:
    """Read every record and every object's header (not its payload)."""
    records: List[BackupRecord] = list(savedir.catalog.records())
    objects = stored = allocated = content = 0
    for digest in savedir.objects.iter_digests():
        path = savedir.objects.path_of(digest)
        try:
            with open(path, "rb") as handle:
                st = os.fstat(handle.fileno())
                header = handle.read(OBJECT_HEADER.size)
        except FileNotFoundError:
            continue  # removed meanwhile (an expire)
        objects += 1
        stored += st.st_size
        allocated += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
        if len(header) == OBJECT_HEADER.size:
            magic, _version, _codec, _zero, length = OBJECT_HEADER.unpack(header)
            if magic == OBJECT_MAGIC:
                content += length
    complete = [record for record in records if record.complete]
    return Totals(len(records), len(complete), objects, stored, allocated, content,
                  sum(record.bytes for record in complete))


def _ratio(numerator: int, denominator: int) -> str:
    return "%.2f" % (numerator / denominator) if denominator else "-"


def print_stats(savedir: SaveDir, out: BinaryIO) -> None:
    total = totals(savedir)
    lines = [
        "backups:            %d (%d complete)" % (total.backups, total.complete),
        "objects:            %d" % total.objects,
        "bytes stored:       %d (%s; %s allocated)" % (total.stored, human_bytes(total.stored),
                                                      human_bytes(total.allocated)),
        "content stored:     %d (%s)" % (total.content, human_bytes(total.content)),
        "bytes backed up:    %d (%s)" % (total.backed_up, human_bytes(total.backed_up)),
        "deduplication:      %s (bytes backed up / content stored)"
        % _ratio(total.backed_up, total.content),
        "compression:        %s (content stored / bytes stored)"
        % _ratio(total.content, total.stored),
    ]
    out.write(("\n".join(lines) + "\n").encode())
    out.flush()
