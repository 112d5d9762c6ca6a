"""Bad input: one clear line, the rest saved, the right exit status."""

import os
import subprocess

import helpers


def test_missing_savedir_is_fatal_with_one_line(tmp_path):
    result = helpers.run(["--save-directory", str(tmp_path / "nope"), "--list-backups"])
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "nope" in lines[0] and "mounted" in lines[0]


def test_backup_without_init_does_not_create_savedir(tmp_path):
    result = helpers.run(["--save-directory", str(tmp_path / "sd"), "--backup", "--subset", "x"],
                         input=b"/etc/hostname\0")
    assert result.returncode == 2 and not (tmp_path / "sd").exists()


def test_savedir_is_private(tmp_path, savedir):
    assert os.stat(savedir).st_mode & 0o777 == 0o700


def test_vanished_and_unreadable_paths_are_reported_rest_saved(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "good").write_bytes(b"good data")
    paths = b"src\0src/good\0src/vanished\0"
    result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "t"],
                         input=paths, cwd=str(tmp_path))
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "src/vanished" in err and len(err.splitlines()) == 1
    backup_id = helpers.list_ids(savedir)[0]
    out = tmp_path / "out"
    helpers.extract(helpers.produce_tar(savedir, backup_id), str(out))
    assert (out / "src" / "good").read_bytes() == b"good data"


def test_unknown_backup_id_hints_recent_ids(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    good = helpers.backup(savedir, "src", cwd=str(tmp_path))
    result = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id", "nope"])
    assert result.returncode == 2 and result.stdout == b""
    assert "nope" in result.stderr.decode() and good in result.stderr.decode()
    assert "Traceback" not in result.stderr.decode()


def test_bad_options_are_one_line_exit_2(tmp_path, savedir):
    for args in (["--backup", "--list-backups"], ["--backup"], ["--compression", "lz9", "--backup",
                 "--subset", "x"], ["--bogus"]):
        result = helpers.run(["--save-directory", savedir] + args, input=b"")
        helpers.assert_one_line_error(result)


def test_socket_is_skipped_with_a_note(tmp_path, savedir):
    import socket
    src = tmp_path / "src"
    src.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    (src / "f").write_bytes(b"x")
    result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "t"],
                         input=helpers.find_print0("src", cwd=str(tmp_path)), cwd=str(tmp_path))
    sock.close()
    assert result.returncode == 0
    assert "socket ignored" in result.stderr.decode()


def test_compression_choices_all_restore(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "text").write_bytes(b"compressible text " * 20000)
    (src / "noise").write_bytes(os.urandom(100000))
    for codec in ("xz", "xz:6", "zlib", "zlib:1", "bz2", "none"):
        backup_id = helpers.backup(savedir, "src", subset=codec, cwd=str(tmp_path),
                                   extra=["--compression", codec])
        out = tmp_path / ("out-" + codec)
        helpers.extract(helpers.produce_tar(savedir, backup_id), str(out))
        helpers.assert_same_tree(str(src), str(out / "src"))


def test_version_and_help(tmp_path):
    version = helpers.run(["--version"])
    assert version.returncode == 0 and version.stdout.decode().startswith("backshift ")
    usage = helpers.run(["--help"]).stdout.decode()
    assert "--produce-tar" in usage and "find / -xdev -print0" in usage


def test_randomize_shuffles_nul_items(tmp_path):
    items = [b"item%d" % i for i in range(200)] + [b"with\nnewline"]
    data = b"".join(item + b"\0" for item in items)
    out = subprocess.run(helpers.RANDOMIZE + ["-0"], input=data, stdout=subprocess.PIPE,
                         check=True).stdout
    shuffled = out.split(b"\0")[:-1]
    assert sorted(shuffled) == sorted(items) and shuffled != items


def test_a_failing_save_directory_ends_the_backup_with_input_left(tmp_path, savedir):
    # Every object directory is a file: the first object's write fails while
    # the input thread still waits to hand over paths.  The process must
    # exit with the error (its threads stopped), not wait for them forever.
    objects = os.path.join(savedir, "objects")
    for name in os.listdir(objects):
        os.rmdir(os.path.join(objects, name))
        open(os.path.join(objects, name), "wb").close()
    # Long names: the input comes in several reads, so the input thread has
    # a batch waiting and more to hand over when the backup fails.
    deep = tmp_path / "src" / ("d" * 200)
    deep.mkdir(parents=True)
    for number in range(1000):
        (deep / ("f%04d" % number)).write_bytes(os.urandom(32 * 1024))
    result = helpers.run_process(["--save-directory", savedir, "--backup", "--subset", "x",
                                  "--compression", "none", "--no-stats"],
                                 input=helpers.find_print0("src", cwd=str(tmp_path)),
                                 cwd=str(tmp_path), timeout=120)
    assert result.returncode == 2, result.stderr
    assert b"Not a directory" in result.stderr
