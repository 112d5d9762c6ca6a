"""--check, --verify and restores from a damaged save directory.

Each test damages a real save directory the way a disk or a careless
hand would (flip a byte, truncate, delete an object, spoil a directory
record or a backup record) and checks what backshift says and does.
"""

import io
import os
import subprocess
import tarfile

import pytest

import helpers
from backshift.records import KIND_DIR
from backshift.savedir import SaveDir
from backshift.tree import TreeReader

MIB = 1024 * 1024


@pytest.fixture
def damaged(tmp_path, savedir):
    """A save directory with two backups of a small tree, ready to be damaged."""
    src = tmp_path / "src"
    (src / "docs" / "deep").mkdir(parents=True)
    (src / "random.bin").write_bytes(os.urandom(3 * MIB))           # raw objects
    (src / "docs" / "text.txt").write_bytes(b"".join(b"line %d\n" % n for n in range(60000)))
    (src / "docs" / "deep" / "small").write_bytes(b"inline content")
    (src / "docs" / "deep" / "medium.bin").write_bytes(os.urandom(100000))
    helpers.outgrow_inline_record(str(src / "docs" / "deep"))
    first = helpers.backup(savedir, "src", cwd=str(tmp_path))
    (src / "other.bin").write_bytes(os.urandom(50000))
    second = helpers.backup(savedir, "src", cwd=str(tmp_path))
    return Damaged(savedir, [first, second], str(tmp_path))


class Damaged:
    def __init__(self, savedir, ids, cwd):
        self.savedir = savedir
        self.ids = ids
        self.cwd = cwd
        self.store = SaveDir(savedir, "test")
        self.reader = TreeReader(self.store.objects)

    def root(self, backup_id=None):
        return self.store.catalog.read(backup_id or self.ids[-1]).root

    def entry(self, path: bytes):
        (found,) = self.reader.lookup(self.root(), path)
        return found

    def object_path(self, path: bytes, index: int = 0) -> str:
        """File of the index-th object of a file's content (or a directory's record)."""
        return self.store.objects.path_of(self.entry(path).chunks[index][0])

    def check(self, *extra):
        return helpers.run(["--save-directory", self.savedir] + list(extra))


def flip_byte(path: str, offset: int) -> None:
    os.chmod(path, 0o600)
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))


def test_healthy_save_directory_passes_check_and_verify(damaged):
    for action in ("--check", "--verify", "--check-hashes"):
        result = damaged.check(action)
        assert result.returncode == 0, result.stderr
        assert result.stderr == b""  # cron stays quiet


