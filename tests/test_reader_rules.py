"""Save directories holding crafted, hostile directory records: every reader
(restore, listing, check, verify) treats a rule broken as damage, named and
skipped, and nothing a restore writes leaves its target (FORMAT.md, "Reader
obligations")."""

import io
import os
import tarfile
from typing import List, Optional, Sequence

import pytest

import helpers
from backshift.catalog import STATE_COMPLETE, BackupRecord, utc_now
from backshift.checking import run_check
from backshift.compression import CompressionSpec, Compressor
from backshift.listing import list_backup
from backshift.records import (FLAG_INLINE, FLAG_SPARSE, KIND_DIR, KIND_FILE, KIND_HARDLINK, KIND_SYMLINK,
                               Entry, encode_entry, record_header)
from backshift.savedir import SaveDir
from backshift.recordwriter import store_top_record
from backshift.tree import TreeReader, entry_chunks

RAW = Compressor(CompressionSpec.parse("none"))
PWNED = b"written by a hostile record\n"


def file(name: bytes, data: bytes = PWNED, **fields) -> Entry:
    return Entry(name, KIND_FILE, mode=0o644, size=len(data), inline=data,
                 flags=FLAG_INLINE | fields.pop("flags", 0), **fields)


def symlink(name: bytes, target: bytes) -> Entry:
    return Entry(name, KIND_SYMLINK, mode=0o777, target=target)


def hardlink(name: bytes, target: bytes, data: bytes = PWNED) -> Entry:
    return Entry(name, KIND_HARDLINK, mode=0o644, size=len(data), inline=data, flags=FLAG_INLINE,
                 target=target, nlink=2)


def directory(objects, name: bytes, children: Sequence[Entry], flags: int = 0,
              header: Optional[bytes] = None) -> Entry:
    """A directory entry whose record (``children``) is an object of its own."""
    record = (header or record_header()) + b"".join(encode_entry(child) for child in children)
    return Entry(name, KIND_DIR, mode=0o755, flags=flags,
                 chunks=[(objects.put(record, RAW), len(record))])


def publish(savedir: str, objects, children: Sequence[Entry]) -> str:
    """A complete backup whose root directory holds ``children``; its id."""
    root = directory(objects, b"", children)
    record = BackupRecord("20260101T000000Z-crafted-test-0000", "crafted", "test", utc_now())
    record.root = store_top_record(objects, RAW, root)
    record.state = STATE_COMPLETE
    record.finished = utc_now()
    SaveDir(savedir, "test").catalog.write(record)
    return record.backup_id


def hostile_tree(objects, outside: str) -> List[Entry]:
    """One of each rule broken (comments: the path reported), among entries that are fine."""
    away = os.fsencode(outside)
    return [
        file(b"ok", b"fine\n", nlink=2),
        directory(objects, b"d", [
            file(b""), file(b"."), file(b".."), file(b"a/b"),           # d/, d/., d/.., d/a/b
            directory(objects, b"..\0", [file(b"escape")]),              # d/..\0
            directory(objects, b"sub/..\0", [file(b"escape")]),          # d/sub/..\0
        ]),
        symlink(b"l", away),
        file(b"l/x"),                                                    # l/x
        symlink(b"s", away),
        directory(objects, b"s", [file(b"x")]),                          # s: second entry
        directory(objects, b"t", [file(b"y", b"y\n")]),
        symlink(b"t", away),                                             # t: second entry
        directory(objects, b"t", [file(b"z", b"z\n")]),                  # a fragment: merged
        hardlink(b"h1", b"../" + os.path.basename(away) + b"/x"),         # h1: climbs out
        hardlink(b"h2", b"l/x"),            # through a symlink: written as a file, not damage
        hardlink(b"h3", b"ok"),             # a file written earlier: a real link
        Entry(b"k", b"z", mode=0o644),                                   # k: unknown kind
        file(b"f", flags=0x80),                                          # f: unknown flag
        directory(objects, b"v", [file(b"w")], header=b"BSDR\x02\0\0\0"),  # v: record version
    ]


DAMAGED = ["d/", "d/.", "d/..", "d/a/b", "d/..\\000", "d/sub/..\\000", "l/x", "s", "t", "h1",
           "k", "f", "v"]
MEMBERS = {".", "ok", "d", "l", "s", "t", "t/y", "t/z", "h1", "h2", "h3", "v"}


@pytest.fixture
def hostile(tmp_path, savedir):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x").write_bytes(b"precious\n")
    objects = SaveDir(savedir, "test").objects
    backup_id = publish(savedir, objects, hostile_tree(objects, str(outside)))
    return savedir, backup_id, outside


def damage_lines(stderr: bytes) -> List[str]:
    text = stderr.decode("utf-8", "replace")
    assert "Traceback" not in text, text
    return text.splitlines()


def assert_each_damage_named_once(lines: List[str]) -> None:
    damaged = [line for line in lines if ": damaged: " in line]
    assert len(damaged) == len(DAMAGED), lines
    for path in DAMAGED:
        assert sum(line.startswith("backshift: %s: damaged: " % path) for line in damaged) == 1, \
            (path, lines)


