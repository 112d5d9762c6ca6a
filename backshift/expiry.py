"""How expiry decides: which backups go, and which objects may then go.

``--expire --max-age DURATION [--keep-last N] [--hostname H] [--subset S]``

1. *Now* is read from the save directory's own clock (the mtime of a file
   created there), since the hosts writing to it may disagree with ours.
2. Backups are chosen (``choose_expired``): complete ones finished longer
   ago than the age, except the newest N complete ones of each host and
   subset; unfinished ones started longer ago than the age whose record
   has not been replaced for a long time (their writer is dead).  Their
   records are removed.
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

FORMAT.md, "Expiry", gives the full safety argument.
"""

import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Set, TextIO, Tuple

from .catalog import BackupRecord, CatalogError
from .atomic import TEMP_PREFIX, fsync_directory, unique_suffix
from .objectstore import DIGEST_SIZE
from .records import ChunkRef
from .report import EXIT_FATAL, EXIT_OK, EXIT_PARTIAL, StatusLine, human_bytes, is_terminal
from .savedir import SaveDir
from .tree import TreeReader, entry_chunks


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdwy])\s*$")
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


def parse_duration(text: str) -> float:
    """Seconds in a duration such as 90d, 12w, 1y, 3600s, 0s, 36h or 15m."""
    match = _DURATION.match(text or "")
    if not match:
        raise ValueError("%r is not a duration (a number and one of s, m, h, d, w, y: "
                         "90d, 12w, 1y, 3600s)" % text)
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


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


def choose_expired(beats: Sequence[Heartbeat], now: float, max_age: float, keep_last: int,
                   hostname: Optional[str] = None,
                   subset: Optional[str] = None) -> List[Tuple[BackupRecord, str]]:
    """Backups to remove, each with the reason; ``beats`` oldest first."""
    newest_kept: Set[str] = set()
    groups: Dict[Tuple[str, str], List[BackupRecord]] = {}
    for beat in beats:
        if beat.record.complete:
            groups.setdefault((beat.record.hostname, beat.record.subset), []).append(beat.record)
    for records in groups.values():
        for record in records[len(records) - keep_last:] if keep_last > 0 else []:
            newest_kept.add(record.backup_id)
    chosen: List[Tuple[BackupRecord, str]] = []
    for beat in beats:
        record = beat.record
        if hostname is not None and record.hostname != hostname:
            continue
        if subset is not None and record.subset != subset:
            continue
        if record.complete:
            finished = (record.finished or record.updated).timestamp()
            if now - finished >= max_age and record.backup_id not in newest_kept:
                chosen.append((record, "complete, finished %s"
                               % record.finished.strftime("%Y-%m-%d %H:%M:%SZ")
                               if record.finished else "complete"))
        elif now - record.started.timestamp() >= max_age and beat.stale(now):
            chosen.append((record, "unfinished, no sign of life for %s"
                           % _age(now - beat.mtime)))
    return chosen


