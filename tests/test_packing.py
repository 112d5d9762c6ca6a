"""Small files packed together (packing.py; FORMAT.md, "Directory records" and "Packs").

The Packer is driven directly with an in-memory Store (the ``put`` callable
it takes), and checked against the cut rule as FORMAT.md states it.  The
rest runs the real command line on real trees and restores through GNU tar.
"""

import hashlib
import io
import os
import random
import subprocess
import tarfile
import time
from typing import Dict, List, Optional, Set, Tuple

import pytest

import helpers
from helpers import KIB, NO_SETTLE, object_digests, pack_of, restore, tree_entries, write
from backshift.compression import CompressionSpec, Compressor
from backshift.packing import Packer, PackParams
from backshift.records import (FLAG_INLINE, FLAG_PACKED, KIND_DIR, KIND_FILE, KIND_HARDLINK,
                               Entry, RecordError, decode_entry, encode_entry, iter_entries,
                               record_header)
from backshift.savedir import SaveDir


# -- the Packer, with an in-memory store -------------------------------------

class MemoryStore:
    """The Store callable a Packer takes: keeps every object put, in order."""

    def __init__(self) -> None:
        self.objects: Dict[bytes, bytes] = {}
        self.order: List[bytes] = []

    def __call__(self, data: bytes, compressor: Compressor) -> bytes:
        digest = hashlib.blake2b(data, digest_size=32).digest()
        self.objects[digest] = bytes(data)
        self.order.append(bytes(data))
        return digest


class Harness:
    """A Packer, its store, and every entry handed to it with its content."""

    def __init__(self, params: Optional[PackParams] = None) -> None:
        self.store = MemoryStore()
        self.cuts = 0
        self.added: List[Tuple[Entry, bytes]] = []
        self.packer = Packer(self.store, Compressor(CompressionSpec.parse("none")),
                             self._on_cut, params)

    def _on_cut(self) -> None:
        self.cuts += 1
        # Told only once every entry handed over so far has its reference.
        for entry, _content in self.added:
            assert len(entry.chunks) == 1, entry

    def add(self, content: bytes, name: Optional[bytes] = None) -> Tuple[Entry, bool]:
        entry = Entry(name or b"f%d" % len(self.added), KIND_FILE, size=len(content))
        self.added.append((entry, content))
        return entry, self.packer.add(entry, content)

    def cut_points(self) -> List[int]:
        """Indexes (into ``added``) of the last entry of each pack stored, in order."""
        last: Dict[bytes, int] = {}
        for index, (entry, _content) in enumerate(self.added):
            last[entry.chunks[0][0]] = index
        return sorted(last.values())

    def assert_resolved(self) -> None:
        for entry, content in self.added:
            assert entry.flags & FLAG_PACKED
            (digest, length), = entry.chunks
            pack = self.store.objects[digest]
            assert length == len(pack)
            assert pack[entry.offset:entry.offset + entry.size] == content, entry


def random_files(seed: int, count: int, low: int, high: int) -> List[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(low, high)) for _ in range(count)]


def format_md_packs(contents: List[bytes], params: PackParams) -> List[Tuple[bytes, str]]:
    """The packs FORMAT.md's rule makes of distinct contents, each with why it was cut."""
    packs = []
    pack, files = b"", 0
    for content in contents:
        pack += content
        files += 1
        h = int.from_bytes(hashlib.blake2b(content, digest_size=16).digest()[:4], "little")
        reason = None
        if len(pack) >= params.max_size:
            reason = "max_size"
        elif files >= params.max_files:
            reason = "max_files"
        elif len(pack) >= params.min_size and h * params.spread < len(content) * 2 ** 32:
            reason = "content"
        if reason:
            packs.append((pack, reason))
            pack, files = b"", 0
    if files:
        packs.append((pack, "end"))
    return packs


def test_default_cut_parameters_are_those_of_format_md():
    params = PackParams()
    assert (params.min_size, params.spread, params.max_size, params.max_files) == \
        (1024 * KIB, 1024 * KIB, 4096 * KIB, 8192)


def test_packs_are_cut_exactly_where_format_md_says():
    params = PackParams(min_size=16 * KIB, spread=32 * KIB, max_size=96 * KIB, max_files=40)
    contents = (random_files(1, 400, 41, 8 * KIB)
                + random_files(2, 100, 41, 60)          # tiny files: the file count binds
                + random_files(3, 12, 40 * KIB, 64 * KIB)  # large ones: the size binds
                + random_files(4, 200, 41, 8 * KIB))
    harness = Harness(params)
    for content in contents:
        harness.add(content)
    harness.packer.cut()
    expected = format_md_packs(contents, params)
    assert harness.store.order == [pack for pack, _ in expected]
    reasons = {reason for _, reason in expected}
    assert {"content", "max_size", "max_files", "end"} <= reasons  # every rule was exercised
    assert harness.packer.packs == harness.cuts == len(expected)
    harness.assert_resolved()


