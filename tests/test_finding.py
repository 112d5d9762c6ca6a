"""Issue 12: 'latest', the order of backups, --find, --diff, listings for people and scripts, JSON.

Every backup is made by bin/backshift from a real tree; find and diff are
run through the command line, and once in-process to count the directory
records they read.
"""

import base64
import fnmatch
import json
import os
import pty
import subprocess

import pytest

import helpers
from backshift.catalog import Catalog
from backshift.diffing import diff
from backshift.finding import find
from backshift.objectstore import ObjectStore
from backshift.tree import TreeReader



def same_second(tenth: int) -> list:
    """A clock that starts ``tenth`` tenths of a second past noon and runs a
    hundred times slower than real time: backups run under it start in the
    same second, in the order of ``tenth``."""
    return ["faketime", "-f", "@2026-01-01 12:00:00.%d x0.01" % tenth]


def _write(path, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def _lines(args) -> list:
    return helpers.run_ok(args).stdout.splitlines()


def test_latest_and_order_of_backups_started_in_the_same_second(savedir, tmp_path):
    src = str(tmp_path / "src")
    made = []  # (id, host, subset), in the order they ran
    for number, (host, subset) in enumerate([("alpha", "s1"), ("beta", "s1"), ("alpha", "s2"),
                                              ("beta", "s2"), ("alpha", "s1"), ("beta", "s2")]):
        _write(os.path.join(src, "marker"), b"%d" % number)
        before = set(helpers.list_ids(savedir))
        result = subprocess.run(same_second(number) + helpers.BACKSHIFT + [
            "--save-directory", savedir, "--backup", "--subset", subset, "--hostname", host,
            "--no-fsync", "--settle-time", "0"], input=helpers.find_print0("src", str(tmp_path)),
            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        new_id, = set(helpers.list_ids(savedir)) - before
        made.append((new_id, host, subset))
    assert len({backup_id[:16] for backup_id, _, _ in made}) == 1  # all in one second
    base = ["--save-directory", savedir]
    # Listed by exact start time, not by id (the ids differ only in random tails).
    listed = [line.split(b"\t")[0].decode() for line in _lines(base + ["--list-backups"])]
    assert listed == [backup_id for backup_id, _, _ in made]
    # --hostname and --subset filter the listing.
    alpha = [line.split(b"\t")[:3] for line in _lines(base + ["--list-backups", "--hostname",
                                                              "alpha"])]
    assert [fields[0].decode() for fields in alpha] == \
        [backup_id for backup_id, host, _ in made if host == "alpha"]
    assert _lines(base + ["--list-backups", "--hostname", "beta", "--subset", "s2",
                          "--last-n", "1"])[0].startswith(made[5][0].encode())

    def latest(*filters: str) -> str:
        line, = _lines(base + ["--find", "/src/marker", "--json", "--backup-id", "latest"]
                       + list(filters))
        return json.loads(line)["backup"]

    assert latest() == made[5][0]
    assert latest("--hostname", "alpha") == made[4][0]
    assert latest("--subset", "s2", "--hostname", "alpha") == made[2][0]
    assert latest("--subset", "s1", "--hostname", "beta") == made[1][0]
    # The same choice restores: the marker of the newest alpha backup.
    tar = helpers.run_ok(base + ["--produce-tar", "--backup-id", "latest", "--hostname", "alpha",
                                 "--starting-directory", "src/marker"]).stdout
    marker = subprocess.run(["tar", "-xOf", "-"], input=tar, stdout=subprocess.PIPE,
                            check=True).stdout
    assert marker == b"4"
    helpers.assert_one_line_error(helpers.run(base + ["--list-backup", "--backup-id", "latest",
                                                      "--hostname", "gamma"]),
                                  "no complete backup", "gamma")
    # An id that is not of the host asked for is refused, not listed.
    helpers.assert_one_line_error(helpers.run(base + ["--list-backup", "--backup-id", made[0][0],
                                                      "--hostname", "beta"]), made[0][0])


def _three_backups(savedir, tmp_path):
    """A notes file appears, changes and disappears; keep/same.txt never changes."""
    src = str(tmp_path / "src")
    _write(os.path.join(src, "keep", "same.txt"), b"same\n")
    _write(os.path.join(src, "deep", "a", "notes.txt"), b"first\n")
    ids = [helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])]
    _write(os.path.join(src, "deep", "a", "notes.txt"), b"second version\n")
    ids.append(helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"]))
    os.unlink(os.path.join(src, "deep", "a", "notes.txt"))
    ids.append(helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"]))
    return ids


def test_find_across_backups_where_a_file_appears_changes_and_disappears(savedir, tmp_path):
    ids = _three_backups(savedir, tmp_path)
    base = ["--save-directory", savedir, "--find"]
    found = [line.split(b" ") for line in _lines(base + ["*/notes.txt"])]
    assert [(fields[0].decode(), fields[1], fields[2], fields[-1]) for fields in found] == [
        (ids[0], b"file", b"6", b"/src/deep/a/notes.txt"),
        (ids[1], b"file", b"15", b"/src/deep/a/notes.txt")]
    # '*' crosses '/', as find -path; the unchanged file is found in every backup.
    same = [line.split(b" ")[0].decode() for line in _lines(base + ["/src/*/same.txt"])]
    assert same == ids
    assert _lines(base + ["same.txt"]) == []  # the pattern matches the whole path
    assert [line.split(b" ")[-1] for line in _lines(base + ["/src/de*", "--backup-id", ids[2]])] \
        == [b"/src/deep/", b"/src/deep/a/"]


def test_find_reads_a_directory_record_once_for_many_backups(savedir, tmp_path):
    src = str(tmp_path / "src")
    for number in range(30):
        _write(os.path.join(src, "d%02d" % (number % 5), "sub", "f%02d" % number),
               b"x" * (100 * number))
    ids = [helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
           for _ in range(3)]
    catalog = Catalog(savedir, "test")
    records = catalog.records()
    assert [record.backup_id for record in records] == ids
    reader = TreeReader(ObjectStore(savedir, "test"))
    matches = []
    once = find(reader, records[:1], b"*/f1*", b"", lambda *match: matches.append(match))
    thrice = find(reader, records, b"*/f1*", b"", lambda *match: matches.append(match))
    assert once.records_read == thrice.records_read > 5
    assert len(matches) == 4 * 10


class CountingReader(TreeReader):
    """Counts the objects of directory records it reads."""

    chunks_read = 0

    def read_chunk(self, digest: bytes) -> bytes:
        self.chunks_read += 1
        return super().read_chunk(digest)


def _found(reader, records, pattern: bytes) -> list:
    matches = []
    find(reader, records, pattern, b"",
         lambda record, path, entry: matches.append((record.backup_id, path, entry.kind,
                                                     entry.size, entry.mtime_ns)))
    return matches


def test_find_reads_only_the_changed_chunks_of_a_big_directory(savedir, tmp_path):
    # 3,000 entries with long names: a record of many chunks.  Each later
    # backup changes one file, so its record differs from the earlier one
    # in a chunk or two; only those are read again.
    big = tmp_path / "src" / "big"
    big.mkdir(parents=True)
    names = ["f%04d-%s" % (number, "x" * 190) for number in range(3000)]
    for number, name in enumerate(names):
        (big / name).write_bytes(b"%d" % number)
    _write(str(big / "sub" / "README"), b"read me\n")
    ids = [helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])]
    for number in (700, 2500):
        (big / names[number]).write_bytes(b"changed %d" % number)
        ids.append(helpers.backup(savedir, "src", cwd=str(tmp_path),
                                  extra=["--settle-time", "0"]))
    records = Catalog(savedir, "test").records()
    store = ObjectStore(savedir, "test")
    big_chunks = len(TreeReader(store).lookup(records[0].root, b"src/big")[0].chunks)
    assert big_chunks >= 8
    reader = CountingReader(store)
    _found(reader, records[:1], b"*/f1*")
    first = reader.chunks_read
    _found(reader, records, b"*/f1*")
    # Per later backup: the top record, src's and big's changed chunks.
    assert reader.chunks_read - 2 * first <= 2 * 5, (reader.chunks_read, first, big_chunks)
    # What was remembered of the unchanged chunks is what reading them finds:
    # each backup searched alone, and every path of a full walk put through
    # the same pattern.
    for pattern in (b"*/f1*", b"*/README", b"*", b"/src/big/f07*"):
        together = _found(TreeReader(store), records, pattern)
        alone = [match for record in records
                 for match in _found(TreeReader(store), [record], pattern)]
        walked = [(record.backup_id, path, entry.kind, entry.size, entry.mtime_ns)
                  for record in records
                  for path, entry in TreeReader(store).walk(record.root)
                  if fnmatch.fnmatchcase(b"/" + path, pattern)]
        assert together == alone == walked, pattern
        assert together
    changed = [match for match in _found(TreeReader(store), records, b"*/f0700-*")]
    assert [size for _id, _path, _kind, size, _mtime in changed] == [3, 11, 11]


