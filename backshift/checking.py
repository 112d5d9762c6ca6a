"""Checking a save directory: can every backup still be restored?

``--check`` reads every backup record, every directory record of every
backup, and the header of every object a backup refers to (that it exists,
is an object of our format, has the length the backup expects and, for xz,
ends like an xz stream).  ``--verify`` (alias ``--check-hashes``) also reads
every object in the save directory, decompresses it and recomputes its
digest, using every core.  Both walk every tree by the reader's rules
(tree.py): an entry that breaks them is damage.

The trees of all backups are walked once each, but a directory record met
before (an unchanged directory in the next day's backup) is not walked
again, so checking a year of daily backups costs little more than checking
the distinct directories.  Only when something is wrong are the trees
walked again in full, to name each backup and file path a bad object
damages.
"""

import collections
import concurrent.futures
import os
import time
from typing import Callable, Deque, Dict, List, Optional, Sequence, Set, TextIO, Tuple

from .atomic import remove_if_writer_dead
from .catalog import BackupRecord, Catalog, CatalogError
from .listing import quote_name
from .objectstore import ObjectError, ObjectStore
from .report import EXIT_OK, EXIT_PARTIAL, StatusLine, human_bytes
from .records import FLAG_INLINE, KIND_DIR, ChunkRef
from .savedir import SaveDir
from .tree import TreeReader, entry_chunks

# Paths named per damaged object and backup; the rest are counted.
PATHS_SHOWN = 10


class _NotingReader(TreeReader):
    """A TreeReader that remembers which object made the last record read fail."""

    def __init__(self, objects: ObjectStore) -> None:
        super().__init__(objects)
        self.failed: Optional[ObjectError] = None

    def read_chunk(self, digest: bytes) -> bytes:
        try:
            return super().read_chunk(digest)
        except ObjectError as exc:
            self.failed = exc
            raise


