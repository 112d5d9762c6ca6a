"""Checking a save directory: can every backup still be restored?

``--check`` reads every backup record, every directory record of every
backup, and the header of every object a backup refers to (that it exists,
is an object of our format, has the length the backup expects and, for xz,
ends like an xz stream).  ``--verify`` (alias ``--check-hashes``) also reads
every object in the save directory, decompresses it and recomputes its
digest, using every core.

The trees of all backups are walked once each, but a directory record met
before (an unchanged directory in the next day's backup) is not walked
again, so checking a year of daily backups costs little more than checking
the distinct directories.  Only when something is wrong are the trees
walked again in full, to name each backup and file path a bad object
damages.

The walk of a tree (``scan_tree``) is shared with expiry, which marks every
object the remaining backups refer to.
"""

import collections
import concurrent.futures
import os
import time
from typing import Callable, Deque, Dict, Iterator, List, Optional, Sequence, Set, TextIO, Tuple

from .catalog import BackupRecord, Catalog, CatalogError
from .compression import CODEC_NAMES, CODEC_NONE, CODEC_XZ
from .listing import quote_name
from .objectstore import OBJECT_HEADER, OBJECT_MAGIC, OBJECT_VERSION, ObjectError, ObjectStore
from .objectstore import digest_of
from .report import EXIT_OK, EXIT_PARTIAL, StatusLine, human_bytes
from .records import FLAG_INLINE, KIND_DIR, ChunkRef, RecordError, iter_entries
from .savedir import SaveDir
from .tree import TreeReader, join_path

# Paths named per damaged object and backup; the rest are counted.
PATHS_SHOWN = 10
XZ_FOOTER_MAGIC = b"YZ"

# on_chunks(path, chunks, is_record): a chunk list the tree refers to.
ChunksCallback = Callable[[bytes, Sequence[ChunkRef], bool], None]
# on_damage(path, chunks, digest or None, reason): a directory record that
# cannot be read; what lies below it is unknown.
DamageCallback = Callable[[bytes, Sequence[ChunkRef], Optional[bytes], str], None]


def record_key(chunks: Sequence[ChunkRef]) -> bytes:
    """One short key per distinct directory record (its chunk list)."""
    if len(chunks) == 1:
        return chunks[0][0]
    return digest_of(b"".join(digest for digest, _length in chunks))


def scan_tree(reader: TreeReader, root: Sequence[ChunkRef], on_chunks: ChunksCallback,
              on_damage: DamageCallback, seen: Optional[Set[bytes]] = None) -> None:
    """Report every chunk list a backup's tree refers to, depth first.

    ``on_chunks`` is called for the top record (path b""), every directory
    record (with the directory's path; not for small records held inline in
    their directory's entry, which name no object of their own) and every
    file's content chunks.
    With ``seen``, a directory record whose key is in it is reported but
    not read again (its subtree was scanned already); keys are added as
    records are read.  Memory is bounded by the tree's depth.
    """
    stack: List[Tuple[bytes, Sequence[ChunkRef], object]] = []

    def enter(path: bytes, chunks: Sequence[ChunkRef], inline: Optional[bytes] = None) -> None:
        if inline is not None:  # a small record held in its directory's entry
            stack.append((path, chunks, iter_entries(inline)))
            return
        on_chunks(path, chunks, True)
        key = record_key(chunks) if seen is not None else b""
        if seen is not None and key in seen:
            return
        try:
            entries = iter_entries(reader.read_record(chunks))
        except ObjectError as exc:
            on_damage(path, chunks, exc.digest, exc.reason)
            return
        except RecordError as exc:
            on_damage(path, chunks, None, "directory record does not parse: %s" % exc)
            return
        if seen is not None:
            seen.add(key)
        stack.append((path, chunks, entries))

    enter(b"", root)
    while stack:
        parent, parent_chunks, entries = stack[-1]
        try:
            entry = next(entries, None)  # type: ignore[call-overload]
        except RecordError as exc:
            on_damage(parent, parent_chunks, None, "directory record does not parse: %s" % exc)
            entry = None
        if entry is None:
            stack.pop()
            continue
        # The top record's one entry, the root directory, is named b"": path b"".
        path = join_path(parent, entry.name)
        if entry.kind == KIND_DIR:
            enter(path, entry.chunks,
                  (entry.inline or b"") if entry.flags & FLAG_INLINE else None)
        elif entry.chunks and not entry.flags & FLAG_INLINE:
            on_chunks(path, entry.chunks, False)