def test_flipped_byte_is_found_by_verify_naming_backups_and_path(damaged):
    target = damaged.object_path(b"src/random.bin", 0)
    flip_byte(target, os.path.getsize(target) // 2)
    result = damaged.check("--verify")
    assert result.returncode == 1
    err = result.stderr.decode()
    digest = os.path.basename(target)
    assert "object %s: content does not match its digest" % digest in err
    for backup_id in damaged.ids:
        assert "damages backup %s: src/random.bin" % backup_id in err
    assert "src/docs" not in err  # nothing else is blamed


def test_truncated_objects_are_found_by_check(damaged):
    raw = damaged.object_path(b"src/random.bin", 1)
    xz = damaged.object_path(b"src/docs/text.txt", 0)
    for path in (raw, xz):
        os.truncate(path, os.path.getsize(path) // 2)
    for action in ("--check", "--verify"):
        result = damaged.check(action)
        assert result.returncode == 1
        err = result.stderr.decode()
        assert "object %s: truncated" % os.path.basename(raw) in err
        assert os.path.basename(xz) in err
        assert "src/random.bin" in err and "src/docs/text.txt" in err


def test_deleted_object_is_missing_and_only_its_backups_are_named(damaged):
    only_second = damaged.object_path(b"src/other.bin", 0)
    os.unlink(only_second)
    for action in ("--check", "--verify"):
        result = damaged.check(action)
        assert result.returncode == 1
        err = result.stderr.decode()
        assert "object %s: missing" % os.path.basename(only_second) in err
        assert "damages backup %s: src/other.bin" % damaged.ids[1] in err
        assert damaged.ids[0] not in err


def test_corrupt_directory_record_is_found_and_its_directory_named(damaged):
    directory = damaged.entry(b"src/docs/deep")
    assert directory.kind == KIND_DIR
    record_object = damaged.store.objects.path_of(directory.chunks[0][0])
    flip_byte(record_object, os.path.getsize(record_object) - 3)
    result = damaged.check("--check")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert os.path.basename(record_object) in err
    assert "src/docs/deep (directory contents)" in err
    for backup_id in damaged.ids:
        assert backup_id in err


def test_corrupt_backup_record_is_named(damaged):
    record = os.path.join(damaged.savedir, "backups", damaged.ids[0])
    with open(record, "r+b") as handle:
        handle.seek(5)
        handle.write(b"}{")
    result = damaged.check("--verify")
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "backup record %s" % damaged.ids[0] in err and "does not parse" in err
    assert "Traceback" not in err


def tar_members(stream: bytes):
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as archive:
        return {member.name: member for member in archive.getmembers()}


def test_damaged_file_restores_padded_to_its_size_named_on_stderr(damaged, tmp_path):
    target = damaged.object_path(b"src/random.bin", 1)
    os.unlink(target)
    flip_byte(damaged.object_path(b"src/docs/text.txt", 0), 20)
    result = helpers.run(["--save-directory", damaged.savedir, "--produce-tar",
                          "--backup-id", damaged.ids[1]])
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "src/random.bin" in err and "src/docs/text.txt" in err
    assert "src/docs/deep" not in err and "src/other.bin" not in err
    # Real tars read the whole stream; sizes are the files' own.
    listing = subprocess.run(["tar", "tvf", "-"], input=result.stdout, check=True,
                             stdout=subprocess.PIPE).stdout.decode()
    assert "src/docs/deep/medium.bin" in listing
    subprocess.run(["bsdtar", "tf", "-"], input=result.stdout, check=True,
                   stdout=subprocess.PIPE)
    members = tar_members(result.stdout)
    assert members["src/random.bin"].size == 3 * MIB
    out = tmp_path / "out"
    helpers.extract(result.stdout, str(out))
    restored = (out / "src" / "random.bin").read_bytes()
    original = (tmp_path / "src" / "random.bin").read_bytes()
    assert len(restored) == len(original) and restored != original
    length = damaged.entry(b"src/random.bin").chunks[0][1]
    assert restored[:length] == original[:length]  # the good chunk is intact
    assert (out / "src" / "docs" / "deep" / "medium.bin").read_bytes() == \
        (tmp_path / "src" / "docs" / "deep" / "medium.bin").read_bytes()


def test_damaged_directory_record_loses_only_that_directory(damaged, tmp_path):
    directory = damaged.entry(b"src/docs/deep")
    os.unlink(damaged.store.objects.path_of(directory.chunks[0][0]))
    result = helpers.run(["--save-directory", damaged.savedir, "--produce-tar",
                          "--backup-id", damaged.ids[1]])
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "src/docs/deep" in err and "Traceback" not in err
    out = tmp_path / "out"
    helpers.extract(result.stdout, str(out))
    assert (out / "src" / "docs" / "text.txt").read_bytes() == \
        (tmp_path / "src" / "docs" / "text.txt").read_bytes()
    assert (out / "src" / "random.bin").read_bytes() == \
        (tmp_path / "src" / "random.bin").read_bytes()
    assert (out / "src" / "docs" / "deep").is_dir()
    assert not (out / "src" / "docs" / "deep" / "small").exists()


def test_check_shows_progress_only_on_a_terminal(damaged):
    # Not a terminal here: a healthy check prints nothing (see the first
    # test); the "all healthy" summary is for people at a terminal.
    script = ("import pty, os, sys\n"
              "pid, fd = pty.fork()\n"
              "if pid == 0:\n"
              "    os.execvp(sys.argv[1], sys.argv[1:])\n"
              "out = b''\n"
              "while True:\n"
              "    try:\n"
              "        data = os.read(fd, 4096)\n"
              "    except OSError:\n"
              "        break\n"
              "    if not data:\n"
              "        break\n"
              "    out += data\n"
              "os.waitpid(pid, 0)\n"
              "sys.stdout.buffer.write(out)\n")
    result = subprocess.run([helpers.BACKSHIFT[0], "-c", script] + helpers.BACKSHIFT
                            + ["--save-directory", damaged.savedir, "--verify"],
                            stdout=subprocess.PIPE, timeout=120)
    assert b"all healthy" in result.stdout and b"verify" in result.stdout