def _diff_lines(savedir, old, new, *extra):
    result = helpers.run_ok(["--save-directory", savedir, "--diff", old, new] + list(extra))
    return [tuple(line.split(b"\t")) for line in result.stdout.splitlines()]


def test_diff_reports_each_kind_of_change(savedir, tmp_path):
    src = str(tmp_path / "src")
    srcb = os.fsencode(src)
    for name in ("keep.txt", "content.txt", "meta.txt", "gone.txt", "olddir/inner/f",
                 "olddir/g", "same/a", "same/b/c"):
        _write(os.path.join(src, name), b"data of " + name.encode())
    os.symlink("keep.txt", os.path.join(src, "link"))
    first = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
    _write(os.path.join(src, "content.txt"), b"new data")
    os.chmod(os.path.join(src, "meta.txt"), 0o600)
    os.unlink(os.path.join(src, "gone.txt"))
    _write(os.path.join(src, "new.txt"), b"added")
    os.rename(os.path.join(src, "olddir"), os.path.join(src, "newdir"))
    _write(os.path.join(srcb, b"caf\xe9"), b"latin-1 name")
    os.unlink(os.path.join(src, "link"))
    os.symlink("new.txt", os.path.join(src, "link"))
    second = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
    lines = _diff_lines(savedir, first, second)
    assert sorted(lines) == sorted([
        (b"m", b"src/"), (b"M", b"src/content.txt"), (b"m", b"src/meta.txt"),
        (b"-", b"src/gone.txt"), (b"+", b"src/new.txt"), (b"M", b"src/link"),
        (b"-", b"src/olddir/"), (b"-", b"src/olddir/inner/"), (b"-", b"src/olddir/inner/f"),
        (b"-", b"src/olddir/g"), (b"+", b"src/newdir/"), (b"+", b"src/newdir/inner/"),
        (b"+", b"src/newdir/inner/f"), (b"+", b"src/newdir/g"), (b"+", b"src/caf\\351")])
    # A directory comes before what is in it.
    assert lines.index((b"-", b"src/olddir/")) < lines.index((b"-", b"src/olddir/inner/f"))
    assert _diff_lines(savedir, first, second, "--starting-directory", "src/newdir/inner") == \
        [(b"+", b"src/newdir/inner/"), (b"+", b"src/newdir/inner/f")]
    assert _diff_lines(savedir, second, first, "--starting-directory", "src/same") == []
    # Backwards, what was added is removed.
    assert (b"-", b"src/caf\\351") in _diff_lines(savedir, second, first)