def header_problem(objects: ObjectStore, digest: bytes,
                   expected_length: Optional[int] = None) -> Optional[str]:
    """What is wrong with an object, judged by its header and size alone (None if sane)."""
    try:
        fd = os.open(objects.path_of(digest), os.O_RDONLY)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return "unreadable: %s" % exc.strerror
    try:
        header = os.pread(fd, OBJECT_HEADER.size, 0)
        size = os.fstat(fd).st_size
        if len(header) < OBJECT_HEADER.size:
            return "truncated: %d bytes, shorter than an object header" % size
        magic, version, codec, _zero, length = OBJECT_HEADER.unpack(header)
        if magic != OBJECT_MAGIC or version != OBJECT_VERSION:
            return "bad header: not a backshift object"
        if codec not in CODEC_NAMES:
            return "bad header: unknown codec %d" % codec
        if expected_length is not None and length != expected_length:
            return "holds %d bytes, the backup expects %d" % (length, expected_length)
        payload = size - OBJECT_HEADER.size
        if codec == CODEC_NONE and payload != length:
            return "truncated: %d of %d bytes of content" % (payload, length)
        if codec != CODEC_NONE and payload <= 0:
            return "truncated: no payload"
        if codec == CODEC_XZ and os.pread(fd, 2, size - 2) != XZ_FOOTER_MAGIC:
            return "truncated: the xz stream has no end"
    except OSError as exc:
        return "unreadable: %s" % exc.strerror
    finally:
        os.close(fd)
    return None


def verify_object(objects: ObjectStore, digest: bytes) -> Tuple[Optional[str], int]:
    """(what is wrong or None, uncompressed bytes checked) after a full read."""
    problem = header_problem(objects, digest)  # names truncation plainly
    if problem is not None:
        return problem, 0
    try:
        return None, len(objects.get(digest, verify=True))
    except ObjectError as exc:
        return exc.reason, 0