def test_default_parameters_cut_where_format_md_says():
    contents = random_files(5, 3000, 41, 8 * KIB)
    harness = Harness()
    for content in contents:
        harness.add(content)
    harness.packer.cut()
    expected = format_md_packs(contents, PackParams())
    assert harness.store.order == [pack for pack, _ in expected]
    assert len(expected) >= 5
    for pack in harness.store.order[:-1]:
        assert 1024 * KIB <= len(pack) < 4096 * KIB + 8 * KIB


def test_no_cut_below_min_size_even_when_every_file_qualifies():
    # spread 1: the content test holds for every file; only min_size stops a cut.
    params = PackParams(min_size=10_000, spread=1, max_size=1 << 30, max_files=1 << 30)
    harness = Harness(params)
    for content in random_files(6, 9, 1000, 1000):
        entry, final = harness.add(content)
        assert not final and not entry.chunks
    assert harness.store.order == [] and harness.cuts == 0 and harness.packer.pending
    harness.add(b"x" * 999)  # 9999 bytes: still below
    assert harness.cuts == 0
    harness.add(b"y" * 41)   # 10040 bytes: cut after this file
    assert harness.cuts == 1 and len(harness.store.order[0]) == 10_040
    assert not harness.packer.pending
    harness.assert_resolved()


def test_max_files_cuts_even_when_the_files_repeat_one_content():
    # Entries pointing at a content already in the open pack are still
    # pending entries the backup must keep: max_files bounds them too.
    params = PackParams(min_size=1 << 30, spread=1 << 30, max_size=1 << 30, max_files=4)
    harness = Harness(params)
    for _ in range(10):
        harness.add(b"the same licence text, again and again" * 3)
        assert sum(1 for entry, _ in harness.added if not entry.chunks) < 4
    harness.packer.cut()
    harness.assert_resolved()
    assert all(len(pack) == 114 for pack in harness.store.order)


def test_max_size_and_max_files_always_cut():
    params = PackParams(min_size=1 << 30, spread=1, max_size=50_000, max_files=7)
    harness = Harness(params)
    harness.add(b"a" * 49_999)
    assert harness.cuts == 0
    harness.add(b"b" * 41)
    assert harness.cuts == 1 and len(harness.store.order[0]) == 50_040
    for n in range(7):
        harness.add(b"%d" % n * 50)
    assert harness.cuts == 2 and len(harness.store.order[1]) == 7 * 50
    harness.assert_resolved()


def test_content_defined_cuts_resynchronise_after_a_different_prefix():
    params = PackParams(min_size=16 * KIB, spread=32 * KIB, max_size=1 << 30, max_files=1 << 30)
    shared = random_files(7, 600, 41, 8 * KIB)
    runs = []
    for prefix in (random_files(8, 3, 41, 8 * KIB), random_files(9, 17, 41, 8 * KIB), []):
        harness = Harness(params)
        for content in prefix + shared:
            harness.add(content)
        harness.packer.cut()
        harness.assert_resolved()
        # Cuts as indexes into ``shared`` (a cut inside the prefix is -1 or less).
        runs.append(([i - len(prefix) for i in harness.cut_points()], harness))
    (cuts_a, run_a), (cuts_b, run_b), (cuts_c, _run_c) = runs
    common = sorted(set(cuts_a) & set(cuts_b) & set(cuts_c) - {len(shared) - 1})
    assert common, (cuts_a[:5], cuts_b[:5])
    first = common[0]
    assert first < len(shared) // 4  # they meet early
    # From the first common cut on, cuts and packs are the same.
    assert [c for c in cuts_a if c >= first] == [c for c in cuts_b if c >= first] == \
        [c for c in cuts_c if c >= first]
    later = len([c for c in cuts_a if c > first])
    assert later >= 10
    assert run_a.store.order[-later:] == run_b.store.order[-later:]


