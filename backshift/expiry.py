"""How expiry removes: backups a policy lets go, then the objects only they used.

``--expire [--keep-last N] [--keep-daily N] ... [--max-age D] [--dry-run]``

1. *Now* is read from the save directory's own clock (the mtime of a file
   created there), since the hosts writing to it may disagree with ours.
2. Backups are chosen by the retention policy (retention.py decides; this
   module gives it each unfinished backup's liveness): their records are
   removed.  ``--delete-backup`` removes named records instead.
3. Mark: every remaining backup's tree, unfinished ones included, is
   walked and the objects it refers to collected.
4. Protection time P: the earliest start (by the save directory's clock) of
   any remaining unfinished backup, or now, whichever is earlier, less the
   grace period.  A running backup touches (or writes) every object it
   uses after it starts, so everything it will refer to has an mtime after
   P and is kept even though no record names it yet.
5. Sweep: an unreferenced object older than P is renamed aside, looked at
   again, and put back if a backup touched it in between; otherwise it is
   unlinked.  A backup touching it after the rename finds it missing and
   stores it again (or re-reads the file).
6. Temporary files of writers dead for a day are removed.

A dry run makes the same decisions and the same mark, counts what the
sweep would remove, and changes nothing (it reads this host's clock, as
asking the save directory's would create a file there).

FORMAT.md, "Expiry", gives the full safety argument.
"""

import os
import time
from typing import BinaryIO, Iterable, Iterator, List, Optional, Sequence, Set, TextIO, Tuple

from .catalog import BackupRecord, CatalogError
from .atomic import TEMP_PREFIX, fsync_directory, remove_if_writer_dead, unique_suffix
from .objectstore import DIGEST_SIZE, ObjectStore
from .records import ChunkRef
from .report import EXIT_FATAL, EXIT_OK, EXIT_PARTIAL, StatusLine, human_bytes
from .retention import Decision, Policy, decide
from .savedir import SaveDir
from .tree import TreeReader, entry_chunks


DEFAULT_GRACE = "1h"
# An unfinished backup whose record was not replaced for this long, and for
# twice its checkpoint interval, is taken to be dead.
STALE_AFTER = 3600.0
# Timestamps of some file systems are coarse (FAT: 2 s) or lag the system
# clock by a tick; P is always moved back by this much more than the grace.
TIMESTAMP_MARGIN = 5.0
TEMP_MAX_AGE = 86400.0
# An object being judged is renamed to ".expire-<digest>-<unique>" first.
TRASH_PREFIX = ".expire-"


class ExpireError(Exception):
    """Expiry cannot go on safely; the message says why."""


def savedir_now(savedir: SaveDir) -> float:
    """The current time by the save directory's clock (NFS: the server's)."""
    directory = savedir.catalog.root
    path = os.path.join(directory, TEMP_PREFIX + unique_suffix(savedir.hostname))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        os.unlink(path)


class Heartbeat:
    """What the catalog's files say of one backup's liveness."""

    def __init__(self, record: BackupRecord, mtime: float) -> None:
        self.record = record
        self.mtime = mtime  # when the record was last replaced, save directory clock

    def stale(self, now: float) -> bool:
        limit = max(2 * self.record.checkpoint_interval, STALE_AFTER)
        return now - self.mtime > limit

    def started(self) -> float:
        """The backup's start by the save directory's clock, never overestimated.

        The record says when it was written by the writer's clock (updated)
        and its mtime says the same moment by the save directory's clock;
        their difference is the writer's clock offset.  Which clock stamps
        a touched object depends on the file system (NFS: the server's;
        sshfs: the writer's), so take the earlier reading.
        """
        by_writer = self.record.started.timestamp()
        offset = self.mtime - self.record.updated.timestamp()
        return min(by_writer, by_writer + offset)