def test_diff_skips_directories_whose_records_are_the_same(savedir, tmp_path):
    src = str(tmp_path / "src")
    for number in range(20):
        _write(os.path.join(src, "d%d" % (number % 4), "f%d" % number), b"%d" % number)
    first = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
    _write(os.path.join(src, "d1", "f1"), b"changed")
    second = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
    catalog = Catalog(savedir, "test")
    reader = TreeReader(ObjectStore(savedir, "test"))
    changes = []
    differ = diff(reader, catalog.read(first), catalog.read(second), b"",
                  lambda *change: changes.append(change[:2]))
    assert changes == [("M", b"src/d1/f1")]  # d1 itself did not change
    # The root, src and d1 in each backup; d0, d2 and d3 are never read.
    assert differ.records_read == 6
    same = diff(reader, catalog.read(second), catalog.read(second), b"", changes.append)
    assert same.records_read == 0


def _name(document: dict, key: str = "path") -> bytes:
    if key + "_b64" in document:
        return base64.b64decode(document[key + "_b64"])
    return document[key].encode("utf-8")


def test_json_lines_round_trip_names_as_bytes(savedir, tmp_path):
    src = tmp_path / "src"
    helpers.make_hostile_tree(str(src))
    result = helpers.run_ok(["--save-directory", savedir, "--backup", "--subset", "j",
                             "--hostname", "h", "--json", "--no-fsync"],
                            input=helpers.find_print0("src", str(tmp_path)), cwd=str(tmp_path))
    totals = json.loads(result.stdout)
    backup_id = helpers.list_ids(savedir)[0]
    assert totals["id"] == backup_id and totals["errors"] == 0
    assert totals["files"] == helpers.read_record(savedir, backup_id)["files"] > 10
    assert totals["bytes_read"] > 3 * 1024 * 1024 and totals["seconds"] >= 0
    assert set(totals) >= {"id", "files", "bytes_read", "bytes_added", "seconds", "errors"}
    expected = {b"/" + os.path.relpath(os.path.join(top, name), os.fsencode(str(tmp_path)))
                for top, dirs, files in os.walk(os.fsencode(str(src)))
                for name in dirs + files} | {b"/src"}
    listed = [json.loads(line) for line in
              _lines(["--save-directory", savedir, "--list-backup", "--backup-id", backup_id,
                      "--json"])]
    assert {_name(document) for document in listed} == expected
    bad = next(doc for doc in listed if _name(doc) == b"/src/bad\xff\xfename")
    assert bad["path"] == "/src/bad\ufffd\ufffdname" and bad["type"] == "file"
    assert bad["size"] == len(b"not utf-8")
    link = next(doc for doc in listed if _name(doc) == b"/src/link-to-plain")
    assert link["type"] == "symlink" and _name(link, "target") == b"plain.txt"
    found = [json.loads(line) for line in
             _lines(["--save-directory", savedir, "--find", "/src/[bn][ae][dw]?*", "--json"])]
    assert {_name(doc) for doc in found} == {b"/src/bad\xff\xfename", b"/src/new\nline"}
    assert {doc["backup"] for doc in found} == {backup_id}
    backups = [json.loads(line) for line in
               _lines(["--save-directory", savedir, "--list-backups", "--json"])]
    assert [(doc["id"], doc["hostname"], doc["subset"], doc["state"]) for doc in backups] == \
        [(backup_id, "h", "j", "complete")]