def test_same_files_after_a_cut_give_the_same_packs():
    params = PackParams(min_size=16 * KIB, spread=32 * KIB, max_size=1 << 30, max_files=1 << 30)
    files = random_files(10, 200, 41, 8 * KIB)
    alone = Harness(params)
    for content in files:
        alone.add(content)
    alone.packer.cut()
    after = Harness(params)
    for content in random_files(11, 5, 41, 8 * KIB):
        after.add(content)
    after.packer.cut()  # a checkpoint
    for content in files:
        after.add(content)
    after.packer.cut()
    assert after.store.order[1:] == alone.store.order
    # Renaming the files changes nothing: the rule sees contents only.
    renamed = Harness(params)
    for n, content in enumerate(files):
        renamed.add(content, name=b"renamed-%d" % n)
    renamed.packer.cut()
    assert renamed.store.order == alone.store.order


def test_pending_entries_are_resolved_at_the_cut_and_on_cut_is_told_once_per_cut():
    harness = Harness(PackParams(min_size=20 * KIB, spread=8 * KIB, max_size=1 << 30,
                                 max_files=1 << 30))
    for content in random_files(12, 300, 41, 4 * KIB):
        entry, final = harness.add(content)
        assert not final  # new content is never final at once...
        cut_now = not harness.packer.pending
        assert bool(entry.chunks) == cut_now  # ...unless this very add cut the pack
    assert harness.cuts == len(harness.store.order) >= 3
    cuts_before, pending_before = harness.cuts, harness.packer.pending
    harness.packer.cut()
    assert harness.cuts == cuts_before + pending_before
    assert harness.cuts == len(harness.store.order) == harness.packer.packs
    # Offsets run back to back within each pack.
    by_pack: Dict[bytes, List[Entry]] = {}
    for entry, _content in harness.added:
        by_pack.setdefault(entry.chunks[0][0], []).append(entry)
    for digest, entries in by_pack.items():
        offsets = [entry.offset for entry in entries]
        assert offsets[0] == 0
        assert all(a.offset + a.size == b.offset for a, b in zip(entries, entries[1:]))
        assert entries[-1].offset + entries[-1].size == len(harness.store.objects[digest])
    harness.assert_resolved()
    # Nothing pending: a cut stores nothing and tells no one.
    harness.packer.cut()
    assert harness.cuts == len(harness.store.order) == harness.packer.packs


def test_identical_content_points_at_its_first_copy():
    harness = Harness(PackParams(min_size=1 << 20))
    one, other = b"1" * 100, b"2" * 200
    first, _ = harness.add(one)
    harness.add(other)
    again, final = harness.add(one)
    assert not final and not again.chunks  # pending, like the copy it points at
    harness.packer.cut()
    assert harness.store.order == [one + other]
    assert again.chunks == first.chunks and again.offset == first.offset == 0
    # After the cut, the same content is final at once and stores nothing.
    later, final = harness.add(one)
    assert final and later.chunks == first.chunks and later.offset == 0
    assert later.flags & FLAG_PACKED
    other_again, final = harness.add(other)  # the second content of the stored pack
    assert final and other_again.chunks == first.chunks and other_again.offset == 100
    harness.packer.cut()
    assert harness.store.order == [one + other] and harness.cuts == 1
    harness.assert_resolved()


def test_share_gives_a_hard_link_the_first_links_reference():
    harness = Harness(PackParams(min_size=1 << 20))
    first, _ = harness.add(b"p" * 300)
    link = Entry(b"link", KIND_HARDLINK, size=300)
    assert harness.packer.share(first, link) is False  # the first link is pending
    assert link.flags & FLAG_PACKED and not link.chunks
    harness.add(b"q" * 50)
    harness.packer.cut()
    assert link.chunks == first.chunks and link.offset == first.offset
    # A first link already resolved: the reference is final at once.
    second, _ = harness.add(b"r" * 77)
    harness.packer.cut()
    late = Entry(b"late", KIND_HARDLINK, size=77)
    assert harness.packer.share(second, late) is True
    assert late.flags & FLAG_PACKED
    assert late.chunks == second.chunks and late.offset == second.offset == 0
    assert late.chunks is not second.chunks
    assert harness.cuts == 2 and not harness.packer.pending


# -- records -------------------------------------------------------------------

def packed_entry(**changes) -> Entry:
    fields = dict(flags=FLAG_PACKED, mode=0o640, uid=1000, gid=100, mtime_ns=1_600_000_000_123_456_789,
                  ctime_ns=1_600_000_001_987_654_321, ino=4242, size=5000, nlink=2, uname=b"someone",
                  gname=b"users", chunks=[(bytes(range(32)), 70_000)], offset=65_000,
                  content_digest=bytes(range(100, 116)), extras={b"xattr.user.note": b"kept"})
    fields.update(changes)
    return Entry(b"small.txt", KIND_FILE, **fields)


