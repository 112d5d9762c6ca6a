"""Corruption that used to be accepted: a format file with more in it, an
object header with reserved bits set, a compressed stream followed by other
data; and temporary files left by writers that were killed."""

import os
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import pytest

import helpers
from backshift.atomic import pid_space, this_host
from backshift.backup import PACK_FILE_MAX
from backshift.objectstore import LIST_AFTER_MISSES, digest_of
from backshift.pipeline import default_workers
from backshift.savedir import SaveDir
from backshift.tree import TreeReader


def test_garbage_after_the_format_line_is_refused_by_every_command(savedir, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data\n")
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    with open(os.path.join(savedir, "backshift-format"), "ab") as handle:
        handle.write(b"garbage\n")
    find = helpers.find_print0("src", cwd=str(tmp_path))
    for args in (["--list-backups"], ["--check"], ["--verify"], ["--expire", "--max-age", "1d"],
                 ["--list-backup", "--backup-id", backup_id],
                 ["--produce-tar", "--backup-id", backup_id],
                 ["--backup", "--subset", "again"]):
        result = helpers.run(["--save-directory", savedir] + args, input=find, cwd=str(tmp_path))
        helpers.assert_one_line_error(result, "backshift-format")


def one_file_backup(savedir: str, tmp_path, data: bytes, extra=()):
    """A backup of one file big enough for an object of its own; (id, its first object)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(data)
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=list(extra))
    store = SaveDir(savedir, "test")
    (entry,) = TreeReader(store.objects).lookup(store.catalog.read(backup_id).root, b"src/f")
    return backup_id, store.objects.path_of(entry.chunks[0][0])


def assert_damage_everywhere(savedir: str, backup_id: str, object_path: str, words: str):
    digest = os.path.basename(object_path)
    for action in ("--check", "--verify"):
        result = helpers.run(["--save-directory", savedir, action])
        err = result.stderr.decode()
        assert result.returncode == 1 and "Traceback" not in err, err
        assert "object %s: " % digest in err and words in err, err
        assert "src/f" in err, err
    result = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id", backup_id])
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    assert err.startswith("backshift: src/f: damaged: ") and len(err.splitlines()) == 1, err


TEXT = b"".join(b"line %d of a compressible file\n" % number for number in range(20000))


def test_nonzero_reserved_header_field_is_damage(savedir, tmp_path):
    backup_id, path = one_file_backup(savedir, tmp_path, os.urandom(PACK_FILE_MAX + 1000))
    os.chmod(path, 0o600)
    with open(path, "r+b") as handle:
        handle.seek(6)  # u16 reserved, after magic, version and codec
        handle.write(b"\x01\x00")
    assert_damage_everywhere(savedir, backup_id, path, "reserved")


@pytest.mark.parametrize("codec", ["xz", "zlib", "bz2"])
def test_data_after_the_compressed_stream_is_damage(savedir, tmp_path, codec):
    backup_id, path = one_file_backup(savedir, tmp_path, TEXT, ["--compression", codec])
    with open(path, "rb") as handle:
        assert handle.read(6)[5] != 0  # compressed, not raw
    os.chmod(path, 0o600)
    with open(path, "ab") as handle:
        handle.write(b"trailing garbage")
    # --check judges headers and sizes only: for xz the stream's end is
    # gone ("truncated"); zlib and bz2 show it when read (--verify).
    words = {"xz": "xz", "zlib": "after the end", "bz2": "after the end"}[codec]
    for action in (["--verify"], ["--check"] if codec == "xz" else []):
        if action:
            result = helpers.run(["--save-directory", savedir] + action)
            err = result.stderr.decode()
            assert result.returncode == 1 and words in err and "src/f" in err, err
    result = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id", backup_id])
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    assert err.startswith("backshift: src/f: damaged: ") and "after the end" in err, err


def temp_name(host: str, pid: int, space: Optional[str]) -> str:
    """A temporary file's name as FORMAT.md gives it; without a pid space, as
    earlier versions wrote it."""
    if space is None:
        return ".tmp-%s-%d-%s" % (host, pid, "ab" * 6)
    return ".tmp-%s-%s-%d-%s" % (host, space, pid, "ab" * 6)


def dead_pid() -> int:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process (reuse within the test is not expected)
    return gone.pid


def leave_temporary_files(directory: str) -> Tuple[List[str], List[str]]:
    """Temporary files as killed and running writers leave them: (those whose
    writers are provably dead, the others)."""
    gone = dead_pid()
    here = pid_space()
    assert here is not None, "no pid space on this system"
    dead = [temp_name(this_host(), gone, here),
            temp_name("other-label", gone, here)]  # --hostname other-label, same machine
    alive = [temp_name(this_host(), os.getpid(), here),  # its writer runs
             # A machine of the same name (or another boot, or pid namespace).
             temp_name(this_host(), gone, "0123456789abcdef"),
             temp_name("elsewhere", gone, None),
             # Earlier versions' names say too little to prove anything.
             temp_name(this_host(), gone, None)]
    paths = [[os.path.join(directory, name) for name in names] for names in (dead, alive)]
    for path in paths[0] + paths[1]:
        with open(path, "wb") as handle:
            handle.write(b"partial")
    return paths[0], paths[1]


def test_check_counts_temporary_files_and_removes_those_of_dead_writers(savedir):
    objects = os.path.join(savedir, "objects", "ab")
    dead, alive = leave_temporary_files(objects)
    with open(os.path.join(savedir, "backups", temp_name("elsewhere", 1, None)), "wb") as handle:
        handle.write(b"z" * 1000)
    result = helpers.run(["--save-directory", savedir, "--check"])
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "5 temporary files (1028 bytes)" in lines[0] \
        and "2 of dead writers on this host removed" in lines[0], lines
    assert not any(os.path.exists(path) for path in dead)
    assert all(os.path.exists(path) for path in alive)


def one_directory_contents(count: int, size: int) -> List[bytes]:
    """``count`` contents of ``size`` bytes whose objects go to one object directory."""
    base = os.urandom(size - 8)
    by_prefix: Dict[int, List[bytes]] = {}
    for number in range(256 * count):
        content = base + number.to_bytes(8, "big")
        group = by_prefix.setdefault(digest_of(content)[0], [])
        group.append(content)
        if len(group) == count:
            return group
    raise AssertionError("no %d contents in one directory" % count)


def test_a_backup_removes_temporary_files_of_dead_writers(savedir, tmp_path):
    # Files of one chunk each (too big to be packed) whose objects go to one
    # directory known in advance, enough that the backup lists it, as it
    # does anyway.  The store's workers look for objects at once: the last
    # file's look begins after all but default_workers() of the others
    # ended, so it sees LIST_AFTER_MISSES misses counted whatever the timing
    # (with one file more than LIST_AFTER_MISSES, every look could come first).
    contents = one_directory_contents(LIST_AFTER_MISSES + default_workers() + 1,
                                      PACK_FILE_MAX + 1024)
    (tmp_path / "src").mkdir()
    for number, content in enumerate(contents):
        (tmp_path / "src" / ("f%d" % number)).write_bytes(content)
    directory = os.path.join(savedir, "objects", digest_of(contents[0]).hex()[:2])
    dead, alive = leave_temporary_files(directory)
    dead_records, alive_records = leave_temporary_files(os.path.join(savedir, "backups"))
    helpers.backup(savedir, "src", cwd=str(tmp_path))
    assert not any(os.path.exists(path) for path in dead + dead_records)
    assert all(os.path.exists(path) for path in alive + alive_records)


def test_expire_removes_temporary_files_of_dead_writers_at_once(savedir):
    dead, alive = leave_temporary_files(os.path.join(savedir, "objects", "5e"))
    dead_records, alive_records = leave_temporary_files(os.path.join(savedir, "backups"))
    helpers.run_ok(["--save-directory", savedir, "--expire", "--max-age", "1d"])
    assert not any(os.path.exists(path) for path in dead + dead_records)
    # The others wait for their day (test_expiry).
    assert all(os.path.exists(path) for path in alive + alive_records)


def test_backup_record_of_an_unknown_version_is_refused(savedir, tmp_path):
    (tmp_path / "src").mkdir()
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    path = os.path.join(savedir, "backups", backup_id)
    with open(path, "rb") as handle:
        text = handle.read()
    assert b'"format": 1,' in text
    with open(path, "wb") as handle:
        handle.write(text.replace(b'"format": 1,', b'"format": 2,'))
    result = helpers.run(["--save-directory", savedir, "--list-backup", "--backup-id", backup_id])
    helpers.assert_one_line_error(result, backup_id, "version 2")
    result = helpers.run(["--save-directory", savedir, "--check"])
    assert result.returncode == 1 and b"version 2 is not supported" in result.stderr
