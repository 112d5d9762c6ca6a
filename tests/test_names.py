"""The writer's obligation (FORMAT.md, "Names"): in each directory a name is
recorded once (only a directory's fragments share a name), and nothing is
recorded below an entry that is not a directory, whatever the input order
and however the tree changes while it is read.

The swap race runs the real thing: a thread swapping a directory and a
symlink to a directory outside the tree while real ``find -print0 |
backshift --backup`` runs, then every backup restored through GNU tar,
bsdtar and Python's tarfile.  Whether a given run meets the race is up to
the scheduler (the code before this rule recorded children below the
symlink in about one run of ten); the deterministic tests before it pin
each case down.
"""

import collections
import io
import os
import subprocess
import tarfile
import threading
from typing import Dict, List

import helpers
from backshift.backup import Backup, BackupOptions
from backshift.records import KIND_DIR
from backshift.report import Reporter
from backshift.savedir import SaveDir
from backshift.tree import TreeReader


def name_violations(savedir: str, backup_id: str) -> List[str]:
    """Paths that break the rule: below a non-directory, or a name repeated."""
    root = SaveDir(savedir, "test").catalog.read(backup_id).root
    kinds: Dict[bytes, List[bytes]] = collections.defaultdict(list)
    for path, entry in TreeReader(SaveDir(savedir, "test").objects).walk(
            root or [], include_implicit=True):
        kinds[path].append(entry.kind)
    problems = []
    for path, found in kinds.items():
        if len(found) > 1 and any(kind != KIND_DIR for kind in found):
            problems.append("%r recorded as %r" % (path, found))
        parent = path.rpartition(b"/")[0]
        if path and any(kind != KIND_DIR for kind in kinds.get(parent, [KIND_DIR])):
            problems.append("%r below %r, a %r" % (path, parent, kinds[parent]))
    return problems


class SwapAfter(Reporter):
    """Runs ``swap`` once the backup is done with ``path``: a race made deterministic."""

    def __init__(self, path: bytes, swap) -> None:
        super().__init__(io.StringIO())
        self._path = path
        self._swap = swap

    def file_done(self, path: bytes, size: int) -> None:
        if path == self._path and self._swap is not None:
            self._swap()
            self._swap = None


def run_in_process(savedir: str, paths: List[bytes], reporter: Reporter) -> str:
    backup = Backup(SaveDir(savedir, "test", durable=False), BackupOptions("test", "test"),
                    reporter)
    return backup.run(iter(paths)).backup_id


def test_a_directory_saved_as_a_symlink_gets_no_children(savedir, tmp_path):
    os.chdir(str(tmp_path))
    os.makedirs("src/v")
    os.makedirs("elsewhere")
    os.symlink(str(tmp_path / "elsewhere"), "src/v/d")

    def symlink_becomes_directory() -> None:
        os.unlink("src/v/d")
        os.mkdir("src/v/d")
        for name in ("f1", "f2"):
            with open("src/v/d/" + name, "wb") as handle:
                handle.write(b"inside")
    reporter = SwapAfter(b"src/v/d", symlink_becomes_directory)
    backup_id = run_in_process(savedir, [b"src", b"src/v", b"src/v/d", b"src/v/d/f1",
                                         b"src/v/d/f2", b"src/v/e"], reporter)
    assert name_violations(savedir, backup_id) == []
    lines = reporter.stream.getvalue().splitlines()
    # One line for the directory, none per child; src/v/e (gone) is its own error.
    assert lines[0] == ("backshift: src/v/d: changed during backup (was not a directory); "
                        "its contents are not saved"), lines
    assert len(lines) == 2 and lines[1].startswith("backshift: src/v/e: "), lines
    assert reporter.errors == 2


def test_a_directory_saved_then_replaced_by_a_file_is_not_recorded_twice(savedir, tmp_path):
    os.chdir(str(tmp_path))
    os.makedirs("src/d")

    def directory_becomes_file() -> None:
        os.rmdir("src/d")
        with open("src/d", "wb") as handle:
            handle.write(b"now a file")
    reporter = SwapAfter(b"src/d", directory_becomes_file)
    backup_id = run_in_process(savedir, [b"src", b"src/d", b"src/x", b"src/d"], reporter)
    assert name_violations(savedir, backup_id) == []
    assert reporter.stream.getvalue().endswith(
        "backshift: src/d: changed during backup (was a directory); not saved\n")