def test_packed_entry_round_trips():
    entry = packed_entry()
    encoded = encode_entry(entry)
    decoded, end = decode_entry(encoded + b"tail", 0)
    assert end == len(encoded)
    for field in Entry.__slots__:
        assert getattr(decoded, field) == getattr(entry, field), field
    assert decoded.stored_length() == 5000
    # The data field is the 56-byte pack reference FORMAT.md describes.
    assert (65_000).to_bytes(4, "little") + bytes(range(32)) + (70_000).to_bytes(4, "little") \
        + bytes(range(100, 116)) in encoded
    link = packed_entry(target=b"src/dir/small.txt")
    link.kind = KIND_HARDLINK
    record = record_header() + encode_entry(entry) + encode_entry(link)
    first, second = iter_entries(record)
    assert second.kind == KIND_HARDLINK and second.target == b"src/dir/small.txt"
    assert (second.chunks, second.offset) == (first.chunks, first.offset)


def test_packed_reference_must_lie_within_its_pack():
    # Ending exactly at the pack's end is fine.
    decoded, _ = decode_entry(encode_entry(packed_entry(offset=65_000, size=5000)))
    assert decoded.offset + decoded.size == 70_000
    for offset, size in ((65_001, 5000), (65_000, 5001), (70_000, 1), (0xFFFFFFFF, 41)):
        with pytest.raises(RecordError):
            decode_entry(encode_entry(packed_entry(offset=offset, size=size)))


def test_packed_reference_of_the_wrong_length_is_rejected():
    for data_length in (55, 57, 40, 36, 0):
        entry = Entry(b"f", KIND_FILE, flags=FLAG_INLINE, size=10, inline=b"z" * data_length)
        encoded = bytearray(encode_entry(entry))
        assert encoded[5] == FLAG_INLINE
        encoded[5] = FLAG_PACKED  # the flags byte: now the data field claims to be a reference
        with pytest.raises(RecordError):
            decode_entry(bytes(encoded))


# -- end to end, through the command line and GNU tar ---------------------------

def find_order(parent: str, names: List[str]) -> List[str]:
    """``names`` (entries of ``parent``) in the order real find meets them."""
    out = subprocess.run(["find", parent, "-mindepth", "1", "-maxdepth", "1", "-print0"],
                         check=True, stdout=subprocess.PIPE).stdout
    met = [os.path.basename(os.fsdecode(path)) for path in out.split(b"\0") if path]
    return sorted(names, key=met.index)