def test_produce_tar_skips_every_broken_rule_and_names_it(hostile):
    savedir, backup_id, _outside = hostile
    result = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id", backup_id])
    assert result.returncode == 1
    assert_each_damage_named_once(damage_lines(result.stderr))
    members = tarfile.open(fileobj=io.BytesIO(result.stdout)).getmembers()
    names = [member.name.rstrip("/") for member in members]
    assert sorted(names) == sorted(MEMBERS)
    by_name = {member.name.rstrip("/"): member for member in members}
    assert by_name["h3"].islnk() and by_name["h3"].linkname == "ok"
    assert by_name["h1"].isreg() and by_name["h2"].isreg()
    assert by_name["s"].issym() and by_name["t"].isdir()


@pytest.mark.parametrize("extractor", ["gnu tar", "bsdtar", "tarfile data filter",
                                       "tarfile unfiltered"])
def test_restore_of_a_hostile_tree_writes_nothing_outside_its_target(hostile, tmp_path,
                                                                     extractor):
    savedir, backup_id, outside = hostile
    stream = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id",
                          backup_id]).stdout
    before = sorted(os.listdir(tmp_path))
    dest = tmp_path / "restored"
    dest.mkdir()
    if extractor == "gnu tar":
        helpers.extract(stream, str(dest))
    elif extractor == "bsdtar":
        helpers.extract(stream, str(dest), ("bsdtar", "-xpf", "-"))
    else:
        with tarfile.open(fileobj=io.BytesIO(stream)) as archive:
            if extractor == "tarfile data filter" and hasattr(tarfile, "data_filter"):
                # The filter refuses the symlinks that point away (legitimate
                # content): skipped, not fatal.
                archive.errorlevel = 0
                archive.extractall(str(dest), filter="data")
            else:
                archive.extractall(str(dest))
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["restored"])
    assert os.listdir(outside) == ["x"] and (outside / "x").read_bytes() == b"precious\n"
    assert (dest / "h2").read_bytes() == PWNED and not (dest / "h2").is_symlink()
    assert (dest / "t" / "z").read_bytes() == b"z\n"


def test_check_and_verify_name_every_broken_rule(hostile):
    savedir, backup_id, _outside = hostile
    for action in ("--check", "--verify"):
        result = helpers.run(["--save-directory", savedir, action])
        assert result.returncode == 1, result.stderr
        lines = damage_lines(result.stderr)
        named = [line for line in lines if line.startswith("backshift: backup %s: " % backup_id)]
        # In stored order, the first ten (checking.PATHS_SHOWN) by name, the rest counted.
        for path, line in zip(DAMAGED, named[:10]):
            assert line.startswith("backshift: backup %s: %s: " % (backup_id, path)), (path, line)
        assert named[10:] == ["backshift: backup %s: and %d more damaged entries"
                              % (backup_id, len(DAMAGED) - 10)], lines


def test_list_backup_skips_every_broken_rule(hostile):
    savedir, backup_id, _outside = hostile
    result = helpers.run(["--save-directory", savedir, "--list-backup-simply", "--backup-id",
                          backup_id])
    assert result.returncode == 1
    assert_each_damage_named_once(damage_lines(result.stderr))
    listed = result.stdout.decode().split("\n")[:-1]
    assert sorted(name.rstrip("/") for name in listed) == sorted(MEMBERS)