def test_paths_given_twice_are_saved_once(savedir, tmp_path):
    os.chdir(str(tmp_path))
    for name in ("src/a/sub/f", "src/a/g", "src/b/h"):
        os.makedirs(os.path.dirname(name), exist_ok=True)
        with open(name, "wb") as handle:
            handle.write(name.encode() * 3)
    os.symlink("a", "src/link")
    # Twice in a row, and a whole subtree again after the input left it
    # (find src src/a): the second mention of each path is skipped quietly.
    twice = b"src\0src/a\0src/a/g\0src/a/g\0src/link\0src/link\0" + \
        helpers.find_print0("src") + helpers.find_print0("src/a")
    result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "test",
                          "--no-fsync"], input=twice)
    assert result.returncode == 0 and result.stderr == b"", result.stderr
    backup_id = helpers.list_ids(savedir)[0]
    assert name_violations(savedir, backup_id) == []
    dest = str(tmp_path / "restored")
    helpers.extract(helpers.produce_tar(savedir, backup_id), dest)
    helpers.assert_same_tree("src", os.path.join(dest, "src"))


# -- the real race -------------------------------------------------------------

BACKUPS = 4
FILES = 400


def swap_forever(v: str, stash: str, stop: threading.Event) -> None:
    """Keep replacing ``v``/d: a directory, then a symlink to the secret, and back."""
    d = os.path.join(v, "d")
    while not stop.is_set():
        for kind in ("dir", "link"):
            os.rename(os.path.join(stash, kind), d)
            stop.wait(0.001)  # each state lasts long enough for find or the backup to meet it
            os.rename(d, os.path.join(stash, kind))


def files_below(top: str) -> Dict[str, bytes]:
    found = {}
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                found[os.path.join(dirpath, name)] = handle.read()
    return found


def extract_with_tarfile(data: bytes, dest: str) -> None:
    os.makedirs(dest)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.errorlevel = 0  # members the filter refuses are skipped, not fatal
            archive.extractall(dest, filter="data")
        else:
            archive.extractall(dest)


def test_swapping_a_directory_and_a_symlink_while_backing_up(savedir, tmp_path):
    work = tmp_path / "work"
    secret = tmp_path / "secret"
    stash = tmp_path / "stash"
    for directory in (work / "src" / "v", secret, stash / "dir"):
        os.makedirs(str(directory))
    for n in range(FILES):
        for where, content in ((secret, b"secret"), (stash / "dir", b"inside")):
            with open(str(where / ("f%03d" % n)), "wb") as handle:
                handle.write(content)
    os.symlink(str(secret), str(stash / "link"))
    secret_before = files_below(str(secret))
    stop = threading.Event()
    swapper = threading.Thread(target=swap_forever, args=(str(work / "src" / "v"), str(stash),
                                                          stop))
    swapper.start()
    statuses = []
    try:
        for _ in range(BACKUPS):
            find = subprocess.Popen(["find", "src", "-print0"], cwd=str(work),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            result = subprocess.run(helpers.BACKSHIFT + [
                "--save-directory", savedir, "--backup", "--subset", "test", "--no-fsync",
                "--compression", "none", "--settle-time", "0"], cwd=str(work),
                stdin=find.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            find.stdout.close()
            find.wait()
            assert result.returncode in (0, 1), result.stderr
            assert b"Traceback" not in result.stderr
            statuses.append(result.returncode)
    finally:
        stop.set()
        swapper.join()
    ids = helpers.list_ids(savedir)
    assert len(ids) == BACKUPS
    for number, backup_id in enumerate(ids):
        assert name_violations(savedir, backup_id) == [], backup_id
        data = helpers.produce_tar(savedir, backup_id)
        restore = tmp_path / ("restore-%d" % number)
        helpers.extract(data, str(restore / "gnu"), ("tar", "xpf", "-"))
        helpers.extract(data, str(restore / "bsd"), ("bsdtar", "-xpf", "-"))
        extract_with_tarfile(data, str(restore / "python"))
    # Nothing was written through the symlink, and nothing new appeared
    # beside the restore directories.
    assert files_below(str(secret)) == secret_before
    assert sorted(os.listdir(str(tmp_path))) == sorted(
        ["work", "secret", "stash", "savedir"] + ["restore-%d" % n for n in range(BACKUPS)])


def test_a_symlink_replaced_before_it_is_read_is_reported_as_changed(savedir, tmp_path):
    os.chdir(str(tmp_path))
    os.makedirs("src")
    os.symlink("target", "src/l")

    reporter = Reporter(io.StringIO())
    backup = Backup(SaveDir(savedir, "test", durable=False), BackupOptions("test", "test"),
                    reporter)
    lstat_at = backup.source.lstat_at  # every lstat of a backup goes through it

    def lstat_then_swap(parent: bytes, name: bytes):
        st = lstat_at(parent, name)
        if (parent, name) == (b"src", b"l"):
            os.unlink("src/l")
            os.mkdir("src/l")
        return st
    backup.source.lstat_at = lstat_then_swap  # type: ignore[assignment]
    backup.run(iter([b"src", b"src/l"]))
    assert reporter.stream.getvalue() == \
        "backshift: src/l: changed during backup (no longer a symlink); not saved\n"
