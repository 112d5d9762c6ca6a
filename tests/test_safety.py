"""Issue 4 items 6 and 7: race-safe reading; nothing written outside the save directory."""

import os
import subprocess
import sys
import threading

from helpers import (BACKSHIFT, SECRET, all_stored_bytes, assert_same_tree, extract, find_print0,
                     list_ids, produce_tar, read_record, run, run_process, wait_until)

from backshift.sourcefs import SourceError, SourceTree


def make_foreign(tmp_path) -> str:
    elsewhere = str(tmp_path / "elsewhere")
    os.makedirs(elsewhere)
    with open(os.path.join(elsewhere, "secret"), "wb") as handle:
        handle.write(SECRET)
    return elsewhere


def test_directory_component_that_is_a_symlink_is_refused(savedir, tmp_path):
    elsewhere = make_foreign(tmp_path)
    os.makedirs(str(tmp_path / "src"))
    with open(str(tmp_path / "src" / "ok"), "wb") as handle:
        handle.write(b"ordinary file")
    # The input names src/dir/secret as if src/dir were a directory; it is a
    # symlink (as after a swap between find and backshift).
    os.symlink(elsewhere, str(tmp_path / "src" / "dir"))
    paths = b"src\0src/ok\0src/dir/secret\0"
    result = run(["--save-directory", savedir, "--backup", "--subset", "s", "--no-fsync"],
                 input=paths, cwd=str(tmp_path))
    assert result.returncode == 1
    err = result.stderr.decode(errors="replace")
    assert "src/dir/secret" in err and "symlink" in err
    assert err.count("\n") == 1  # one clear line
    assert b"FOREIGN-SECRET" not in all_stored_bytes(savedir)
    listing = run(["--save-directory", savedir, "--list-backup-simply", "--backup-id",
                   list_ids(savedir)[0]]).stdout
    assert listing.split() == [b"src/", b"src/ok"]


def test_symlink_swapped_in_during_backup_never_leaks(savedir, tmp_path):
    # A directory flips between itself and a symlink to a directory whose
    # files have the same names, while real backup processes read it.
    elsewhere = str(tmp_path / "elsewhere")
    src = str(tmp_path / "src")
    os.makedirs(os.path.join(src, "d"))
    os.makedirs(elsewhere)
    for n in range(300):
        with open(os.path.join(src, "d", "f%03d" % n), "wb") as handle:
            handle.write(b"own data %d\n" % n)
        with open(os.path.join(elsewhere, "f%03d" % n), "wb") as handle:
            handle.write(SECRET)
    paths = find_print0("src", cwd=str(tmp_path))
    stop = threading.Event()
    flips = [0]

    def flip() -> None:
        real, aside = os.path.join(src, "d"), os.path.join(src, "d.aside")
        while not stop.is_set():
            os.rename(real, aside)
            os.symlink(elsewhere, real)
            os.unlink(real)
            os.rename(aside, real)
            flips[0] += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _ in range(4):
            # A process of its own: the flips race it on another core.
            result = run_process(["--save-directory", savedir, "--backup", "--subset", "race",
                                  "--no-fsync"], input=paths, cwd=str(tmp_path))
            assert result.returncode in (0, 1), result.stderr.decode(errors="replace")
            assert "Traceback" not in result.stderr.decode(errors="replace")
    finally:
        stop.set()
        flipper.join()
    assert flips[0] > 10
    assert b"FOREIGN-SECRET" not in all_stored_bytes(savedir)


def test_file_replaced_between_lstat_and_open_is_skipped(tmp_path):
    # Deterministic: the real SourceTree on real files, the swap done between its calls.
    top = tmp_path / "src"
    top.mkdir()
    (top / "f").write_bytes(b"original")
    (tmp_path / "other").write_bytes(SECRET)
    tree = SourceTree()
    try:
        path = os.fsencode(str(top / "f"))
        st = tree.lstat(path)
        os.rename(str(tmp_path / "other"), str(top / "f"))
        try:
            tree.open_file(path, st)
        except SourceError as exc:
            assert "replaced" in str(exc)
        else:
            raise AssertionError("a replaced file was opened")
        # Replaced by a symlink: never followed.
        st = tree.lstat(path)
        os.unlink(str(top / "f"))
        os.symlink(str(tmp_path / "elsewhere-file"), str(top / "f"))
        (tmp_path / "elsewhere-file").write_bytes(SECRET)
        try:
            tree.open_file(path, st)
        except SourceError:
            pass
        else:
            raise AssertionError("a symlink was followed")
    finally:
        tree.close()


