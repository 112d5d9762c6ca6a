"""checking, listing and progress called in-process on save directories made
by the real program (bin/backshift as a subprocess), asserting on what they print."""

import io
import os
import types

import helpers
from backshift.checking import run_check
from backshift.estimate import PER_FILE_BYTES
from backshift.listing import backup_fields, list_backup, list_backups
from backshift.progress import ProgressReporter, make_reporter
from backshift.report import Reporter
from backshift.savedir import SaveDir
from backshift.tree import TreeReader


def make_tree(top: str) -> None:
    helpers.write(os.path.join(top, "d", "big.bin"), os.urandom(700 * 1024))
    helpers.write(os.path.join(top, "d", "sub", "small"), b"small\n")
    helpers.write(os.path.join(top, "new\nline"), b"odd name\n")
    os.symlink("d/sub/small", os.path.join(top, "link"))


def saved_tree(savedir: str, tmp_path) -> str:
    make_tree(str(tmp_path / "src"))
    return helpers.backup(savedir, "src", cwd=str(tmp_path))


def test_check_and_verify_in_process_find_a_missing_object(savedir, tmp_path):
    backup_id = saved_tree(savedir, tmp_path)
    store = SaveDir(savedir, "test")
    for verify in (False, True):
        out = io.StringIO()
        assert run_check(store, verify, out) == 0 and out.getvalue() == ""
    (entry,) = TreeReader(store.objects).lookup(store.catalog.read(backup_id).root,
                                                b"src/d/big.bin")
    digest = entry.chunks[0][0]
    os.unlink(store.objects.path_of(digest))
    out = io.StringIO()
    assert run_check(SaveDir(savedir, "test"), False, out) == 1
    report = out.getvalue()
    assert "object %s: missing" % digest.hex() in report
    assert "damages backup %s: src/d/big.bin" % backup_id in report
    assert "1 damaged backups" in report and "Traceback" not in report


def test_listing_in_process_matches_find_and_the_record(savedir, tmp_path):
    backup_id = saved_tree(savedir, tmp_path)
    store = SaveDir(savedir, "test")
    record = store.catalog.read(backup_id)
    out = io.BytesIO()
    list_backup(TreeReader(store.objects), record.root, b"", out, simply=True)
    listed = out.getvalue().splitlines()
    found = [path for path in helpers.find_print0("src", cwd=str(tmp_path)).split(b"\0") if path]
    # Directories end in "/"; the newline in a name is quoted, as tar quotes it.
    expected = sorted((path + b"/" if os.path.isdir(os.path.join(tmp_path, os.fsdecode(path)))
                       and not os.path.islink(os.path.join(tmp_path, os.fsdecode(path)))
                       else path).replace(b"\n", b"\\n") for path in found)
    assert sorted(listed) == expected
    out = io.BytesIO()
    list_backup(TreeReader(store.objects), record.root, b"src/d", out)
    long_lines = out.getvalue().splitlines()
    big = [line for line in long_lines if line.endswith(b" src/d/big.bin")]
    assert len(big) == 1 and big[0].startswith(b"-rw") and b" %d " % (700 * 1024) in big[0]
    assert all(b"src/d" in line for line in long_lines) and len(long_lines) == 4
    out = io.BytesIO()
    list_backups(list(store.catalog.records()), out)
    fields = out.getvalue().decode().splitlines()[0].split("\t")
    assert out.getvalue().decode().count("\n") == 1
    assert fields == list(backup_fields(record))
    assert fields[0] == backup_id and fields[5] == str(record.files)
    assert fields[7] == str(record.bytes_added) and record.bytes_added > 0


def test_progress_in_process_weighs_real_files(tmp_path):
    make_tree(str(tmp_path / "src"))
    paths = [path for path in helpers.find_print0(str(tmp_path / "src")).split(b"\0") if path]
    now = [100.0]
    stream = io.StringIO()
    reporter = ProgressReporter(stream, "full", clock=lambda: now[0])
    inhaled = reporter.inhale(paths)
    assert list(inhaled) == paths and len(inhaled) == len(paths) == 7
    sizes = 700 * 1024 + len(b"small\n") + len(b"odd name\n")
    assert reporter.total_bytes == sizes  # regular files only, by lstat
    assert "backshift: 7 paths to back up\n" in stream.getvalue()
    assert reporter.eta(now[0]) is None  # no store to follow yet
    store = types.SimpleNamespace(handed_bytes=0, written_bytes=0, waited=0.0,
                                  store_seconds=0.0, cores=1, max_bytes=64 << 20)
    reporter.watch(store)
    assert reporter.eta(now[0]) is None  # no pace measured yet
    now[0] += 10
    store.handed_bytes = store.written_bytes = 700 * 1024
    store.store_seconds = 2.0
    reporter.file_done(paths[0], 700 * 1024)
    # One file of 700 KiB in 10 s cannot tell the cost per file from the
    # cost per byte: a file counts as PER_FILE_BYTES of data.  The store,
    # 2 s for 700 KiB, keeps up: the rest is the reader's time for 6 files
    # and 15 bytes.
    per_byte = 10 / (700 * 1024 + PER_FILE_BYTES)
    expected = (6 * PER_FILE_BYTES + sizes - 700 * 1024) * per_byte
    assert abs(reporter.eta(now[0]) - expected) < 1e-6
    line = reporter.status_line(now[0])
    assert "1/7 files" in line and "ETA " in line
    reporter.finish()
    assert stream.getvalue().endswith("\n")
    quiet, inhale = make_reporter("none", io.StringIO())
    assert type(quiet) is Reporter and not inhale
    moderate, inhale = make_reporter("moderate", io.StringIO())
    assert isinstance(moderate, ProgressReporter) and inhale
    moderate.inhale(paths)
    assert moderate.total_bytes is None and moderate.total_files == 7
