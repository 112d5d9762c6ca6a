"""Corruption that used to be accepted: a format file with more in it, an
object header with reserved bits set, a compressed stream followed by other
data; and temporary files left by writers that were killed."""

import os
import subprocess
import sys

import pytest

import helpers
from backshift.atomic import this_host
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
    backup_id, path = one_file_backup(savedir, tmp_path, os.urandom(200000))
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


def temp_name(host: str, pid: int) -> str:
    return ".tmp-%s-%d-%s" % (host, pid, "ab" * 6)


def test_check_counts_temporary_files_and_removes_those_of_dead_writers(savedir):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid now names no process (reuse within the test is not expected)
    objects = os.path.join(savedir, "objects", "ab")
    left = {
        os.path.join(objects, temp_name("elsewhere", gone.pid)): b"x" * 1000,  # other host
        os.path.join(objects, temp_name(this_host(), os.getpid())): b"y" * 24,  # alive
        os.path.join(savedir, "backups", temp_name("elsewhere", 1)): b"z" * 24,
    }
    dead = os.path.join(objects, temp_name(this_host(), gone.pid))
    for path, data in list(left.items()) + [(dead, b"d" * 50)]:
        with open(path, "wb") as handle:
            handle.write(data)
    result = helpers.run(["--save-directory", savedir, "--check"])
    assert result.returncode == 0, result.stderr
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "3 temporary files (1048 bytes)" in lines[0] \
        and "1 of dead writers on this host removed" in lines[0], lines
    assert not os.path.exists(dead)
    assert all(os.path.exists(path) for path in left)


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