def make_mixed_tree(top: str) -> Dict[str, str]:
    """Many small files in many directories, with the awkward cases; returns names chosen.

    ``sub`` is a directory whose small files share packs with the rest and
    that holds the second link of a file whose first link is outside it;
    ``left_first``/``left_second`` are links in sibling directories, the
    first link's directory being left before the second is met.
    """
    rng = random.Random(20)
    for name in ("ma", "mb", "links/p/q", "links/r", "links/s", "empty-dir"):
        os.makedirs(os.path.join(top, name))
    # Siblings are met in readdir order: decide by what find does here.
    outside, sub = find_order(top, ["ma", "mb"])
    early, late = find_order(os.path.join(top, "links"), ["p", "r"])
    early_dir = os.path.join(top, "links", early, "q" if early == "p" else "")
    late_dir = os.path.join(top, "links", late)
    for name, size in (("empty", 0), ("one", 1), ("b56", 56), ("b57", 57),
                       ("max", 256 * KIB), ("over", 256 * KIB + 1)):
        write(os.path.join(top, name), rng.randbytes(size))
    for n in range(100):
        write(os.path.join(top, "flat", "f%03d" % n), rng.randbytes(rng.randint(0, 1000)))
    deep = top
    for level in range(14):
        deep = os.path.join(deep, "l%d" % level)
        for n in range(3):
            write(os.path.join(deep, "d%d" % n), rng.randbytes(rng.choice((0, 7, 56, 57, 900))))
    for n in range(8):  # same contents as flat files: packed once
        with open(os.path.join(top, "flat", "f%03d" % (n * 3)), "rb") as handle:
            write(os.path.join(top, "dups", "copy%d" % n), handle.read())
    for n in range(5):
        write(os.path.join(top, "empties", "e%d" % n), b"")
    for where in (outside, sub):
        for n in range(30):
            write(os.path.join(top, where, "s%02d" % n), rng.randbytes(rng.randint(57, 1200)))
        for n in range(10):
            write(os.path.join(top, where, "inner", "t%d" % n), rng.randbytes(rng.randint(0, 900)))
    write(os.path.join(top, outside, "shared-first"), rng.randbytes(1234))
    os.link(os.path.join(top, outside, "shared-first"), os.path.join(top, sub, "inner", "shared"))
    write(os.path.join(early_dir, "left-first"), rng.randbytes(777))
    os.link(os.path.join(early_dir, "left-first"), os.path.join(late_dir, "left-second"))
    write(os.path.join(early_dir, "triple1"), rng.randbytes(4000))
    os.link(os.path.join(early_dir, "triple1"), os.path.join(late_dir, "triple2"))
    os.link(os.path.join(early_dir, "triple1"), os.path.join(top, "links", "s", "triple3"))
    write(os.path.join(top, "links", "same-a"), rng.randbytes(300))
    os.link(os.path.join(top, "links", "same-a"), os.path.join(top, "links", "same-b"))
    write(os.path.join(top, "links", "max-a"), rng.randbytes(256 * KIB))
    os.link(os.path.join(top, "links", "max-a"), os.path.join(early_dir, "max-b"))
    write(os.path.join(top, "links", "over-a"), rng.randbytes(256 * KIB + 1))
    os.link(os.path.join(top, "links", "over-a"), os.path.join(late_dir, "over-b"))
    write(os.path.join(top, "links", "tiny-a"), b"ten bytes!")
    os.link(os.path.join(top, "links", "tiny-a"), os.path.join(top, "links", "s", "tiny-b"))
    write(os.path.join(top, "links", "empty-a"), b"")
    os.link(os.path.join(top, "links", "empty-a"), os.path.join(late_dir, "empty-b"))
    return {"outside": outside, "sub": sub,
            "left_first": os.path.relpath(os.path.join(early_dir, "left-first"), top),
            "left_second": os.path.relpath(os.path.join(late_dir, "left-second"), top)}


def record_digests(entries: Dict[bytes, Entry], savedir: str, backup_id: str) -> Set[str]:
    """Objects holding directory records (the top record included)."""
    root = SaveDir(savedir, "test").catalog.read(backup_id).root
    found = {digest.hex() for digest, _ in root}
    for entry in entries.values():
        if entry.kind == KIND_DIR:
            found.update(digest.hex() for digest, _ in entry.chunks)
    return found


def assert_stored_as_format_md_says(entries: Dict[bytes, Entry], top: str) -> None:
    """Entries of files <= 56 bytes INLINE, 57 bytes .. 256 KiB PACKED, larger chunked."""
    checked = 0
    for path, entry in entries.items():
        if entry.kind not in (KIND_FILE, KIND_HARDLINK):
            continue
        with open(os.path.join(os.path.dirname(top), os.fsdecode(path)), "rb") as handle:
            assert len(handle.read()) == entry.size, path
        if entry.size <= 56:
            assert entry.flags & FLAG_INLINE and not entry.flags & FLAG_PACKED, path
        elif entry.size <= 256 * KIB:
            assert entry.flags & FLAG_PACKED and not entry.flags & FLAG_INLINE, path
            (_digest, length), = entry.chunks
            assert entry.offset + entry.size <= length, path
        else:
            assert not entry.flags & (FLAG_PACKED | FLAG_INLINE) and entry.chunks, path
        if entry.kind == KIND_HARDLINK:
            first = entries[entry.target]
            assert (entry.flags, entry.chunks, entry.offset, entry.inline) == \
                (first.flags, first.chunks, first.offset, first.inline), path
        checked += 1
    assert checked > 200


def test_mixed_tree_round_trips_through_tar(savedir, tmp_path):
    top = str(tmp_path / "src")
    names = make_mixed_tree(top)
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    entries = tree_entries(savedir, backup_id)
    assert_stored_as_format_md_says(entries, top)
    # The premise: the first link's directory was left before the second was met.
    second = entries[os.fsencode("src/" + names["left_second"])]
    assert second.kind == KIND_HARDLINK
    assert second.target == os.fsencode("src/" + names["left_first"])
    # Under 1 MiB of small files (a pack's minimum): every entry waited for
    # the one pack, cut at the end and shared by every directory.
    packs = {pack_of(e) for e in entries.values() if e.flags & FLAG_PACKED}
    assert len(packs) == 1
    (_digest, pack_length), = {e.chunks[0] for e in entries.values() if e.flags & FLAG_PACKED}
    assert pack_length < 1024 * KIB
    # Duplicate contents point at their first copy.
    for n in range(8):
        copy = entries[b"src/dups/copy%d" % n]
        original = entries[b"src/flat/f%03d" % (n * 3)]
        if copy.flags & FLAG_PACKED:
            assert (copy.chunks, copy.offset) == (original.chunks, original.offset)
    dest = str(tmp_path / "out")
    restore(savedir, backup_id, dest)
    helpers.assert_same_tree(top, os.path.join(dest, "src"))


