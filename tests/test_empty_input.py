"""Nothing saved is not a backup (issue 11 item 1, the writer's side).

An input naming no path, or a newline-separated list (find without
-print0), is refused with one line and exit 2 before any record is written;
a backup in which every path given failed is recorded as "failed", exit 1.
"""

import os
import subprocess

import helpers


def backup_with(savedir: str, cwd: str, stdin: bytes, extra=()) -> subprocess.CompletedProcess:
    return helpers.run(["--save-directory", savedir, "--backup", "--subset", "test",
                        "--no-fsync"] + list(extra), input=stdin, cwd=cwd)


def make_src(top: str) -> None:
    os.makedirs(os.path.join(top, "src", "sub"))
    for name in ("src/a", "src/sub/b"):
        helpers.write(os.path.join(top, name), name.encode())


def test_no_path_given_is_refused_and_recorded_nowhere(savedir, tmp_path):
    make_src(str(tmp_path))
    empty_list = str(tmp_path / "empty.list")
    helpers.write(empty_list, b"")
    for stdin, extra, named in ((b"", (), "standard input"),
                                (b"\0\0", (), "standard input"),  # only empty names
                                (b"src\0", ("--filelist", empty_list), empty_list)):
        result = backup_with(savedir, str(tmp_path), stdin, extra)
        helpers.assert_one_line_error(result, named, "no path")
    assert helpers.list_ids(savedir) == []


def test_a_newline_separated_list_is_refused_naming_print0(savedir, tmp_path):
    make_src(str(tmp_path))
    listing = subprocess.run(["find", "src"], cwd=str(tmp_path), check=True,
                             stdout=subprocess.PIPE).stdout  # -print0 forgotten
    assert b"\n" in listing and b"\0" not in listing
    newline_list = str(tmp_path / "newline.list")
    helpers.write(newline_list, listing)
    for stdin, extra, named in ((listing, (), "standard input"),
                                (b"", ("--filelist", newline_list), newline_list)):
        line = helpers.assert_one_line_error(backup_with(savedir, str(tmp_path), stdin, extra),
                                             named, "-print0", "--filelist")
        assert len(line) < 200  # the list itself is not echoed
    assert helpers.list_ids(savedir) == []
    # One path without a NUL (and without a newline) is still a path.
    assert backup_with(savedir, str(tmp_path), b"src").returncode == 0
    # And a path with a newline in its name, from real find -print0, is saved.
    helpers.write(str(tmp_path / "src" / "two\nlines"), b"x")
    result = backup_with(savedir, str(tmp_path), helpers.find_print0("src", str(tmp_path)),
                         ("--settle-time", "0"))
    assert result.returncode == 0, result.stderr


def test_every_path_failed_is_a_failed_backup(savedir, tmp_path):
    # As from find /mnt/not-mounted -print0 whose paths vanished before the backup.
    result = backup_with(savedir, str(tmp_path), b"gone\0gone/a\0")
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode().splitlines() == [
        "backshift: gone: No such file or directory",
        "backshift: gone/a: No such file or directory"]
    (backup_id,) = helpers.list_ids(savedir)
    record = helpers.read_record(savedir, backup_id)
    assert record["state"] == "failed" and record["files"] == 0 and record["errors"] == 2
    listing = helpers.run_ok(["--save-directory", savedir, "--list-backup",
                              "--backup-id", backup_id]).stdout
    assert listing == b""
    # One path saved among failures: complete, exit 1.
    make_src(str(tmp_path))
    result = backup_with(savedir, str(tmp_path), b"gone\0src/a\0")
    assert result.returncode == 1, result.stderr
    (other,) = set(helpers.list_ids(savedir)) - {backup_id}
    assert helpers.read_record(savedir, other)["state"] == "complete"