# Each rule broken alone, beside a file that is fine: (case, entries, path named).
CASES = {
    "empty": (lambda objects, away: [file(b"")], "./"),
    "dot": (lambda objects, away: [file(b".")], "."),
    "dotdot": (lambda objects, away: [file(b"..")], ".."),
    "slash": (lambda objects, away: [file(b"a/b")], "a/b"),
    "dotdot-nul": (lambda objects, away: [directory(objects, b"..\0", [file(b"escape")])],
                   "..\\000"),
    "sub-dotdot-nul": (lambda objects, away: [directory(objects, b"sub/..\0",
                                                        [file(b"escape")])], "sub/..\\000"),
    "symlink-then-dir": (lambda objects, away: [symlink(b"s", away),
                                                directory(objects, b"s", [file(b"x")])], "s"),
    "below-symlink": (lambda objects, away: [symlink(b"l", away), file(b"l/x")], "l/x"),
    "link-climbs-out": (lambda objects, away: [hardlink(b"h", b"../outside/x")], "h"),
    "unknown-kind": (lambda objects, away: [Entry(b"k", b"z")], "k"),
    "unknown-flag": (lambda objects, away: [file(b"f", flags=0x80)], "f"),
    "inline-and-sparse": (lambda objects, away: [file(b"p", flags=FLAG_SPARSE)], "p"),
    "record-version": (lambda objects, away: [directory(objects, b"v", [file(b"w")],
                                                        header=b"BSDR\x02\0\0\0")], "v"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_broken_rule_alone_is_damage_to_every_reader(tmp_path, savedir, case):
    build, named = CASES[case]
    objects = SaveDir(savedir, "test").objects
    backup_id = publish(savedir, objects, [file(b"fine", b"fine\n")]
                        + build(objects, os.fsencode(str(tmp_path / "outside"))))
    tar = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id", backup_id])
    listing = helpers.run(["--save-directory", savedir, "--list-backup-simply", "--backup-id",
                           backup_id])
    for result in (tar, listing):
        assert result.returncode == 1, result.stderr
        lines = damage_lines(result.stderr)
        assert len(lines) == 1 and lines[0].startswith("backshift: %s: damaged: " % named), lines
    for member in tarfile.open(fileobj=io.BytesIO(tar.stdout)).getmembers():
        parts = member.name.rstrip("/").split("/")
        assert member.name in (".", "./") or ".." not in parts and "." not in parts, member.name
        assert member.name.rstrip("/") in {".", "fine", "s", "l", "h", "v"}, member.name
    check = helpers.run(["--save-directory", savedir, "--check"])
    assert check.returncode == 1
    assert "backshift: backup %s: %s: " % (backup_id, named) in check.stderr.decode(), check.stderr


def test_check_in_process_reports_the_damage(hostile):
    savedir, backup_id, _outside = hostile
    out = io.StringIO()
    assert run_check(SaveDir(savedir, "test"), verify=False, out=out) == 1
    assert "backup %s: l/x: name contains '/'" % backup_id in out.getvalue()


def test_expire_keeps_objects_under_entries_the_rules_reject(tmp_path, savedir):
    """Marking walks loosely: an object only a rejected entry names is kept, and a
    broken rule does not stop expiry from removing what no backup refers to."""
    store = SaveDir(savedir, "test")
    tree = [entry for entry in hostile_tree(store.objects, str(tmp_path))
            if entry.name != b"v"]  # an unreadable record would rightly block expiry
    backup_id = publish(savedir, store.objects, tree)
    record = store.catalog.read(backup_id)
    reader = TreeReader(store.objects)

    def digests(strict: bool) -> set:
        return {digest for _path, entry in reader.walk(record.root, include_implicit=True,
                                                       strict=strict,
                                                       on_damage=lambda path, reason: None)
                for digest, _length in entry_chunks(entry)}

    under_rejected = digests(False) - digests(True)
    assert under_rejected  # the records of the second "s", of d/..\0 and d/sub/..\0
    orphan = store.objects.put(b"referred to by no backup", RAW)
    then = 1_000_000_000
    for dirpath, _dirnames, names in os.walk(os.path.join(savedir, "objects")):
        for name in names:
            os.utime(os.path.join(dirpath, name), (then, then))
    result = helpers.run(["--save-directory", savedir, "--expire", "--max-age", "100y"])
    assert result.returncode == 0, result.stderr
    assert not store.objects.exists(orphan)
    assert all(store.objects.exists(digest) for digest in under_rejected)


def test_walker_in_memory_merges_fragments_and_keeps_the_first_of_a_name():
    objects = helpers.MemoryObjects()
    root = directory(objects, b"", [
        directory(objects, b"a", [file(b"one", b"1")]),
        file(b"b", b"first"),
        file(b"b", b"second"),             # a different entry of a name used: damage
        file(b"b", b"first"),              # the first again, byte for byte: harmless
        directory(objects, b"a", [file(b"two", b"2"), file(b"one", b"other")]),
    ])
    top = store_top_record(objects, RAW, root)
    damage = []
    walked = [(path, entry.kind, entry.inline) for path, entry in TreeReader(objects).walk(
        top, on_damage=lambda path, reason: damage.append((path, reason)))]
    assert walked == [(b"", KIND_DIR, None), (b"a", KIND_DIR, None),
                      (b"a/one", KIND_FILE, b"1"), (b"a/two", KIND_FILE, b"2"),
                      (b"b", KIND_FILE, b"first")]
    assert damage == [(b"a/one", "a second entry of this name"),
                      (b"b", "a second entry of this name")]
    out = io.BytesIO()
    list_backup(TreeReader(objects), top, b"a", out, simply=True,
                on_damage=lambda path, reason: None)
    assert out.getvalue() == b"a/\na/one\na/two\n"


def test_a_directory_record_past_its_streaming_flush_walks_whole():
    """RecordWriter flushes chunks as a record passes 2 * 256 KiB; the walker
    reads such a record chunk by chunk, entries straddling chunks."""
    from backshift.chunking import METADATA_PARAMS, Chunker
    from backshift.recordwriter import RecordWriter
    objects = helpers.MemoryObjects()
    writer = RecordWriter(objects, Chunker(METADATA_PARAMS), RAW)
    names = [b"file-%06d-%s" % (number, b"x" * (number % 40)) for number in range(12000)]
    for name in names:
        writer.add(Entry(name, KIND_FILE, mode=0o644, size=1, inline=b"a", flags=FLAG_INLINE))
    chunks = writer.finish()
    assert sum(length for _digest, length in chunks) > 2 * METADATA_PARAMS.max_size
    assert len(chunks) > 8
    top = store_top_record(objects, RAW, Entry(b"", KIND_DIR, mode=0o755, chunks=chunks))
    damage = []
    walked = [path for path, _entry in TreeReader(objects).walk(
        top, on_damage=lambda path, reason: damage.append(path))]
    assert walked == [b""] + names and damage == []