def test_checkpoints_flush_pending_entries(savedir, tmp_path):
    top = str(tmp_path / "src")
    make_mixed_tree(top)
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path),
                               extra=["--checkpoint-interval", "0.000001"])
    record = helpers.read_record(savedir, backup_id)
    # A checkpoint is due after every path; one is taken whenever the last
    # one's objects are written (checkpoint.py): many, here.
    assert record["state"] == "complete" and record["checkpoints"] >= 5, record
    entries = tree_entries(savedir, backup_id)
    assert_stored_as_format_md_says(entries, top)
    # Each checkpoint cut the open pack, where without checkpoints one would
    # do (test_mixed_tree_round_trips_through_tar).
    packed = [e for e in entries.values() if e.flags & FLAG_PACKED and e.kind == KIND_FILE]
    assert len({pack_of(e) for e in packed}) >= 5
    dest = str(tmp_path / "out")
    restore(savedir, backup_id, dest)
    helpers.assert_same_tree(top, os.path.join(dest, "src"))


def test_subtree_restore_takes_only_its_files_from_shared_packs(savedir, tmp_path):
    top = str(tmp_path / "src")
    names = make_mixed_tree(top)
    sub = names["sub"]
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    entries = tree_entries(savedir, backup_id)
    prefix = os.fsencode("src/%s/" % sub)
    inside = {pack_of(e) for p, e in entries.items() if p.startswith(prefix)
              and e.flags & FLAG_PACKED}
    outside = {pack_of(e) for p, e in entries.items() if not p.startswith(prefix)
               and e.flags & FLAG_PACKED}
    assert inside & outside  # the premise: the subtree shares a pack
    shared = entries[prefix + b"inner/shared"]
    assert shared.kind == KIND_HARDLINK  # its first link lies outside the subtree
    dest = str(tmp_path / "out")
    stream = restore(savedir, backup_id, dest, ["--starting-directory", "src/" + sub])
    with tarfile.open(fileobj=io.BytesIO(stream)) as archive:
        names_in_tar = archive.getnames()
    assert names_in_tar and all(name == "src/" + sub or name.startswith("src/%s/" % sub)
                                for name in names_in_tar)
    assert sorted(os.listdir(dest)) == ["src"] and os.listdir(os.path.join(dest, "src")) == [sub]
    helpers.assert_same_tree(os.path.join(top, sub), os.path.join(dest, "src", sub))


def make_many_small_files(top: str, count: int, seed: int) -> int:
    """``count`` files of 1-8 KiB in 20 directories, 4 of them one level down; total bytes."""
    rng = random.Random(seed)
    total = 0
    for n in range(count):
        group = n % 20
        directory = os.path.join(top, "g%02d" % group, *(["sub"] if group % 5 == 0 else []))
        size = rng.randint(KIB, 8 * KIB)
        write(os.path.join(directory, "file%04d" % n), rng.randbytes(size))
        total += size
    return total


