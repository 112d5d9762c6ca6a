"""A file rewritten in place while it is read, its mtime then set back
(pwrite + utime), is reported as changed, as GNU tar reports it: the ctime
moved.  The rewrite happens at a known point of the read (after the first
chunk was stored, from the backup's per-chunk checkpoint hook), so the test
orders nothing by time."""

import io
import os
import random

from backshift.backup import Backup, BackupOptions
from backshift.compression import CompressionSpec
from backshift.report import Reporter
from backshift.savedir import SaveDir


def test_a_rewrite_with_the_mtime_set_back_is_reported(savedir, tmp_path):
    os.makedirs(str(tmp_path / "src"))
    path = str(tmp_path / "src" / "big")
    size = 6 * 1024 * 1024  # several 512 KiB..8 MiB data chunks
    with open(path, "wb") as handle:
        handle.write(random.Random(1).randbytes(size))
    before = os.stat(path)
    reporter = Reporter(io.StringIO())
    backup = Backup(SaveDir(savedir, "test", durable=False),
                    BackupOptions("test", "test", CompressionSpec.parse("none"), settle_ns=0), reporter)
    tick = backup.checkpoints.tick
    rewrites = []

    def rewrite_once(partial=None):
        if partial is not None and not rewrites:
            # Same size, other bytes, mtime put back: only the ctime tells.
            fd = os.open(path, os.O_WRONLY)
            try:
                rewrites.append(os.pwrite(fd, b"\0" * size, 0))
            finally:
                os.close(fd)
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        tick(partial)
    backup.checkpoints.tick = rewrite_once  # type: ignore[assignment]
    record = backup.run(iter([str(tmp_path / "src").encode(), path.encode()]))
    assert rewrites == [size]
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert reporter.stream.getvalue() == "backshift: %s: file changed as we read it\n" % path
    assert record.errors == 1