def test_list_backups_for_people_and_for_scripts(savedir, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"12345")
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path),
                               extra=["--hostname", "my host\tx"])
    line, = _lines(["--save-directory", savedir, "--list-backups"])
    fields = line.decode().split("\t")
    assert fields[:3] == [backup_id, "my host\\tx", "test"] and fields[5:7] == ["1", "5"]
    # On a terminal: a header and aligned columns.
    master, slave = pty.openpty()
    proc = subprocess.Popen(helpers.BACKSHIFT + ["--save-directory", savedir,
                                                 "--list-backups"], stdout=slave,
                            stderr=subprocess.PIPE)
    os.close(slave)
    shown = b"".join(data for _when, data in helpers.read_terminal(master))
    assert proc.wait(timeout=60) == 0
    header, row = shown.decode().splitlines()
    assert header.split() == ["ID", "HOST", "SUBSET", "STARTED", "FINISHED", "FILES", "SIZE",
                              "ADDED"]
    assert row.index("my host") == header.index("HOST") and " 5 B " in row
    assert row.index(" test ") + 1 == header.index("SUBSET")


@pytest.mark.parametrize("args, words", [
    (["--list-backups", "--tar-format", "pax"], ("--tar-format", "--list-backups")),
    (["--backup", "--subset", "x", "--starting-directory", "/etc"], ("--starting-directory",)),
    (["--check", "--hostname", "h"], ("--hostname", "--check")),
    (["--diff", "a", "b", "--json"], ("--json", "--diff")),
    (["--produce-tar", "--backup-id", "x", "--last-n", "2"], ("--last-n",)),
])
def test_options_that_do_not_apply_are_an_error(savedir, args, words):
    helpers.assert_one_line_error(helpers.run(["--save-directory", savedir] + args), *words)