def test_many_small_files_few_objects_and_cheap_rebackups(savedir, tmp_path):
    top = str(tmp_path / "src")
    count = 2000
    total = make_many_small_files(top, count, seed=30)
    first_id = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    first = helpers.read_record(savedir, first_id)
    assert first["bytes_read"] == total and first["files"] == count
    objects = object_digests(savedir)
    assert len(objects) < count / 20, len(objects)
    du_first = helpers.du_bytes(savedir)
    dest = str(tmp_path / "out1")
    restore(savedir, first_id, dest)
    helpers.assert_same_tree(top, os.path.join(dest, "src"))

    # Unchanged: nothing read, nothing written.
    second_id = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    second = helpers.read_record(savedir, second_id)
    assert second["bytes_read"] == 0
    assert second["files_reused"] == count and second["bytes_reused"] == total
    assert object_digests(savedir) == objects
    assert helpers.read_record(savedir, second_id)["root"] == first["root"]

    # One small file edited: one new pack holding just it, plus records.
    edited = os.path.join(top, "g05", "sub", "file0005")
    with open(edited, "r+b") as handle:
        handle.write(b"edited")
    size = os.path.getsize(edited)
    third_id = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    third = helpers.read_record(savedir, third_id)
    assert third["bytes_read"] == size and third["files_reused"] == count - 1
    entries = tree_entries(savedir, third_id)
    new = object_digests(savedir) - objects
    new_pack = pack_of(entries[b"src/g05/sub/file0005"]).hex()
    assert new_pack in new
    assert new - {new_pack} <= record_digests(entries, savedir, third_id)
    # Records that change: the file's 2 directories, src, the root, the top
    # record; each under 16 KiB (one metadata chunk).
    assert len(new) <= 1 + 5
    # The edited file's neighbours keep their old pack, unread.
    old_entries = tree_entries(savedir, first_id)
    neighbour = b"src/g05/sub/file0025"
    assert pack_of(entries[neighbour]) == pack_of(old_entries[neighbour])
    assert pack_of(entries[neighbour]).hex() in objects
    # Growth: the pack (the file + a 16-byte header, in 4 KiB blocks) and up
    # to 5 record objects of at most 16 KiB + header each, in 4 KiB blocks;
    # two backup record files (a block each) and an object directory block.
    growth = helpers.du_bytes(savedir) - du_first
    bound = (size + 16 + 4095) // 4096 * 4096 + 5 * 20 * KIB + 3 * 4 * KIB
    assert 0 < growth <= bound, (growth, bound)
    assert growth < du_first / 50
    dest = str(tmp_path / "out3")
    restore(savedir, third_id, dest)
    helpers.assert_same_tree(top, os.path.join(dest, "src"))


def test_small_files_read_again_with_the_same_content_keep_their_pack(savedir, tmp_path):
    """A file whose times changed (touch) is read again; its content is the
    same, so it points at the earlier pack instead of being packed anew."""
    top = str(tmp_path / "src")
    make_many_small_files(top, 200, seed=50)
    first_id = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    objects = object_digests(savedir)
    touched = [os.path.join(top, "g%02d" % group, "file%04d" % (group + 20))
               for group in (1, 2, 3)]
    edited = os.path.join(top, "g04", "file0024")
    for path in touched + [edited]:
        os.utime(path, (time.time(), time.time() + 5))
    with open(edited, "r+b") as handle:
        handle.write(b"changed")
    second_id = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=NO_SETTLE)
    second = helpers.read_record(savedir, second_id)
    assert second["files_reused"] == 200 - 4
    assert second["bytes_read"] == sum(os.path.getsize(path) for path in touched + [edited])
    old, new = tree_entries(savedir, first_id), tree_entries(savedir, second_id)
    for path in touched:
        key = os.path.relpath(path, str(tmp_path)).encode()
        assert (new[key].chunks, new[key].offset) == (old[key].chunks, old[key].offset)
        assert new[key].content_digest == hashlib.blake2b(
            open(path, "rb").read(), digest_size=16).digest()
    edited_key = b"src/g04/file0024"
    assert pack_of(new[edited_key]) != pack_of(old[edited_key])
    added = object_digests(savedir) - objects
    assert pack_of(new[edited_key]).hex() in added
    # Only the edited file was packed: the one new pack holds just its bytes.
    packs = {pack_of(entry) for entry in new.values() if entry.flags & FLAG_PACKED}
    assert [digest for digest in packs if digest.hex() in added] == [pack_of(new[edited_key])]
    assert new[edited_key].chunks[0][1] == os.path.getsize(edited)
    dest = str(tmp_path / "out")
    restore(savedir, second_id, dest)
    helpers.assert_same_tree(top, os.path.join(dest, "src"))


