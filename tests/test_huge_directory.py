"""A directory too large to index in full is re-backed up from a compact index (recordindex.py).

4,000 files with long names in one directory give a record past
recordindex.LARGE_RECORD (1 MiB): the re-backup finds each unchanged file through
the 8-byte-per-entry index and the record's chunks read again.  Every
unchanged file must be reused, the changed and the new ones read, and the
whole directory must come back exactly through GNU tar, in find order and
in a shuffled order (where lookups jump around the record).
"""

import os
import random

import helpers
from backshift.recordindex import LARGE_RECORD

FILES = 4_000


def _name(number: int) -> str:
    # Long names (250 bytes, the most a component may be in practice) make
    # the record large with few files.
    return "f%05d-" % number + "n" * 244


def _make(top: str) -> None:
    os.makedirs(top)
    for number in range(FILES):
        with open(os.path.join(top, _name(number)), "wb") as handle:
            # 3 to 900 bytes: some inline in their entry, most packed.
            handle.write(b"%d;" % number * (1 + number % 150))


def _rebackup(savedir: str, top: str, order: str) -> str:
    paths = helpers.find_print0(top).split(b"\0")[:-1]
    if order == "shuffled":
        random.Random(4).shuffle(paths)
    before = set(helpers.list_ids(savedir))
    result = helpers.run_ok(["--save-directory", savedir, "--backup", "--subset", "huge",
                             "--no-fsync", "--settle-time", "0"],
                            input=b"\0".join(paths) + b"\0")
    assert not result.stderr, result.stderr
    # The new id, not the last in order: ids name only the second a backup
    # started, and two in one second sort by their random tails.
    (new,) = set(helpers.list_ids(savedir)) - before
    return new


def test_a_huge_directory_is_reused_from_the_compact_index_and_restores_exactly(tmp_path):
    top = str(tmp_path / "huge")
    _make(top)
    savedir = str(tmp_path / "save")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    first = helpers.backup(savedir, top, subset="huge", extra=["--settle-time", "0"])
    directory = helpers.tree_entries(savedir, first)[os.fsencode(top.lstrip("/"))]
    assert sum(length for _digest, length in directory.chunks) >= LARGE_RECORD

    # A few changed, one removed, one added: those are read, the rest reused.
    for number in (7, 2_345, FILES - 1):
        with open(os.path.join(top, _name(number)), "ab") as handle:
            handle.write(b"changed")
    os.unlink(os.path.join(top, _name(100)))
    with open(os.path.join(top, "new-file"), "wb") as handle:
        handle.write(b"new content " * 20)
    files = FILES  # 3 changed and 1 new are read, FILES - 4 reused
    for order in ("find", "shuffled"):
        backup_id = _rebackup(savedir, top, order)
        record = helpers.read_record(savedir, backup_id)
        assert record["files"] == files
        reused = FILES - 4 if order == "find" else files
        assert record["files_reused"] == reused, (order, record["files_reused"])
    # The last backup's entries were found in the index in shuffled order.
    restored = str(tmp_path / "restored")
    helpers.extract(helpers.produce_tar(savedir, backup_id), restored)
    helpers.assert_same_tree(top, os.path.join(restored, top.lstrip("/")), dir_mtimes=False)