class Damage:
    """Which backups and paths one bad object (or unparsable record) damages."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.paths: Dict[str, List[str]] = {}     # backup id -> first paths shown
        self.counts: Dict[str, int] = {}          # backup id -> paths in all

    def add(self, backup_id: str, path: str) -> None:
        shown = self.paths.setdefault(backup_id, [])
        self.counts[backup_id] = self.counts.get(backup_id, 0) + 1
        if len(shown) < PATHS_SHOWN:
            shown.append(path)


class Checker:
    """Checks (and optionally verifies) one save directory."""

    def __init__(self, savedir: SaveDir, verify: bool, out: TextIO,
                 workers: Optional[int] = None) -> None:
        self.objects = savedir.objects
        self.catalog: Catalog = savedir.catalog
        self.verify = verify
        self.out = out
        self.workers = workers or os.cpu_count() or 2
        self.reader = TreeReader(self.objects)
        self.progress = StatusLine(out)
        self.started = time.monotonic()
        self.records: List[BackupRecord] = []
        self.bad_records: Dict[str, str] = {}        # backup id -> why it does not parse
        self.referenced: Dict[bytes, int] = {}       # digest -> expected length
        self.bad: Dict[bytes, str] = {}              # digest -> what is wrong
        self.bad_dir_records: Dict[bytes, str] = {}  # record key -> parse problem
        self.objects_checked = 0
        self.bytes_checked = 0

    # -- phase 1: every record, every tree once, every object once ----------

    def run(self) -> int:
        self._read_records()
        seen: Set[bytes] = set()
        for record in self.records:
            if record.root is not None:
                scan_tree(self.reader, record.root, self._note_chunks, self._note_damage, seen)
        if self.verify:
            self._verify_all()
        else:
            self._check_headers()
        self.progress.clear()
        damages = self._attribute() if (self.bad or self.bad_dir_records) else {}
        problems = self._report(damages)
        return EXIT_OK if problems == 0 else EXIT_PARTIAL

    def _read_records(self) -> None:
        for backup_id in self.catalog.ids():
            try:
                self.records.append(self.catalog.read(backup_id))
            except CatalogError as exc:
                if os.path.exists(self.catalog.path_of(backup_id)):
                    self.bad_records[backup_id] = str(exc)

    def _note_chunks(self, path: bytes, chunks: Sequence[ChunkRef], is_record: bool) -> None:
        for digest, length in chunks:
            self.referenced.setdefault(digest, length)
        self.progress.show("checking: %d backups, %d objects referenced"
                           % (len(self.records), len(self.referenced)))

    def _note_damage(self, path: bytes, chunks: Sequence[ChunkRef], digest: Optional[bytes],
                     reason: str) -> None:
        if digest is not None:
            self.bad.setdefault(digest, reason)
        else:
            self.bad_dir_records.setdefault(record_key(chunks), reason)

    def _check_headers(self) -> None:
        for digest in sorted(self.referenced):
            if digest in self.bad:
                continue
            problem = header_problem(self.objects, digest, self.referenced[digest])
            if problem is not None:
                self.bad[digest] = problem
            self.objects_checked += 1
            self.progress.show("checking: %d/%d objects" % (self.objects_checked,
                                                            len(self.referenced)))

    def _verify_all(self) -> None:
        """Read and hash every object present, every core busy; then find the missing."""
        present: Set[bytes] = set()
        started = time.monotonic()
        window: Deque[Tuple[bytes, "concurrent.futures.Future[Tuple[Optional[str], int]]"]] = \
            collections.deque()
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            # A few objects in flight per worker: decompression and hashing
            # release the GIL, and memory stays bounded.
            for prefix, digest in self._all_digests():
                present.add(digest)
                window.append((digest, pool.submit(verify_object, self.objects, digest)))
                if len(window) >= 4 * self.workers:
                    self._verified(*window.popleft(), prefix=prefix, started=started)
            while window:
                self._verified(*window.popleft(), prefix=255, started=started)
        for digest in self.referenced:
            # Written after its directory was listed?  Then it is there now.
            if digest not in present and not self.objects.exists(digest):
                self.bad.setdefault(digest, "missing")

    def _verified(self, digest: bytes, future, prefix: int, started: float) -> None:
        problem, size = future.result()
        self.objects_checked += 1
        self.bytes_checked += size
        if problem is not None:
            self.bad.setdefault(digest, problem)
        elif digest in self.referenced and size != self.referenced[digest]:
            self.bad.setdefault(digest, "holds %d bytes, the backup expects %d"
                                % (size, self.referenced[digest]))
        elapsed = max(time.monotonic() - started, 1e-6)
        self.progress.show("verifying: %3d%% %d objects, %s, %s/s"
                           % ((prefix + 1) * 100 // 256, self.objects_checked,
                              human_bytes(self.bytes_checked),
                              human_bytes(self.bytes_checked / elapsed)))

    def _all_digests(self) -> Iterator[Tuple[int, bytes]]:
        for prefix in range(256):
            for digest in self._digests_in(prefix):
                yield prefix, digest

    def _digests_in(self, prefix: int):
        directory = os.path.join(self.objects.root, "%02x" % prefix)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            if len(name) == 64 and not name.startswith("."):
                try:
                    yield bytes.fromhex(name)
                except ValueError:
                    continue

    # -- phase 2, only when something is wrong: who is damaged -------------

    def _attribute(self) -> Dict[bytes, Damage]:
        damages: Dict[bytes, Damage] = {}

        for record in self.records:
            if record.root is None:
                continue
            backup_id = record.backup_id

            def on_chunks(path: bytes, chunks: Sequence[ChunkRef], is_record: bool) -> None:
                shown = _show(path) + (" (directory contents)" if is_record else "")
                for digest, _length in chunks:
                    if digest in self.bad:
                        damages.setdefault(digest, Damage(self.bad[digest])).add(backup_id, shown)
                if is_record:
                    key = record_key(chunks)
                    if key in self.bad_dir_records:
                        damages.setdefault(key, Damage(self.bad_dir_records[key])).add(
                            backup_id, shown)

            def on_damage(path: bytes, chunks: Sequence[ChunkRef], digest: Optional[bytes],
                          reason: str) -> None:
                pass  # already known from phase 1; on_chunks names the path

            scan_tree(self.reader, record.root, on_chunks, on_damage)
        # A backup removed (expired) while we checked is not damaged.
        for damage in damages.values():
            for backup_id in list(damage.paths):
                if not os.path.exists(self.catalog.path_of(backup_id)):
                    del damage.paths[backup_id]
                    del damage.counts[backup_id]
        return {key: damage for key, damage in damages.items() if damage.paths}

    # -- the report ----------------------------------------------------------

    def _report(self, damages: Dict[bytes, Damage]) -> int:
        """Print every problem and a summary; return how many problems there are."""
        write = self.out.write
        for backup_id, reason in sorted(self.bad_records.items()):
            write("backshift: backup record %s: %s\n" % (backup_id, reason))
        for key in sorted(damages):
            damage = damages[key]
            if key in self.bad:
                write("backshift: object %s: %s\n" % (key.hex(), damage.reason))
            else:
                write("backshift: directory record %s: %s\n" % (key.hex(), damage.reason))
            for backup_id in sorted(damage.paths):
                shown = ", ".join(damage.paths[backup_id])
                more = damage.counts[backup_id] - len(damage.paths[backup_id])
                write("backshift:   damages backup %s: %s%s\n"
                      % (backup_id, shown, " and %d more" % more if more else ""))
        # A bad object referenced only by backups removed (expired) while we
        # checked damages nothing; one no backup refers to is still reported.
        unused = sorted(digest for digest in set(self.bad) - set(damages)
                        if digest not in self.referenced)
        for digest in unused:
            write("backshift: object %s: %s (used by no backup: remove it, or a later "
                  "backup of the same content would use it)\n"
                  % (digest.hex(), self.bad[digest]))
        damaged_backups = {backup_id for damage in damages.values() for backup_id in damage.paths}
        damaged_backups.update(self.bad_records)
        summary = "%d backups, %d objects" % (len(self.records) + len(self.bad_records),
                                              self.objects_checked)
        if self.verify:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            summary += " (%s, %s/s)" % (human_bytes(self.bytes_checked),
                                        human_bytes(self.bytes_checked / elapsed))
        problems = len(self.bad_records) + len(damages) + len(unused)
        if problems:
            write("backshift: %s: %s; %d damaged objects; %d damaged backups\n"
                  % ("verify" if self.verify else "check", summary,
                     len(damages) + len(unused), len(damaged_backups)))
        elif self.progress.enabled:
            write("backshift: %s: %s: all healthy\n"
                  % ("verify" if self.verify else "check", summary))
        self.out.flush()
        return problems


def _show(path: bytes) -> str:
    return quote_name(path).decode("utf-8", "replace") if path else "."


def run_check(savedir: SaveDir, verify: bool, out: TextIO) -> int:
    """``--check`` / ``--verify``: 0 if every backup is whole, 1 if anything is damaged."""
    return Checker(savedir, verify, out).run()