def test_damaged_pack_is_reported_per_file_and_the_stream_stays_well_formed(savedir, tmp_path):
    top = str(tmp_path / "src")
    make_many_small_files(top, 1200, seed=40)  # more than one pack
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    entries = tree_entries(savedir, backup_id)
    by_pack: Dict[bytes, List[bytes]] = {}
    for path, entry in entries.items():
        if entry.flags & FLAG_PACKED:
            by_pack.setdefault(pack_of(entry), []).append(path)
    assert len(by_pack) >= 2
    victim = sorted(by_pack, key=lambda digest: len(by_pack[digest]))[0]
    victims = sorted(by_pack[victim])
    store = SaveDir(savedir, "test")
    target = store.objects.path_of(victim)
    os.chmod(target, 0o600)
    os.truncate(target, os.path.getsize(target) // 2)

    result = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id", backup_id])
    assert result.returncode == 1
    err = result.stderr.decode()
    assert "Traceback" not in err
    for path in victims:
        assert "backshift: %s: damaged: " % os.fsdecode(path) in err, path
    damaged_lines = [line for line in err.splitlines() if ": damaged: " in line]
    named = {line.split(": damaged: ")[0][len("backshift: "):] for line in damaged_lines}
    assert named == {os.fsdecode(path) for path in victims}
    assert victim.hex() in err
    # Well formed: GNU tar lists and extracts it; the damaged files have their
    # size (zeros), all others their content.
    dest = str(tmp_path / "out")
    helpers.extract(result.stdout, dest)
    listed = subprocess.run(["tar", "tf", "-"], input=result.stdout, check=True,
                            stdout=subprocess.PIPE).stdout.decode().splitlines()
    assert len(listed) == len(entries) - 1  # every entry but the implicit root
    for path, entry in entries.items():
        if entry.kind != KIND_FILE:
            continue
        with open(os.path.join(dest, os.fsdecode(path)), "rb") as handle:
            restored = handle.read()
        if path in victims:
            assert restored == bytes(entry.size)
        else:
            with open(os.path.join(str(tmp_path), os.fsdecode(path)), "rb") as handle:
                assert restored == handle.read(), path

    for action in ("--check", "--verify"):
        result = helpers.run(["--save-directory", savedir, action])
        assert result.returncode == 1, action
        err = result.stderr.decode()
        assert "backshift: object %s: truncated" % victim.hex() in err, err
        line = [text for text in err.splitlines() if "damages backup %s: " % backup_id in text]
        assert len(line) == 1, err
        shown = line[0].split("damages backup %s: " % backup_id)[1]
        more = 0
        if " and " in shown:
            shown, more_text = shown.rsplit(" and ", 1)
            more = int(more_text.split()[0])
        shown_paths = shown.split(", ")
        assert set(shown_paths) <= {os.fsdecode(path) for path in victims}
        assert len(shown_paths) + more == len(victims)


def test_packs_cut_before_their_minimum_are_compressed_thoroughly():
    # A pack the rule cuts is compressed as asked; one cut early (a
    # checkpoint, the end of the backup) with xz at level 6 at least: few,
    # small, and most of what a nightly backup adds.
    params = PackParams(min_size=16 * KIB, spread=16 * KIB, max_size=64 * KIB, max_files=1000)
    for asked, early in (("xz:1", "xz:6"), ("xz:9", "xz:9"), ("zlib:1", "zlib:1")):
        levels: List[Tuple[int, str]] = []

        def put(data: bytes, compressor: Compressor) -> bytes:
            levels.append((len(data), str(compressor.spec)))
            return hashlib.blake2b(data, digest_size=32).digest()

        packer = Packer(put, Compressor(CompressionSpec.parse(asked)), lambda: None, params)
        for content in random_files(7, 40, 1 * KIB, 4 * KIB):
            packer.add(Entry(b"f", KIND_FILE, size=len(content)), content)
        packer.cut()
        assert len(levels) >= 2 and levels[-1][0] < params.min_size, levels
        assert all(spec == asked for size, spec in levels[:-1]), levels
        assert levels[-1][1] == early, levels


def test_packs_the_rule_cuts_are_compressed_as_asked_however_little_text_they_hold():
    # The rule cuts the text lane and the already-compressed lane together,
    # by their sum: a cut pack of text alone is often below the minimum.
    # Only a cut before the minimum (a checkpoint, the end) is thorough;
    # this one took xz level 6 for most packs of a tree of small files and
    # made its first backup twice as costly in CPU.
    params = PackParams(min_size=16 * KIB, spread=16 * KIB, max_size=64 * KIB, max_files=1000)
    specs: List[Tuple[bytes, str]] = []

    def put(data: bytes, compressor: Compressor) -> bytes:
        specs.append((data[:2], str(compressor.spec)))
        return hashlib.blake2b(data, digest_size=32).digest()

    packer = Packer(put, Compressor(CompressionSpec.parse("xz:1")), lambda: None, params)
    for number, content in enumerate(random_files(8, 60, 1 * KIB, 4 * KIB)):
        # Three of four files gzip data (by their magic), the rest text.
        content = (b"\x1f\x8b" if number % 4 else b"tx") + content
        packer.add(Entry(b"f", KIND_FILE, size=len(content)), content)
    text_packs = [spec for start, spec in specs if start == b"tx"]
    assert len(text_packs) >= 2, specs
    assert text_packs == ["xz:1"] * len(text_packs), specs
