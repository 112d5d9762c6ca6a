"""Re-backups of unchanged trees (the speed work of raw entry reuse, inline
directory records, the ParentCache chain, batched ReadAhead and PackCache).

Everything runs the real command line on real trees, fed by real
``find -print0`` (or by hand-made inputs in odd orders), and is restored
through GNU tar (and bsdtar).  The fast path of a re-backup must never be
taken when something about a file changed: each change below is one that
keeps the size (and, where it can, the mtime) and must still show.
"""

import datetime
import io
import os
import random
import shutil
import subprocess
from typing import Dict, List, Sequence

import pytest

import helpers
from backshift import readahead
from backshift.backup import DIR_INLINE_MAX, PACK_FILE_MAX, Backup, BackupOptions
from backshift.report import Reporter
from backshift.objectstore import ObjectStore, digest_of
from backshift.readahead import ReadAhead
from backshift.records import FLAG_INLINE, KIND_DIR, KIND_FILE
from backshift.savedir import SaveDir
from backshift.sourcefs import ParentCache
from backshift.tarout import produce_tar
from helpers import (HOURS_AGO_2, KIB, NO_SETTLE, SECRET, FedBackup, age_files, all_stored_bytes,
                     object_digests, pack_of, restore, tree_entries, wait_until, write)


def backup_paths(savedir: str, paths: Sequence[bytes], cwd: str, extra: Sequence[str] = ()) -> str:
    """Back up exactly ``paths`` (an input written by hand, not find's); the backup id."""
    before = set(helpers.list_ids(savedir))
    result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "test",
                          "--no-fsync"] + list(extra), input=b"".join(path + b"\0" for path in paths), cwd=cwd)
    assert result.returncode == 0 and not result.stderr, result.stderr.decode(errors="replace")
    new = sorted(set(helpers.list_ids(savedir)) - before)
    assert len(new) == 1, new
    return new[0]


def find_paths(top: str, cwd: str) -> List[bytes]:
    return [path for path in helpers.find_print0(top, cwd=cwd).split(b"\0") if path]


def listing(savedir: str, backup_id: str, *extra: str) -> List[bytes]:
    return helpers.run_ok(["--save-directory", savedir, "--list-backup", "--backup-id",
                           backup_id] + list(extra)).stdout.splitlines()


def listed_line(lines: List[bytes], name: bytes) -> bytes:
    found = [line for line in lines if line.endswith(b" " + name)]
    assert len(found) == 1, (name, lines)
    return found[0]


# -- 1. unchanged files and symlinks reused as raw bytes ----------------------

