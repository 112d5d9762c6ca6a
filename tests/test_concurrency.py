"""Issue 4 item 3: many backup processes write one save directory at once.

Four real backup processes (two of the same host and subset, one of another
subset, one of another host) run at the same time with no lock; data they
share is stored once and every backup restores.  tests/test_sshfs.py runs
the same check with the save directory on a real sshfs mount.
"""

import os

from helpers import four_at_once


def test_four_writers_at_once(savedir, tmp_path):
    base = str(tmp_path / "sources")
    os.makedirs(base)
    four_at_once(savedir, base, ("--no-fsync",))