def test_file_growing_while_read_is_reported(savedir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "before").write_bytes(b"saved before")
    (src / "zz-after").write_bytes(b"saved after")
    grow = src / "growing"
    with open(str(grow), "wb") as handle:
        for _ in range(12):
            handle.write(os.urandom(1 << 20).hex().encode())  # 24 MiB: read for a while
    size = os.path.getsize(str(grow))
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "with open(sys.argv[1], 'ab', buffering=0) as f:\n"
        "    while True:\n"
        "        f.write(b'appended line\\n'); time.sleep(0.005)\n"), str(grow)])
    try:
        wait_until(lambda: os.path.getsize(str(grow)) > size, what="the writer to append")
        paths = b"src\0src/before\0src/growing\0src/zz-after\0"
        result = run(["--save-directory", savedir, "--backup", "--subset", "g", "--no-fsync",
                      "--compression", "zlib:1"], input=paths, cwd=str(tmp_path))
    finally:
        writer.kill()
        writer.wait()
    assert result.returncode == 1, result.stderr.decode(errors="replace")
    err = result.stderr.decode(errors="replace")
    assert "src/growing: file changed as we read it" in err
    backup_id = list_ids(savedir)[0]
    record = read_record(savedir, backup_id)
    assert record["state"] == "complete" and record["errors"] == 1 and record["files"] == 3
    dest = str(tmp_path / "restored")
    extract(produce_tar(savedir, backup_id), dest)
    assert open(os.path.join(dest, "src", "before"), "rb").read() == b"saved before"
    assert open(os.path.join(dest, "src", "zz-after"), "rb").read() == b"saved after"
    saved = open(os.path.join(dest, "src", "growing"), "rb").read()
    assert len(saved) >= 24 << 20
    assert open(str(grow), "rb").read(len(saved)) == saved  # what it held when opened


def _state(top: str):
    """Every entry's type, size and times (access time included) below ``top``."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames + ["."]:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            result[full] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                            st.st_atime_ns if not os.path.isdir(full) else None)
    return result


def test_nothing_written_outside_the_save_directory(savedir, tmp_path):
    src = str(tmp_path / "src")
    os.makedirs(os.path.join(src, "sub"))
    for n in range(20):
        with open(os.path.join(src, "sub" if n % 2 else "", "f%d" % n), "wb") as handle:
            handle.write(os.urandom(100 + n * 5000))
    os.symlink("f0", os.path.join(src, "link"))
    cwd, scratch = str(tmp_path / "cwd"), str(tmp_path / "scratch")
    os.makedirs(cwd)
    os.makedirs(scratch)
    listing = str(tmp_path / "paths")
    with open(listing, "wb") as handle:
        handle.write(find_print0(src))
    before = _state(src)
    env = dict(os.environ, TMPDIR=scratch, HOME=scratch)
    for _ in range(2):  # a first and an incremental backup
        result = subprocess.run(BACKSHIFT + ["--save-directory", savedir, "--backup",
                                             "--subset", "quiet", "--filelist", listing,
                                             "--checkpoint-interval", "0.01"],
                                cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert result.stdout == b"" and result.stderr == b""
    assert _state(src) == before  # not even an access time moved
    assert os.listdir(cwd) == [] and os.listdir(scratch) == []
    dest = str(tmp_path / "restored")
    extract(produce_tar(savedir, list_ids(savedir)[-1]), dest)
    assert_same_tree(src, os.path.join(dest, os.path.relpath(src, "/")))