def test_rebackup_after_changes_that_keep_sizes_restores_exactly(savedir, tmp_path):
    src = tmp_path / "src"
    (src / "same").mkdir(parents=True)
    (src / "xdir").mkdir()
    (src / "xkeep").mkdir()
    sizes: Dict[str, int] = {}

    def make(name: str, size: int) -> None:
        write(str(src / name), os.urandom(size))
        sizes[name] = size

    for n in range(40):  # unchanged: the fast path
        make("same/s%02d" % n, 100 + 53 * n)
    make("same/big.bin", 300 * KIB)  # chunked, not packed
    make("same/tiny", 12)  # inline
    for name in ("chmod", "chown", "rewritten", "rewritten-old-mtime", "replaced", "touched",
                 "xattr-changed", "xattr-kept"):
        make(name, 1000)
    os.setxattr(str(src / "xattr-changed"), "user.note", b"first")
    os.setxattr(str(src / "xattr-kept"), "user.note", b"kept as it was")
    os.setxattr(str(src / "xdir"), "user.note", b"dir first")
    os.setxattr(str(src / "xkeep"), "user.note", b"dir kept")
    for name in ("target-A", "target-B"):
        make(name, 10)
    os.symlink("target-A", str(src / "link"))  # retargeted: same length
    os.symlink("target-B", str(src / "link-kept"))
    make("pair-1", 3000)
    os.link(str(src / "pair-1"), str(src / "pair-2"))  # two links: never the fast path
    first_id = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    first = helpers.read_record(savedir, first_id)
    assert first["files_reused"] == 0 and first["bytes_read"] == sum(sizes.values())

    # Changes that keep every size, each one that a re-backup must notice.
    os.chmod(str(src / "chmod"), 0o600)
    os.chown(str(src / "chown"), 12345, 12345)
    st = os.stat(str(src / "rewritten"))
    write(str(src / "rewritten"), os.urandom(1000))  # new mtime
    assert os.stat(str(src / "rewritten")).st_mtime_ns != st.st_mtime_ns
    st = os.stat(str(src / "rewritten-old-mtime"))
    write(str(src / "rewritten-old-mtime"), os.urandom(1000))
    os.utime(str(src / "rewritten-old-mtime"), ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime only
    st = os.stat(str(src / "replaced"))
    write(str(tmp_path / "replacement"), os.urandom(1000))
    os.utime(str(tmp_path / "replacement"), ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(str(tmp_path / "replacement"), str(src / "replaced"))
    assert os.stat(str(src / "replaced")).st_ino != st.st_ino
    subprocess.run(["touch", "-m", str(src / "touched")], check=True)  # content as it was
    os.setxattr(str(src / "xattr-changed"), "user.note", b"other")  # same length
    os.setxattr(str(src / "xdir"), "user.note", b"dir other")
    subprocess.run(["ln", "-sfn", "target-B", str(src / "link")], check=True)
    changed = ["chmod", "chown", "rewritten", "rewritten-old-mtime", "replaced", "touched",
               "xattr-changed"]

    second_id = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    second = helpers.read_record(savedir, second_id)
    # Read again: exactly the changed files.  Reused without reading: every
    # other regular file of one link (fast path), and the first link of
    # the pair (the general path; the second link is a hard link entry).
    regular = [name for name in sizes if name != "pair-1"]
    assert second["bytes_read"] == sum(sizes[name] for name in changed)
    assert second["files_reused"] == len(regular) - len(changed) + 1
    assert second["bytes_reused"] == sum(sizes.values()) - sum(sizes[n] for n in changed)
    assert second["files"] == first["files"] and second["errors"] == 0

    dest = str(tmp_path / "restored")
    stream = helpers.produce_tar(savedir, second_id, ["--tar-format", "pax"])
    helpers.extract(stream, dest, ("tar", "--xattrs", "--xattrs-include=user.*",
                                   "--numeric-owner", "-xpf", "-"))
    restored = os.path.join(dest, "src")
    helpers.assert_same_tree(str(src), restored)
    assert os.stat(os.path.join(restored, "chmod")).st_mode & 0o777 == 0o600
    owner = os.stat(os.path.join(restored, "chown"))
    assert (owner.st_uid, owner.st_gid) == (12345, 12345)
    kept = os.stat(os.path.join(restored, "same", "s00"))
    assert (kept.st_uid, kept.st_gid) == (os.getuid(), os.getgid())
    assert os.readlink(os.path.join(restored, "link")) == "target-B"
    assert os.readlink(os.path.join(restored, "link-kept")) == "target-B"
    assert os.getxattr(os.path.join(restored, "xattr-changed"), "user.note") == b"other"
    assert os.getxattr(os.path.join(restored, "xattr-kept"), "user.note") == b"kept as it was"
    assert os.getxattr(os.path.join(restored, "xdir"), "user.note") == b"dir other"
    assert os.getxattr(os.path.join(restored, "xkeep"), "user.note") == b"dir kept"
    assert os.stat(os.path.join(restored, "pair-1")).st_ino == \
        os.stat(os.path.join(restored, "pair-2")).st_ino

    # The owner shows as numbers where the system has no name for it.
    tar_list = subprocess.run(["tar", "-tvf", "-", "--numeric-owner"], input=stream,
                              stdout=subprocess.PIPE, check=True).stdout.splitlines()
    assert b" 12345/12345 " in listed_line(tar_list, b"src/chown")
    assert b" 12345/12345 " in listed_line(listing(savedir, second_id), b"src/chown")
    assert b" 12345/12345 " not in listed_line(listing(savedir, first_id), b"src/chown")

    # --no-inode-check: what was settled is reused; what changed just before
    # the second backup began (inside its guard) and one file touched now
    # are read again.  The guard is chosen between the last change made
    # before the first backup and the first change made for the second.
    def last_change(name: str) -> int:
        st = os.lstat(str(src / name))
        return max(st.st_mtime_ns, st.st_ctime_ns)
    newest_settled = max(last_change(name) for name in regular if name not in changed)
    oldest_changed = min(last_change(name) for name in changed)
    assert newest_settled < oldest_changed
    started = datetime.datetime.strptime(second["started"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)
    started_ns = int(started.timestamp()) * 10**9 + started.microsecond * 1000
    guard = ["--settle-time", "%.6f" % ((started_ns - (newest_settled + oldest_changed) // 2) / 1e9)]
    subprocess.run(["touch", "-m", str(src / "same" / "s07")], check=True)
    third_id = helpers.backup(savedir, "src", cwd=str(tmp_path),
                              extra=["--no-inode-check"] + guard)
    third = helpers.read_record(savedir, third_id)
    again = changed + ["same/s07"]
    assert third["bytes_read"] == sum(sizes[name] for name in again)
    assert third["files_reused"] == len(regular) - len(again) + 1
    dest = str(tmp_path / "restored-3")
    restore(savedir, third_id, dest, ["--tar-format", "pax"])
    helpers.assert_same_tree(str(src), os.path.join(dest, "src"))


def make_twins(x: str, y: str, x_data: bytes, y_data: bytes, y_mode: int = 0o644,
               owners: Sequence[int] = (0, 0)) -> None:
    """Files at ``x`` and ``y`` with the same size, mtime and ctime (the kernel's
    coarse clock tick) but their own inodes, contents, modes and owners."""
    for _attempt in range(100):
        write(x, x_data)
        write(y, y_data)
        os.chmod(y, y_mode)
        os.chown(x, owners[0], owners[0])
        os.chown(y, owners[1], owners[1])
        os.utime(x, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))  # sets the ctimes:
        os.utime(y, ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))  # one tick, most often
        if os.stat(x).st_ctime_ns == os.stat(y).st_ctime_ns:
            return
        os.unlink(x)  # new inodes next time: one whose ctime was looked at
        os.unlink(y)  # may get a fine-grained ctime at its next change
    raise AssertionError("could not give two files the same ctime")


def test_a_symlink_with_equal_times_but_another_target_is_read_again(savedir, tmp_path):
    # Even without the inode check, a symlink whose target length differs
    # from the earlier entry's is not taken from it.
    x, y = tmp_path / "x" / "src", tmp_path / "y" / "src"
    x.mkdir(parents=True)
    y.mkdir(parents=True)
    stamp = (1_600_000_000 * 10**9, 1_600_000_000 * 10**9)
    for _attempt in range(100):
        os.symlink("target-A", str(x / "link"))
        os.symlink("target-BB", str(y / "link"))
        os.utime(str(x / "link"), ns=stamp, follow_symlinks=False)
        os.utime(str(y / "link"), ns=stamp, follow_symlinks=False)
        if os.lstat(str(x / "link")).st_ctime_ns == os.lstat(str(y / "link")).st_ctime_ns:
            break
        os.unlink(str(x / "link"))
        os.unlink(str(y / "link"))
    else:
        raise AssertionError("could not give two symlinks the same ctime")
    helpers.backup(savedir, "src", cwd=str(tmp_path / "x"), extra=NO_SETTLE)
    second = helpers.backup(savedir, "src", cwd=str(tmp_path / "y"),
                            extra=("--no-inode-check",) + NO_SETTLE)
    listing = helpers.run_ok(["--save-directory", savedir, "--list-backup",
                              "--backup-id", second]).stdout
    assert b"src/link -> target-BB" in listing, listing


def test_a_twin_tree_with_equal_times_is_told_apart(savedir, tmp_path):
    # x/src and y/src: the same names, mtimes and (for most files) sizes
    # and ctimes.  Backed up under the same relative name "src", y's files
    # meet x's entries: only what differs besides the times can tell.
    # (A directory renamed over another does this too: renaming a
    # directory changes no ctime of the files in it.)
    x, y = tmp_path / "x" / "src", tmp_path / "y" / "src"
    same = os.urandom(2000)
    make_twins(str(x / "inode"), str(y / "inode"), os.urandom(2000), os.urandom(2000))
    make_twins(str(x / "mode"), str(y / "mode"), same, same, y_mode=0o600)
    # Owners without names (so the names, both empty, cannot tell).
    make_twins(str(x / "owner"), str(y / "owner"), same, same, owners=(12345, 12346))
    make_twins(str(x / "same"), str(y / "same"), same, same)
    make_twins(str(x / "size"), str(y / "size"), same, same + b"!")
    write(str(x / "ctime"), os.urandom(2000))  # same mtime, a later ctime
    os.utime(str(x / "ctime"), ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    write(str(y / "ctime"), os.urandom(2000))

    def later_ctime() -> bool:  # the clock ticks: setting the times again sets a later ctime
        os.utime(str(y / "ctime"), ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
        return os.stat(str(x / "ctime")).st_ctime_ns != os.stat(str(y / "ctime")).st_ctime_ns
    wait_until(later_ctime, what="a later ctime")
    for subset in ("checked", "unchecked"):
        helpers.backup(savedir, "src", subset=subset, cwd=str(tmp_path / "x"), extra=NO_SETTLE)

    checked = helpers.backup(savedir, "src", subset="checked", cwd=str(tmp_path / "y"),
                             extra=NO_SETTLE)
    record = helpers.read_record(savedir, checked)
    assert record["files_reused"] == 0 and record["bytes_read"] == 6 * 2000 + 1  # other inodes
    dest = str(tmp_path / "restored-checked")
    helpers.extract(helpers.produce_tar(savedir, checked), dest,
                    ("tar", "--numeric-owner", "-xpf", "-"))
    helpers.assert_same_tree(str(y), os.path.join(dest, "src"))
    assert os.stat(os.path.join(dest, "src", "owner")).st_uid == 12346

    # Without the inode check the contents of "inode" and "same" are taken
    # from x (what --no-inode-check trades away); "mode" and "owner" keep
    # x's content, which is theirs too, but not x's mode or owner; "size"
    # and "ctime" are read again.
    unchecked = helpers.backup(savedir, "src", subset="unchecked", cwd=str(tmp_path / "y"),
                               extra=("--no-inode-check",) + NO_SETTLE)
    record = helpers.read_record(savedir, unchecked)
    assert record["files_reused"] == 4 and record["bytes_read"] == 2000 + 2001
    dest = str(tmp_path / "restored-unchecked")
    helpers.extract(helpers.produce_tar(savedir, unchecked), dest,
                    ("tar", "--numeric-owner", "-xpf", "-"))
    restored = os.path.join(dest, "src")
    for name in ("mode", "owner", "same", "ctime", "size"):
        with open(os.path.join(restored, name), "rb") as mine, open(str(y / name), "rb") as his:
            assert mine.read() == his.read(), name
    with open(os.path.join(restored, "inode"), "rb") as mine, \
            open(str(x / "inode"), "rb") as his:
        assert mine.read() == his.read()
    assert os.stat(os.path.join(restored, "mode")).st_mode & 0o777 == 0o600
    owner = os.stat(os.path.join(restored, "owner"))
    assert (owner.st_uid, owner.st_gid) == (12346, 12346)
    assert b" 12346/12346 " in listed_line(listing(savedir, unchecked), b"src/owner")


# -- 2. small directory records inline in their parent's ---------------------

DIRECTORIES = 300


@pytest.fixture(scope="module")
def inline_tree(tmp_path_factory):
    """A settled tree of many small directories and one first backup of it.

    src/dNNN: 300 directories of 2 or 3 small files; src/mix: a big
    directory (its record over DIR_INLINE_MAX) under a small one and a
    small one under a big one.
    """
    top = tmp_path_factory.mktemp("inline")
    src = top / "src"
    for d in range(DIRECTORIES):
        for f in range(2 + d % 2):
            write(str(src / ("d%03d" % d) / ("f%d" % f)), os.urandom(60 + (d * 7 + f) % 500))
    write(str(src / "mix" / "small" / "big" / "content"), b"under a small directory\n" * 9)
    helpers.outgrow_inline_record(str(src / "mix" / "small" / "big"))
    write(str(src / "mix" / "big" / "small" / "content"), b"under a big directory\n" * 9)
    helpers.outgrow_inline_record(str(src / "mix" / "big"))
    os.symlink("../d000/f0", str(src / "mix" / "small" / "link"))
    savedir = str(top / "savedir")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    backup_id = helpers.backup(savedir, "src", cwd=str(top))
    return top, savedir, backup_id


def test_small_directories_are_inline_and_cost_no_objects(inline_tree):
    top, savedir, backup_id = inline_tree
    entries = tree_entries(savedir, backup_id)
    inline = {path for path, entry in entries.items()
              if entry.kind == KIND_DIR and entry.flags & FLAG_INLINE}
    stored = {path for path, entry in entries.items()
              if entry.kind == KIND_DIR and not entry.flags & FLAG_INLINE}
    assert inline == {b"src/d%03d" % d for d in range(DIRECTORIES)} | {
        b"src/mix", b"src/mix/small", b"src/mix/big/small", b""}
    # Stored as objects of their own: src (300 inline records make it about
    # 130 KiB) and the two big directories; the root's record is inline in
    # the top record.
    assert stored == {b"src", b"src/mix/small/big", b"src/mix/big"}
    for path in inline:
        assert not entries[path].chunks and len(entries[path].inline) <= DIR_INLINE_MAX
    # Objects: the top record (the root's record inline in it), src's record
    # (about 150 KiB, holding the 300 inline records, in metadata chunks of
    # at least 16 KiB: at most 9), the two big records, and the 250 KiB of
    # small files in one pack: 13 at most.  One object per directory, as
    # before inline records, would be over 300.
    count = len(object_digests(savedir))
    assert count < 14, count


def test_records_of_tens_of_kib_are_inline_up_to_the_top_record(savedir, tmp_path):
    # 300 empty files: a record of about 30 KiB, held in its parent's, which
    # is held in the top record.  The whole backup is that one object.
    src = tmp_path / "src"
    for n in range(300):
        write(str(src / "medium" / ("file-%03d" % n)), b"")
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    entries = tree_entries(savedir, backup_id)
    medium = entries[b"src/medium"]
    assert medium.flags & FLAG_INLINE and 16 * KIB < len(medium.inline) <= DIR_INLINE_MAX
    assert all(entries[path].flags & FLAG_INLINE for path in (b"", b"src"))
    root = SaveDir(savedir, "test").catalog.read(backup_id).root
    assert [digest.hex() for digest, _length in root] == sorted(object_digests(savedir))
    dest = str(tmp_path / "restored")
    restore(savedir, backup_id, dest)
    helpers.assert_same_tree(str(src), os.path.join(dest, "src"))


def test_inline_tree_restores_through_gnu_tar_and_bsdtar(inline_tree, tmp_path):
    top, savedir, backup_id = inline_tree
    stream = helpers.produce_tar(savedir, backup_id)
    for tar in (("tar", "xpf", "-"), ("bsdtar", "-xpf", "-")):
        dest = str(tmp_path / tar[0])
        helpers.extract(stream, dest, tar)
        helpers.assert_same_tree(str(top / "src"), os.path.join(dest, "src"))


def test_inline_tree_lists_and_restores_from_an_inline_directory(inline_tree, tmp_path):
    top, savedir, backup_id = inline_tree
    lines = listing(savedir, backup_id)
    names = [line.split(b" ")[-1] for line in lines if b" -> " not in line]
    expected = sorted(os.fsencode(os.path.relpath(os.path.join(dirpath, name), str(top)))
                      + (b"/" if name in dirnames else b"")
                      for dirpath, dirnames, filenames in os.walk(str(top / "src"))
                      for name in dirnames + filenames if name != "link")
    assert sorted(names) == sorted(expected + [b"src/"])
    assert b"src/mix/small/link -> ../d000/f0" in listed_line(lines, b"../d000/f0")
    assert listing(savedir, backup_id, "--starting-directory", "src/d123") == \
        [line for line in lines if b" src/d123/" in line or line.endswith(b" src/d123/")]
    for start in ("src/d123", "src/mix/big/small", "src/mix/small"):
        dest = str(tmp_path / start.replace("/", "-"))
        restore(savedir, backup_id, dest, ["--starting-directory", start])
        helpers.assert_same_tree(str(top / start), os.path.join(dest, start))
    simple = helpers.run_ok(["--save-directory", savedir, "--list-backup-simply", "--backup-id",
                             backup_id, "--starting-directory", "src/mix/small",
                             "--nonrecursive"]).stdout.split()
    assert sorted(simple) == [b"src/mix/small/", b"src/mix/small/big/",
                              b"src/mix/small/link"]


def test_inline_tree_checks_and_verifies(inline_tree):
    _top, savedir, _backup_id = inline_tree
    for action in ("--check", "--verify"):
        result = helpers.run(["--save-directory", savedir, action])
        assert result.returncode == 0, result.stderr.decode(errors="replace")


def test_expiring_the_first_backup_keeps_all_the_second_needs(inline_tree, tmp_path):
    top, original, _first = inline_tree
    savedir = str(tmp_path / "savedir")
    shutil.copytree(original, savedir)
    # The second backup reuses every settled entry (files pointing into the
    # first backup's packs, directory records rebuilt inline from them) and
    # adds a new directory of its own.
    for d in range(5):
        write(str(top / "new" / ("n%d" % d) / "file"), os.urandom(300 + d))
    second = backup_paths(savedir, find_paths("src", str(top)) + find_paths("new", str(top)),
                          str(top), NO_SETTLE)
    record = helpers.read_record(savedir, second)
    # Counted in files but not reused: the five new files and the symlink.
    assert record["files_reused"] == record["files"] - 6 and record["bytes_read"] == 1510
    # Every object old: only the walk of the second backup's tree (through
    # its inline records) keeps what it needs, not the grace period.
    age_files(os.path.join(savedir, "objects"), HOURS_AGO_2)
    before = object_digests(savedir)
    result = helpers.run(["--save-directory", savedir, "--expire", "--max-age", "0s",
                          "--keep-last", "1"])
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert helpers.list_ids(savedir) == [second]
    assert object_digests(savedir) < before  # the first backup's own records went
    for action in ("--check", "--verify"):
        result = helpers.run(["--save-directory", savedir, action])
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    dest = str(tmp_path / "restored")
    restore(savedir, second, dest)
    helpers.assert_same_tree(str(top / "src"), os.path.join(dest, "src"))
    helpers.assert_same_tree(str(top / "new"), os.path.join(dest, "new"))


# -- 3. the ParentCache chain, fed in odd orders ------------------------------

def make_branchy_tree(top: str) -> None:
    """Files at several depths, siblings at every level, one file outside."""
    for path in ("a/f1", "a/f2", "a/b/c/d/deep", "a/b/c/d2/deep2", "a/b/side", "a/e/g",
                 "ab/k", "a.b/l", "h/i", "top-file"):  # "ab" and "a.b": "a" is a prefix
        write(os.path.join(top, "src", path), ("content of %s\n" % path).encode() * 5)
    os.symlink("../h/i", os.path.join(top, "src", "a", "up-link"))
    write(os.path.join(top, "outside"), SECRET)


@pytest.mark.parametrize("top", ["src", "./src", "src/", "src//"])
def test_find_input_spelled_any_way_restores_the_tree(savedir, tmp_path, top):
    make_branchy_tree(str(tmp_path))
    paths = find_paths(top, str(tmp_path))
    if top == "src//":
        assert b"src//a/f1" in paths  # as find spells it
    backup_id = backup_paths(savedir, paths, str(tmp_path))
    dest = str(tmp_path / "restored")
    restore(savedir, backup_id, dest)
    assert sorted(os.listdir(dest)) == ["src"]
    helpers.assert_same_tree(str(tmp_path / "src"), os.path.join(dest, "src"))
    assert SECRET not in all_stored_bytes(savedir)


def test_absolute_find_input_restores_the_tree(savedir, tmp_path):
    make_branchy_tree(str(tmp_path))
    top = str(tmp_path / "src")
    backup_id = backup_paths(savedir, find_paths(top, "/"), "/")
    dest = str(tmp_path / "restored")
    restore(savedir, backup_id, dest, ["--starting-directory", top])
    helpers.assert_same_tree(top, os.path.join(dest, top.lstrip("/")))
    assert SECRET not in all_stored_bytes(savedir)


def test_input_that_leaves_directories_and_comes_back(savedir, tmp_path):
    make_branchy_tree(str(tmp_path))
    paths = [b"src", b"src/a", b"src/a/f1", b"src/h", b"src//h/i",
             b"src/a/b/c/d/deep", b"src/a/b", b"src/a/b/c", b"src/a/b/c/d",  # dirs after files
             b"src/top-file",  # up four levels at once
             b"./src/a/b/c/d2", b"src/a/b/c/d2/deep2",  # back down, spelled otherwise
             b"src/a/e/", b"src/a/e/g", b"src/a/b/side",  # back into a directory left
             b"src/a/f2", b"src/a/up-link", b"./src/a/e/g",  # g twice: saved once
             b"src/ab", b"src/ab/k", b"src/a/b", b"src/a.b/l", b"src/a.b"]
    backup_id = backup_paths(savedir, paths, str(tmp_path))
    dest = str(tmp_path / "restored")
    restore(savedir, backup_id, dest)
    # Directory mtimes aside: tar sets them as it leaves a directory, and
    # files met after coming back change them again.
    helpers.assert_same_tree(str(tmp_path / "src"), os.path.join(dest, "src"), dir_mtimes=False)
    names = helpers.run_ok(["--save-directory", savedir, "--list-backup-simply", "--backup-id",
                            backup_id]).stdout.split(b"\n")
    # Listed twice, saved once: a name appears once in its directory, in
    # all its fragments together (FORMAT.md, "Names").
    assert names.count(b"src/a/e/g") == 1
    assert SECRET not in all_stored_bytes(savedir)


def deep_chain(top: str, levels: int) -> List[str]:
    """src/A/x0/x1/.../x<levels-1>, with a file and a side directory at each level."""
    chain = [os.path.join(top, "src", "A")]
    for level in range(levels):
        chain.append(os.path.join(chain[-1], "x%d" % level))
    for level, directory in enumerate(chain):
        write(os.path.join(directory, "file"), b"level %d\n" % level)
        write(os.path.join(directory, "side", "s"), b"side of level %d\n" % level)
    return chain


def test_tree_deeper_than_the_descriptors_held(savedir, tmp_path):
    levels = ParentCache.MAX_HELD + 6
    deep_chain(str(tmp_path), levels)
    write(str(tmp_path / "src" / "B" / "after"), b"a sibling of A, after the deep chain\n")
    paths = find_paths("src", str(tmp_path))
    # Also an order find never gives: the deepest file, then each level's
    # side directory from the top down (up the whole chain, then down).
    deepest = [path for path in paths if path.endswith(b"/file")][-1]
    sides = sorted((path for path in paths if b"/side" in path), key=len)
    ids = []
    for order in (paths, [b"src", deepest] + sides + [b"src/B", b"src/B/after"]):
        backup_id = backup_paths(savedir, order, str(tmp_path))
        ids.append(backup_id)
        listed = helpers.run_ok(["--save-directory", savedir, "--list-backup-simply",
                                 "--backup-id", backup_id]).stdout.split(b"\n")
        assert sorted(path for path in listed if path and not path.endswith(b"/")) == \
            sorted(path for path in order if path.endswith((b"/file", b"/s", b"/after")))
    dest = str(tmp_path / "restored")
    restore(savedir, ids[0], dest)
    helpers.assert_same_tree(str(tmp_path / "src"), os.path.join(dest, "src"))


def make_swap_target(top: str, names: Sequence[str]) -> str:
    """A directory outside the tree with the same names, every file secret."""
    elsewhere = os.path.join(top, "elsewhere")
    for name in names:
        write(os.path.join(elsewhere, name), SECRET)
    return elsewhere


def swap_for_symlink(directory: str, target: str) -> None:
    os.rename(directory, directory + ".aside")
    os.symlink(target, directory)


def big_content(label: str) -> bytes:
    """Content of a file big enough (over PACK_FILE_MAX) to be stored as its own
    object as soon as it is read: that object appearing shows the file was handled."""
    return label.encode() + os.urandom(PACK_FILE_MAX + 4 * KIB)


def feed_until_read(running: FedBackup, savedir: str, paths: Sequence[bytes],
                    content: bytes) -> None:
    """Feed ``paths`` and wait until the file with ``content`` has been read and stored."""
    running.feed(b"".join(path + b"\0" for path in paths))
    objects = ObjectStore(savedir, "test")
    wait_until(lambda: objects.exists(digest_of(content)), timeout=30)


def test_ancestor_swapped_for_a_symlink_while_its_other_subtree_is_still_to_come(
        savedir, tmp_path):
    # src/A/B/C/f is read; then src/A, two levels above C, becomes a symlink
    # to a directory with the same names; then src/A/D (a sibling subtree
    # of B) comes.  The backup reaches D only from the A it opened.
    for path in ("A/D/g", "A/D/E/h"):
        write(str(tmp_path / "src" / path), ("own %s\n" % path).encode())
    content = big_content("own A/B/C/f")
    write(str(tmp_path / "src" / "A" / "B" / "C" / "f"), content)
    elsewhere = make_swap_target(str(tmp_path), ["D/g", "D/E/h", "B/C/f"])
    running = FedBackup(savedir, tmp_path)
    feed_until_read(running, savedir, [b"src", b"src/A", b"src/A/B", b"src/A/B/C",
                                       b"src/A/B/C/f"], content)
    swap_for_symlink(str(tmp_path / "src" / "A"), elsewhere)
    status, err = running.finish(b"src/A/D\0src/A/D/g\0src/A/D/E\0src/A/D/E/h\0")
    assert status == 0 and b"Traceback" not in err, err
    assert SECRET not in all_stored_bytes(savedir)
    dest = str(tmp_path / "restored")
    restore(savedir, helpers.list_ids(savedir)[0], dest)
    # What was saved is the directory that was verified, now moved aside.
    helpers.assert_same_tree(str(tmp_path / "src" / "A.aside"), os.path.join(dest, "src", "A"))


def test_ancestor_swap_above_the_descriptors_held_is_refused(savedir, tmp_path):
    # The same swap when the chain below A is deeper than MAX_HELD: A's
    # descriptor was let go, so the way to A/side is walked again from
    # the top, meets the symlink, and is refused.
    chain = deep_chain(str(tmp_path), ParentCache.MAX_HELD + 2)
    content = big_content("the deepest")
    write(os.path.join(chain[-1], "marker"), content)
    elsewhere = make_swap_target(str(tmp_path), ["side/s", "file"])
    paths = find_paths("src", str(tmp_path))
    marker = os.fsencode(os.path.relpath(os.path.join(chain[-1], "marker"), str(tmp_path)))
    later = [path for path in paths if path.startswith(b"src/A/side")]
    earlier = [path for path in paths if path not in later and path != marker] + [marker]
    running = FedBackup(savedir, tmp_path)
    feed_until_read(running, savedir, earlier, content)  # the chain is at its deepest
    swap_for_symlink(chain[0], elsewhere)
    status, err = running.finish(b"".join(path + b"\0" for path in later))
    assert status == 1, err
    assert b"src/A/side" in err and b"symlink" in err and b"Traceback" not in err, err
    assert SECRET not in all_stored_bytes(savedir)


# -- 4. ReadAhead: batches, yet a slow input followed path by path ------------

def test_slow_input_is_followed_path_by_path(savedir, tmp_path):
    contents = [big_content("file %d" % n) for n in range(6)]
    for n, content in enumerate(contents):
        write(str(tmp_path / "src" / ("d%d" % (n % 2)) / ("f%d" % n)), content)
    running = FedBackup(savedir, tmp_path)
    running.feed(b"src\0src/d0\0src/d1\0")
    for n, content in enumerate(contents):
        # One path, then a pause: it is read before the next one is written
        # (not held back for a batch, nor for the read-ahead's lookahead).
        feed_until_read(running, savedir, [b"src/d%d/f%d" % (n % 2, n)], content)
    status, err = running.finish()
    assert status == 0, err
    backup_id = helpers.list_ids(savedir)[0]
    record = helpers.read_record(savedir, backup_id)
    assert record["state"] == "complete" and record["files"] == len(contents)
    dest = str(tmp_path / "restored")
    restore(savedir, backup_id, dest)
    # Directory mtimes aside: the input went back and forth between d0 and d1.
    helpers.assert_same_tree(str(tmp_path / "src"), os.path.join(dest, "src"), dir_mtimes=False)


@pytest.mark.parametrize("count", [0, 1, 1000])
def test_read_ahead_passes_every_path_in_order(tmp_path, count):
    names = [os.fsencode(str(tmp_path / ("f%04d" % n))) for n in range(count)]
    for name in names[:50]:
        write(os.fsdecode(name), b"x" * 100)  # some real files to give hints for
    reader = ReadAhead()
    assert list(reader.paths(iter(names))) == names
    for thread in reader._threads:
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_read_ahead_raises_an_input_error_after_the_paths_before_it():
    names = [b"path %d" % n for n in range(1000)]

    def failing():
        yield from names
        raise OSError("input went away")
    got = []
    with pytest.raises(OSError, match="input went away"):
        for path in ReadAhead(depth=16).paths(failing()):
            got.append(path)
    assert got == names


def test_no_read_ahead_hints_while_the_backup_reads_nothing(savedir, tmp_path):
    files = 3000
    for n in range(files):
        write(str(tmp_path / "src" / ("d%02d" % (n // 100)) / ("f%04d" % n)), b"y" * (50 + n % 90))
    paths = find_paths(str(tmp_path / "src"), str(tmp_path))

    def run_backup() -> Backup:
        backup = Backup(SaveDir(savedir, "host", durable=False),
                        BackupOptions("s", "host", settle_ns=0),
                        Reporter(io.StringIO()))
        backup.run(iter(paths))
        return backup
    # Hints stop once the backup has gone ``depth`` paths without reading
    # one.  Not none at all: ReadAhead starts out as if the backup reads,
    # so the paths taken before that (a batch taken, the feed behind it,
    # and what the input thread holds: about 2 * depth) are still hinted;
    # but those do not grow with the tree.
    bound = 3 * readahead.READAHEAD_PATHS
    first = run_backup()
    assert first.record.bytes_read > 0 and first.readahead.advised > max(bound, files // 2)
    second = run_backup()
    assert second.record.files_reused == files and second.record.bytes_read == 0
    assert second.readahead.advised <= bound


# -- 5. restores keep recent packs (PackCache and the mirrored plan) ----------

DIRS = 200


class CountingObjects(ObjectStore):
    """The real object store, noting every object read (from any thread)."""

    def __init__(self, savedir: str, hostname: str) -> None:
        super().__init__(savedir, hostname)
        self.read: List[bytes] = []

    def get(self, digest: bytes, verify: bool = True) -> bytes:
        self.read.append(digest)
        return super().get(digest, verify)


def test_identical_small_files_in_many_directories_restore_identically(savedir, tmp_path):
    # Each directory: one content shared by all (packed once per few packs:
    # later copies point back into an earlier pack), and a unique file
    # large enough that packs are cut every few directories.
    rng = random.Random(5)  # the same packs every run
    common = rng.randbytes(3000)
    src = tmp_path / "src"
    for d in range(DIRS):
        write(str(src / ("d%03d" % d) / "common"), common)
        write(str(src / ("d%03d" % d) / "own"), rng.randbytes(200 * KIB + d))
        write(str(src / ("d%03d" % d) / ("same-%d" % (d % 5))), b"one of five %d\n" % (d % 5) * 30)
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    entries = tree_entries(savedir, backup_id)
    packs_of_common = {pack_of(entries[b"src/d%03d/common" % d]) for d in range(DIRS)}
    packs = {pack_of(entry) for entry in entries.values() if entry.kind == KIND_FILE}
    assert len(packs) > 8  # more than a restore keeps decompressed at once
    # Packed again only after its pack fell out of the recent few: far fewer
    # copies than directories, and some pointing back past their neighbours.
    assert 1 < len(packs_of_common) < len(packs)
    assert any(pack_of(entries[b"src/d%03d/common" % d]) != pack_of(entries[b"src/d%03d/own" % d])
               for d in range(DIRS))
    for tar in (("tar", "xpf", "-"), ("bsdtar", "-xpf", "-")):
        dest = str(tmp_path / ("restored-" + tar[0]))
        helpers.extract(helpers.produce_tar(savedir, backup_id), dest, tar)
        helpers.assert_same_tree(str(src), os.path.join(dest, "src"))
    # Every copy points at most a few packs back, and a restore keeps more
    # than that decompressed: with the prefetch plan in step with the
    # writer's cache, each pack is read and decompressed exactly once.
    objects = CountingObjects(savedir, "test")
    out = io.BytesIO()
    produce_tar(objects, SaveDir(savedir, "test").catalog.read(backup_id).root, b"", out)
    assert sorted(digest for digest in objects.read if digest in packs) == sorted(packs)
    helpers.extract(out.getvalue(), str(tmp_path / "in-process"))
    helpers.assert_same_tree(str(src), str(tmp_path / "in-process" / "src"))


FILES = 4000


def test_thousands_of_small_files_from_old_and_new_packs_restore_identically(savedir, tmp_path):
    rng = random.Random(6)  # the same packs every run
    src = tmp_path / "src"
    for n in range(FILES):
        write(str(src / ("d%02d" % (n % 80)) / ("f%04d" % n)), rng.randbytes(3000 + n % 12000))
    os.link(str(src / "d00" / "f0000"), str(src / "d79" / "link-to-f0000"))
    first = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    # Every third file rewritten: the second backup's directories mix files
    # reused from the first backup's packs with files in packs of its own,
    # so its restore goes back and forth between many packs.
    for n in range(1, FILES, 3):  # f0000 has two links: left as it was
        write(str(src / ("d%02d" % (n % 80)) / ("f%04d" % n)), rng.randbytes(3000 + n % 11900))
    second = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    record = helpers.read_record(savedir, second)
    assert record["files_reused"] == FILES - len(range(1, FILES, 3))
    entries = tree_entries(savedir, second)
    first_packs = {pack_of(entry) for entry in tree_entries(savedir, first).values()
                   if entry.kind == KIND_FILE}
    second_packs = {pack_of(entry) for entry in entries.values() if entry.kind == KIND_FILE}
    assert len(first_packs & second_packs) > 8 and len(second_packs - first_packs) > 1
    dest = str(tmp_path / "restored")
    restore(savedir, second, dest)
    helpers.assert_same_tree(str(src), os.path.join(dest, "src"))
    # A subtree holding the second link of a file whose first link is not
    # in it: the link is written with its data (a pack the plan never saw).
    for start in ("src/d79", "src/d17"):
        dest = str(tmp_path / start.replace("/", "-"))
        restore(savedir, second, dest, ["--starting-directory", start])
        helpers.assert_same_tree(str(tmp_path / start), os.path.join(dest, start))