def _age(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return "%d days" % (seconds // 86400)
    if seconds >= 2 * 3600:
        return "%d hours" % (seconds // 3600)
    return "%d minutes" % (seconds // 60)


def protection_time(beats: Iterable[Heartbeat], now: float, grace: float) -> float:
    """Objects with an mtime at or after this are kept, referenced or not."""
    earliest = now
    for beat in beats:
        if not beat.record.complete:
            earliest = min(earliest, beat.started())
    return earliest - grace - TIMESTAMP_MARGIN


class Expiry:
    """One run of --expire over an opened save directory."""

    def __init__(self, savedir: SaveDir, max_age: float, keep_last: int, grace: float,
                 hostname: Optional[str], subset: Optional[str], out: TextIO,
                 verbose: bool) -> None:
        self.savedir = savedir
        self.objects = savedir.objects
        self.catalog = savedir.catalog
        self.max_age = max_age
        self.keep_last = keep_last
        self.grace = grace
        self.hostname = hostname
        self.subset = subset
        self.out = out
        self.verbose = verbose
        self.progress = StatusLine(out)
        self.backups_removed = 0
        self.objects_removed = 0
        self.bytes_freed = 0
        self.objects_kept_recent = 0
        self.temps_removed = 0
        self.trash_restored = 0

    def run(self) -> int:
        now = savedir_now(self.savedir)
        beats, unreadable = self._heartbeats()
        for record, reason in choose_expired(beats, now, self.max_age, self.keep_last,
                                             self.hostname, self.subset):
            self._remove_backup(record, reason)
        status = EXIT_OK
        try:
            if unreadable:
                raise ExpireError("backup records %s do not parse (see --check); not removing "
                                  "any object they might use" % ", ".join(unreadable))
            # Listed again: a backup that began meanwhile is seen, or else it
            # began after `now` and touches everything it uses after P.
            beats, unreadable = self._heartbeats()
            if unreadable:
                raise ExpireError("backup records %s do not parse (see --check); not removing "
                                  "any object they might use" % ", ".join(unreadable))
            protect = protection_time(beats, now, self.grace)
            referenced = self._mark(beats)
            self._sweep(referenced, protect)
        except ExpireError as exc:
            self.progress.clear()
            self.out.write("backshift: expire: %s\n" % exc)
            status = EXIT_PARTIAL
        self._remove_temporaries(now)
        self.progress.clear()
        if self.verbose:
            self.out.write("backshift: expire: removed %d backups and %d objects, %s freed; "
                           "kept %d unreferenced recent objects\n"
                           % (self.backups_removed, self.objects_removed,
                              human_bytes(self.bytes_freed), self.objects_kept_recent))
        return status

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

    def _remove_backup(self, record: BackupRecord, reason: str) -> None:
        try:
            self.catalog.remove(record.backup_id)
        except FileNotFoundError:
            return  # another expire was first
        self.backups_removed += 1
        if self.verbose:
            self.out.write("backshift: expire: removed backup %s (%s)\n"
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

    # -- sweep -------------------------------------------------------------------

    def _sweep(self, referenced: Set[bytes], protect: float) -> None:
        for prefix in range(256):
            directory = os.path.join(self.objects.root, "%02x" % prefix)
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                continue
            removed_here = 0
            for name in names:
                if name.startswith(TRASH_PREFIX):
                    self._restore_trash(directory, name)
                    continue
                if len(name) != 2 * DIGEST_SIZE or name.startswith("."):
                    continue
                try:
                    digest = bytes.fromhex(name)
                except ValueError:
                    continue
                if digest in referenced:
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
                                                      unique_suffix(self.savedir.hostname)))
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
        return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size

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

    # -- leftovers of dead writers ---------------------------------------------

    def _remove_temporaries(self, now: float) -> None:
        for path in list(self.objects.temp_files()) + list(self.catalog.temp_files()):
            try:
                if now - os.lstat(path).st_mtime > TEMP_MAX_AGE:
                    os.unlink(path)
                    self.temps_removed += 1
            except FileNotFoundError:
                continue


def run_expire(savedir: SaveDir, args, stderr: TextIO) -> int:
    """``--expire``: remove old backups, then every object no backup uses."""
    if args.max_age is None:
        stderr.write("backshift: --expire needs --max-age (e.g. --max-age 90d; --max-age 0s "
                     "--keep-last N keeps only the newest N) (see backshift --help)\n")
        return EXIT_FATAL
    try:
        max_age = parse_duration(args.max_age)
        grace = parse_duration(getattr(args, "expire_grace", None) or DEFAULT_GRACE)
    except ValueError as exc:
        stderr.write("backshift: %s (see backshift --help)\n" % exc)
        return EXIT_FATAL
    if args.keep_last < 0:
        stderr.write("backshift: --keep-last must not be negative (see backshift --help)\n")
        return EXIT_FATAL
    level = getattr(args, "progress_report", None)
    verbose = (level not in (None, "none")) or (level is None and is_terminal(stderr))
    return Expiry(savedir, max_age, args.keep_last, grace, args.hostname, args.subset,
                  stderr, verbose).run()