def verify_object(objects: ObjectStore, digest: bytes) -> Tuple[Optional[str], int]:
    """(what is wrong or None, uncompressed bytes checked) after a full read."""
    problem = objects.header_problem(digest)  # names truncation plainly
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
        self.reader = _NotingReader(self.objects)
        self.progress = StatusLine(out)
        self.started = time.monotonic()
        self.backups: List[BackupRecord] = []
        self.bad_records: Dict[str, str] = {}        # backup id -> why it does not parse
        self.referenced: Dict[bytes, int] = {}       # digest -> expected length
        self.bad: Dict[bytes, str] = {}              # digest -> what is wrong
        self.tree_damaged = False                    # an entry or record broke the rules
        # backup id -> (path, reason) of each entry or record breaking the
        # rules (phase 2), and how many in all.
        self.tree_damage: Dict[str, List[Tuple[bytes, str]]] = {}
        self.tree_damage_counts: Dict[str, int] = {}
        self.objects_checked = 0
        self.bytes_checked = 0

    # -- phase 1: every backup record, every tree once, every object once ---

    def run(self) -> int:
        self._read_backup_records()
        seen: Set[bytes] = set()
        for backup in self.backups:
            if backup.root is not None:
                self._walk(backup.root, seen, self._note_damage)
        if self.verify:
            self._verify_all()
        else:
            self._check_headers()
        self.progress.clear()
        damages = self._attribute() if (self.bad or self.tree_damaged) else {}
        problems = self._report(damages)
        self._report_temp_files()
        return EXIT_OK if problems == 0 else EXIT_PARTIAL

    def _read_backup_records(self) -> None:
        for backup_id in self.catalog.ids():
            try:
                self.backups.append(self.catalog.read(backup_id))
            except CatalogError as exc:
                if os.path.exists(self.catalog.path_of(backup_id)):
                    self.bad_records[backup_id] = str(exc)

    def _walk(self, root: Sequence[ChunkRef], seen: Set[bytes],
              on_damage: Callable[[bytes, str], None]) -> None:
        """Note every object a tree refers to (directories in ``seen`` not entered)."""
        for digest, length in root:
            self.referenced.setdefault(digest, length)
        for path, entry in self.reader.walk(root, include_implicit=True, on_damage=on_damage,
                                            seen=seen):
            for digest, length in entry_chunks(entry):
                self.referenced.setdefault(digest, length)
            self.progress.show("checking: %d backups, %d objects referenced"
                               % (len(self.backups), len(self.referenced)))

    def _note_damage(self, path: bytes, reason: str) -> None:
        failed, self.reader.failed = self.reader.failed, None
        if failed is not None:
            self.bad.setdefault(failed.digest, failed.reason)
        else:
            self.tree_damaged = True

    def _check_headers(self) -> None:
        for digest in sorted(self.referenced):
            if digest in self.bad:
                continue
            problem = self.objects.header_problem(digest, self.referenced[digest])
            if problem is not None:
                self.bad[digest] = problem
            self.objects_checked += 1
            self.progress.show("checking: %d/%d objects" % (self.objects_checked,
                                                            len(self.referenced)))

    def _verify_all(self) -> None:
        """Read and hash every object present, every core busy; then find the missing."""
        present: Set[bytes] = set()
        started = time.monotonic()
        listed = [0]  # object directories listed so far, for the progress line
        window: Deque[Tuple[bytes, "concurrent.futures.Future[Tuple[Optional[str], int]]"]] = \
            collections.deque()
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            # A few objects in flight per worker: decompression and hashing
            # release the GIL, and memory stays bounded.
            for digest in self.objects.iter_digests(lambda prefix: listed.__setitem__(0, prefix)):
                present.add(digest)
                window.append((digest, pool.submit(verify_object, self.objects, digest)))
                if len(window) >= 4 * self.workers:
                    self._verified(*window.popleft(), prefix=listed[0], started=started)
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

    # -- phase 2, only when something is wrong: who is damaged -------------

    def _attribute(self) -> Dict[bytes, Damage]:
        damages: Dict[bytes, Damage] = {}
        for backup in self.backups:
            if backup.root is None:
                continue
            backup_id = backup.backup_id

            def on_damage(path: bytes, reason: str) -> None:
                failed, self.reader.failed = self.reader.failed, None
                if failed is None:  # a bad object is named with its paths below
                    shown = self.tree_damage.setdefault(backup_id, [])
                    self.tree_damage_counts[backup_id] = \
                        self.tree_damage_counts.get(backup_id, 0) + 1
                    if len(shown) < PATHS_SHOWN:
                        shown.append((path, reason))

            for digest, _length in backup.root:
                if digest in self.bad:
                    damages.setdefault(digest, Damage(self.bad[digest])).add(
                        backup_id, ". (top record)")
            for path, entry in self.reader.walk(backup.root, include_implicit=True,
                                                on_damage=on_damage):
                is_record = entry.kind == KIND_DIR and not entry.flags & FLAG_INLINE
                for digest, _length in entry_chunks(entry):
                    if digest in self.bad:
                        shown = _show(path) + (" (directory contents)" if is_record else "")
                        damages.setdefault(digest, Damage(self.bad[digest])).add(backup_id,
                                                                                 shown)
        # A backup removed (expired) while we checked is not damaged.
        for backup_id in list(self.tree_damage):
            if not os.path.exists(self.catalog.path_of(backup_id)):
                del self.tree_damage[backup_id]
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
            write("backshift: object %s: %s\n" % (key.hex(), damage.reason))
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
        for backup_id in sorted(self.tree_damage):
            for path, reason in self.tree_damage[backup_id]:
                write("backshift: backup %s: %s: %s\n" % (backup_id, _show(path), reason))
            more = self.tree_damage_counts[backup_id] - len(self.tree_damage[backup_id])
            if more:
                write("backshift: backup %s: and %d more damaged entries\n" % (backup_id, more))
        damaged_backups = {backup_id for damage in damages.values() for backup_id in damage.paths}
        damaged_backups.update(self.bad_records)
        damaged_backups.update(self.tree_damage)
        summary = "%d backups, %d objects" % (len(self.backups) + len(self.bad_records),
                                              self.objects_checked)
        if self.verify:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            summary += " (%s, %s/s)" % (human_bytes(self.bytes_checked),
                                        human_bytes(self.bytes_checked / elapsed))
        problems = len(self.bad_records) + len(damages) + len(unused) + len(self.tree_damage)
        if problems:
            write("backshift: %s: %s; %d damaged objects; %d damaged backups\n"
                  % ("verify" if self.verify else "check", summary,
                     len(damages) + len(unused), len(damaged_backups)))
        elif self.progress.enabled:
            write("backshift: %s: %s: all healthy\n"
                  % ("verify" if self.verify else "check", summary))
        self.out.flush()
        return problems


    def _report_temp_files(self) -> None:
        """Temporary files of writers still running or killed: worth a line, not an error.

        Those of writers on this host that are gone are removed."""
        count = size = removed = 0
        for path in list(self.objects.temp_files()) + list(self.catalog.temp_files()):
            if remove_if_writer_dead(path):
                removed += 1
                continue
            try:
                size += os.lstat(path).st_size
            except OSError:
                continue  # its writer renamed it just now
            count += 1
        if count or removed:
            self.out.write("backshift: note: %d temporary files (%d bytes) of writers running "
                           "or killed%s; --expire removes them after a day\n"
                           % (count, size, ", %d of dead writers on this host "
                              "removed" % removed if removed else ""))
            self.out.flush()


def _show(path: bytes) -> str:
    return quote_name(path).decode("utf-8", "replace") if path else "."


def run_check(savedir: SaveDir, verify: bool, out: TextIO) -> int:
    """``--check`` / ``--verify``: 0 if every backup is whole, 1 if anything is damaged."""
    return Checker(savedir, verify, out).run()