def _age(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return "%d days" % (seconds // 86400)
    if seconds >= 2 * 3600:
        return "%d hours" % (seconds // 3600)
    return "%d minutes" % (seconds // 60)


def _refuse_unreadable(unreadable: Sequence[str]) -> None:
    if unreadable:
        raise ExpireError("backup records %s do not parse (see --check); not removing any "
                          "object they might use; if they cannot be repaired, remove them with "
                          "--delete-backup %s" % (", ".join(unreadable), " ".join(unreadable)))


def _unreferenced(name: str, referenced: Set[bytes]) -> bool:
    """Is ``name`` (in an object directory) an object no backup refers to?"""
    if len(name) != 2 * DIGEST_SIZE or name.startswith("."):
        return False
    try:
        return bytes.fromhex(name) not in referenced
    except ValueError:
        return False


def _allocated(st: os.stat_result) -> int:
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def protection_time(beats: Iterable[Heartbeat], now: float, grace: float) -> float:
    """Objects with an mtime at or after this are kept, referenced or not."""
    earliest = now
    for beat in beats:
        if not beat.record.complete:
            earliest = min(earliest, beat.started())
    return earliest - grace - TIMESTAMP_MARGIN


class Sweeper:
    """Removes unreferenced objects older than P (step 5 of the procedure)."""

    def __init__(self, objects: ObjectStore, progress: StatusLine) -> None:
        self.objects = objects
        self.progress = progress
        self.objects_removed = 0
        self.bytes_freed = 0
        self.objects_kept_recent = 0
        self.trash_restored = 0

    def object_dirs(self) -> Iterator[Tuple[int, str, List[str]]]:
        """(prefix, directory, names) of each object directory."""
        return self.objects.directories()

    def sweep(self, referenced: Set[bytes], protect: float) -> None:
        for prefix, directory, names in self.object_dirs():
            removed_here = 0
            for name in names:
                if name.startswith(TRASH_PREFIX):
                    self._restore_trash(directory, name)
                    continue
                if not _unreferenced(name, referenced):
                    continue
                freed = self._sweep_object(directory, name, protect)
                if freed is not None:
                    removed_here += 1
                    self.objects_removed += 1
                    self.bytes_freed += freed
            if removed_here and self.objects.durable:
                fsync_directory(directory)
            self.progress.show("expire: sweeping %d%%, %d objects removed, %s freed"
                               % ((prefix + 1) * 100 // 256, self.objects_removed,
                                  human_bytes(self.bytes_freed)))

    def count_sweepable(self, referenced: Set[bytes], protect: float) -> Tuple[int, int]:
        """How many objects, and how many bytes, a sweep would remove now."""
        objects, freed = 0, 0
        for _prefix, directory, names in self.object_dirs():
            for name in names:
                if not _unreferenced(name, referenced):
                    continue
                try:
                    st = os.lstat(os.path.join(directory, name))
                except FileNotFoundError:
                    continue
                if st.st_mtime < protect:
                    objects += 1
                    freed += _allocated(st)
        return objects, freed

    def _sweep_object(self, directory: str, name: str, protect: float) -> Optional[int]:
        """Remove one unreferenced object unless it was used since P; bytes freed or None."""
        path = os.path.join(directory, name)
        try:
            if os.lstat(path).st_mtime >= protect:
                self.objects_kept_recent += 1
                return None
        except FileNotFoundError:
            return None
        trash = os.path.join(directory, "%s%s-%s" % (TRASH_PREFIX, name,
                                                      unique_suffix(self.objects.hostname)))
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        # A backup may have touched the object between the lstat and the
        # rename.  Opening (not just stat'ing) makes NFS fetch fresh attributes.
        try:
            fd = os.open(trash, os.O_RDONLY)
        except FileNotFoundError:
            return None  # another expire put it back meanwhile
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if st.st_mtime >= protect:
            self._put_back(trash, path)
            self.objects_kept_recent += 1
            return None
        try:
            os.unlink(trash)
        except FileNotFoundError:
            return None
        return _allocated(st)

    @staticmethod
    def _put_back(trash: str, path: str) -> None:
        try:
            os.rename(trash, path)  # onto a fresh copy a backup just stored: same bytes
        except FileNotFoundError:
            pass
        except OSError:
            if os.path.exists(path):  # file systems that refuse to replace
                os.unlink(trash)
            else:
                raise

    def _restore_trash(self, directory: str, name: str) -> None:
        """An object left aside by an expire that died (or is running): put it back."""
        digest_hex = name[len(TRASH_PREFIX):len(TRASH_PREFIX) + 2 * DIGEST_SIZE]
        try:
            bytes.fromhex(digest_hex)
        except ValueError:
            return
        if len(digest_hex) != 2 * DIGEST_SIZE:
            return
        trash = os.path.join(directory, name)
        path = os.path.join(directory, digest_hex)
        try:
            if os.path.exists(path):
                os.unlink(trash)
            else:
                os.rename(trash, path)
            self.trash_restored += 1
        except FileNotFoundError:
            pass


class Expiry:
    """One run of --expire over an opened save directory."""

    def __init__(self, savedir: SaveDir, policy: Policy, grace: float,
                 hostname: Optional[str], subset: Optional[str], err: TextIO,
                 verbose: bool) -> None:
        self.savedir = savedir
        self.objects = savedir.objects
        self.catalog = savedir.catalog
        self.policy = policy
        self.grace = grace
        self.hostname = hostname
        self.subset = subset
        self.err = err
        self.verbose = verbose
        self.progress = StatusLine(err)
        self.sweeper = Sweeper(savedir.objects, self.progress)
        self.backups_removed = 0
        self.temps_removed = 0

    def decisions(self, beats: Sequence[Heartbeat], now: float) -> List[Decision]:
        """The policy's verdict on every backup of the chosen hosts and subsets."""
        chosen = [beat for beat in beats
                  if (self.hostname is None or beat.record.hostname == self.hostname)
                  and (self.subset is None or beat.record.subset == self.subset)]
        live = {beat.record.backup_id for beat in chosen
                if not beat.record.complete and not beat.stale(now)}
        return decide([beat.record for beat in chosen], now, self.policy, live)

    def run(self) -> int:
        now = savedir_now(self.savedir)
        beats, unreadable = self._heartbeats()
        silence = {beat.record.backup_id: now - beat.mtime for beat in beats}
        for decision in self.decisions(beats, now):
            if not decision.keep:
                self._remove_backup(decision.record, decision.reasons[0],
                                    silence[decision.record.backup_id])
        status = EXIT_OK
        try:
            _refuse_unreadable(unreadable)
            # Listed again: a backup that began meanwhile is seen, or else it
            # began after `now` and touches everything it uses after P.
            beats, unreadable = self._heartbeats()
            _refuse_unreadable(unreadable)
            protect = protection_time(beats, now, self.grace)
            referenced = self._mark(beats)
            self.sweeper.sweep(referenced, protect)
        except ExpireError as exc:
            self.progress.clear()
            self.err.write("backshift: expire: %s\n" % exc)
            status = EXIT_PARTIAL
        self._remove_temporaries(now)
        self.progress.clear()
        if self.verbose:
            self.err.write("backshift: expire: removed %d backups and %d objects, %s freed; "
                           "kept %d unreferenced recent objects\n"
                           % (self.backups_removed, self.sweeper.objects_removed,
                              human_bytes(self.sweeper.bytes_freed),
                              self.sweeper.objects_kept_recent))
        return status

    def dry_run(self, out: BinaryIO) -> int:
        """Say what run() would do, from the same decisions and a real mark; change nothing."""
        now = time.time()
        beats, unreadable = self._heartbeats()
        decisions = self.decisions(beats, now)
        for decision in decisions:
            out.write(("%-6s %s  %s\n" % ("keep" if decision.keep else "remove",
                                           decision.record.backup_id,
                                           ", ".join(decision.reasons))).encode())
        removed = {decision.record.backup_id for decision in decisions if not decision.keep}
        remaining = [beat for beat in beats if beat.record.backup_id not in removed]
        try:
            _refuse_unreadable(unreadable)
            referenced = self._mark(remaining)
        except ExpireError as exc:
            self.progress.clear()
            out.flush()
            self.err.write("backshift: expire: %s\n" % exc)
            return EXIT_PARTIAL
        protect = protection_time(remaining, now, self.grace)
        objects, freed = self.sweeper.count_sweepable(referenced, protect)
        self.progress.clear()
        out.write(("dry run: would remove %d backups, then %d objects (%s)\n"
                   % (len(removed), objects, human_bytes(freed))).encode())
        out.flush()
        return EXIT_OK

    # -- the catalog -----------------------------------------------------------

    def _heartbeats(self) -> Tuple[List[Heartbeat], List[str]]:
        beats: List[Heartbeat] = []
        unreadable: List[str] = []
        for backup_id in self.catalog.ids():
            try:
                mtime = self.catalog.modified_time(backup_id)
                record = self.catalog.read(backup_id)
            except FileNotFoundError:
                continue  # removed meanwhile (another expire)
            except CatalogError:
                if os.path.exists(self.catalog.path_of(backup_id)):
                    unreadable.append(backup_id)
                continue
            beats.append(Heartbeat(record, mtime))
        # Ids sort by the second a backup started; two may share one.
        beats.sort(key=lambda beat: beat.record.started)
        return beats, unreadable

    def _remove_backup(self, record: BackupRecord, reason: str, silent_for: float) -> None:
        try:
            self.catalog.remove(record.backup_id)
        except FileNotFoundError:
            return  # another expire was first
        self.backups_removed += 1
        if self.verbose:
            if not record.complete and record.finished is None:
                reason += ", no sign of life for %s" % _age(silent_for)
            self.err.write("backshift: expire: removed backup %s (%s)\n"
                           % (record.backup_id, reason))

    # -- mark --------------------------------------------------------------------

    def _mark(self, beats: Sequence[Heartbeat]) -> Set[bytes]:
        """Every object the given backups refer to."""
        referenced: Set[bytes] = set()
        seen: Set[bytes] = set()
        reader = TreeReader(self.objects)
        for beat in beats:
            record: Optional[BackupRecord] = beat.record
            walked = seen
            while record is not None and record.root is not None:
                damage = self._mark_tree(reader, record.root, referenced, walked)
                if damage is None:
                    break
                # On a second look, walk it all: a directory skipped as already
                # walked could hold the same damage.
                walked = set()
                # Replaced (a checkpoint) or removed while we read it?  Then
                # read what is there now; otherwise the backup is damaged.
                current = self._reread(record)
                if current is not None and current.root == record.root:
                    raise ExpireError("backup %s is damaged (%s; see --check); not removing "
                                      "any object until it is repaired or expired"
                                      % (record.backup_id, damage))
                record = current
        return referenced

    def _mark_tree(self, reader: TreeReader, root: Sequence[ChunkRef], referenced: Set[bytes],
                   seen: Set[bytes]) -> Optional[str]:
        problems: List[str] = []

        def on_damage(path: bytes, reason: str) -> None:
            problems.append(reason)

        referenced.update(digest for digest, _length in root)
        # Not strict: an entry the reader's rules reject still keeps its
        # objects, and does not block expiry.
        for _path, entry in reader.walk(root, include_implicit=True, on_damage=on_damage,
                                        strict=False, seen=seen):
            referenced.update(digest for digest, _length in entry_chunks(entry))
            self.progress.show("expire: %d objects in use" % len(referenced))
        return problems[0] if problems else None

    def _reread(self, record: BackupRecord) -> Optional[BackupRecord]:
        try:
            return self.catalog.read(record.backup_id)
        except CatalogError:
            if os.path.exists(self.catalog.path_of(record.backup_id)):
                raise ExpireError("backup record %s does not parse" % record.backup_id) from None
            return None

    # -- leftovers of dead writers ---------------------------------------------

    def _remove_temporaries(self, now: float) -> None:
        """Those of writers provably dead, and any older than a day (FORMAT.md)."""
        for path in list(self.objects.temp_files()) + list(self.catalog.temp_files()):
            if remove_if_writer_dead(path):
                self.temps_removed += 1
                continue
            try:
                if now - os.lstat(path).st_mtime > TEMP_MAX_AGE:
                    os.unlink(path)
                    self.temps_removed += 1
            except FileNotFoundError:
                continue


def run_expire(savedir: SaveDir, policy: Policy, grace: float, hostname: Optional[str],
               subset: Optional[str], dry_run: bool, out: BinaryIO, err: TextIO,
               verbose: bool) -> int:
    """``--expire``: remove the backups the policy lets go, then every object no backup uses."""
    if not policy.has_rule():
        err.write("backshift: --expire needs a rule saying what to keep, e.g. --keep-daily 7 "
                  "--keep-weekly 5 --keep-monthly 12, or --max-age 90d "
                  "(see backshift --help)\n")
        return EXIT_FATAL
    expiry = Expiry(savedir, policy, grace, hostname, subset, err, verbose)
    return expiry.dry_run(out) if dry_run else expiry.run()


def run_delete(savedir: SaveDir, backup_ids: Sequence[str], err: TextIO, verbose: bool) -> int:
    """``--delete-backup``: remove these records (all or none); --expire frees their objects."""
    catalog = savedir.catalog
    present = set(catalog.ids())
    unknown = [backup_id for backup_id in backup_ids if backup_id not in present]
    if unknown:
        err.write("backshift: no backup with id %s (see --list-backups); nothing deleted\n"
                  % ", ".join(unknown))
        return EXIT_FATAL
    for backup_id in dict.fromkeys(backup_ids):
        try:
            catalog.remove(backup_id)
        except FileNotFoundError:
            continue  # removed meanwhile (an expire)
        if verbose:
            err.write("backshift: deleted backup %s; --expire frees the space only it used\n"
                      % backup_id)
    return EXIT_OK
