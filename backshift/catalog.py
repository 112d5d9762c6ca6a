"""The catalog: one small record per backup under ``backups/``.

A backup record is a JSON document in ``backups/<backup id>``.  It is
replaced (temporary file + rename, never rewritten in place) at every
checkpoint while the backup runs, and a last time when it completes.  Its
``state`` is ``"unfinished"`` until every object it refers to is durable.
"""

import datetime
import json
import os
import re
from typing import Any, Dict, Iterator, List, Optional, Set

from .atomic import TEMP_PREFIX, fsync_directory, write_file_atomically
from .records import ChunkRef

BACKUPS_DIR = "backups"
# The backup record's own version (its "format" field; FORMAT.md, "Versions").
RECORD_VERSION = 1
STATE_UNFINISHED = "unfinished"
STATE_COMPLETE = "complete"
# Finished, but nothing was saved: every path given failed (see FORMAT.md).
STATE_FAILED = "failed"
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.+=-]")
# What make_backup_id makes: any other name in backups/ is not a record.
_BACKUP_ID = re.compile(r"^\d{8}T\d{6}Z-[A-Za-z0-9.+=_-]+-[0-9a-f]{4}$")


class CatalogError(Exception):
    """A backup record that is missing or does not parse."""


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def format_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)


def make_backup_id(started: datetime.datetime, hostname: str, subset: str) -> str:
    """An id that sorts by start time and names host and subset."""
    return "%s-%s-%s-%s" % (started.strftime("%Y%m%dT%H%M%SZ"),
                            _ID_UNSAFE.sub("_", hostname) or "_",
                            _ID_UNSAFE.sub("_", subset) or "_", os.urandom(2).hex())


def is_backup_id(name: str) -> bool:
    return _BACKUP_ID.match(name) is not None


class BackupRecord:
    """What the catalog knows of one backup."""

    def __init__(self, backup_id: str, hostname: str, subset: str,
                 started: datetime.datetime) -> None:
        self.backup_id = backup_id
        self.hostname = hostname
        self.subset = subset
        self.started = started
        self.finished: Optional[datetime.datetime] = None
        self.updated = started
        self.state = STATE_UNFINISHED
        self.root: Optional[List[ChunkRef]] = None
        self.files = 0
        self.bytes = 0
        self.errors = 0
        self.compression = ""
        self.checkpoints = 0
        # Seconds between checkpoints: the record's mtime is replaced at least
        # this often while the backup lives (expiry judges liveness by it).
        self.checkpoint_interval = 300.0
        # How much of the tree came from earlier backups without reading
        # the source, and how many content bytes were read from it.
        self.files_reused = 0
        self.bytes_reused = 0
        self.bytes_read = 0
        # Compressed bytes of the objects this backup added to the save
        # directory (what it cost after deduplication and compression).
        self.bytes_added = 0

    @property
    def complete(self) -> bool:
        return self.state == STATE_COMPLETE

    def to_json(self) -> bytes:
        document: Dict[str, Any] = {
            "format": RECORD_VERSION,
            "id": self.backup_id,
            "hostname": self.hostname,
            "subset": self.subset,
            "state": self.state,
            "started": format_time(self.started),
            "updated": format_time(self.updated),
            "finished": format_time(self.finished) if self.finished else None,
            "root": [[digest.hex(), length] for digest, length in self.root]
            if self.root is not None else None,
            "files": self.files,
            "bytes": self.bytes,
            "errors": self.errors,
            "compression": self.compression,
            "checkpoints": self.checkpoints,
            "checkpoint_interval": self.checkpoint_interval,
            "files_reused": self.files_reused,
            "bytes_reused": self.bytes_reused,
            "bytes_read": self.bytes_read,
            "bytes_added": self.bytes_added,
        }
        return (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, blob: bytes) -> "BackupRecord":
        try:
            document = json.loads(blob.decode("utf-8"))
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
            if document.get("format", RECORD_VERSION) != RECORD_VERSION:
                raise CatalogError("backup record version %r is not supported"
                                   % document["format"])
            record = cls(document["id"], document["hostname"], document["subset"],
                         parse_time(document["started"]))
            record.state = document["state"]
            record.updated = parse_time(document["updated"])
            if document["finished"]:
                record.finished = parse_time(document["finished"])
            if document["root"] is not None:
                record.root = [(bytes.fromhex(digest), int(length))
                               for digest, length in document["root"]]
            record.files = int(document["files"])
            record.bytes = int(document["bytes"])
            record.errors = int(document.get("errors", 0))
            record.compression = document.get("compression", "")
            record.checkpoints = int(document.get("checkpoints", 0))
            record.checkpoint_interval = float(document.get("checkpoint_interval", 300.0))
            record.files_reused = int(document.get("files_reused", 0))
            record.bytes_reused = int(document.get("bytes_reused", 0))
            record.bytes_read = int(document.get("bytes_read", 0))
            record.bytes_added = int(document.get("bytes_added", 0))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CatalogError("backup record does not parse: %s" % exc) from None
        if record.state not in (STATE_UNFINISHED, STATE_COMPLETE, STATE_FAILED):
            raise CatalogError("backup record has unknown state %r" % record.state)
        return record


class Catalog:
    """Reads, writes and removes backup records in ``<save directory>/backups``."""

    def __init__(self, savedir: str, hostname: str, durable: bool = True) -> None:
        self.root = os.path.join(savedir, BACKUPS_DIR)
        self.hostname = hostname
        self.durable = durable
        # Records this process published: replacing one that has vanished
        # means expiry removed it (see write).
        self._published: Set[str] = set()

    @staticmethod
    def create_layout(savedir: str) -> None:
        os.makedirs(os.path.join(savedir, BACKUPS_DIR), mode=0o700, exist_ok=True)

    def ids(self) -> List[str]:
        """Backup ids, oldest first (by the second each started)."""
        return sorted(name for name in os.listdir(self.root) if is_backup_id(name))

    def strays(self) -> List[str]:
        """Names in ``backups/`` that are not backup ids (a README, say): ignored."""
        return sorted(name for name in os.listdir(self.root)
                      if not name.startswith(".") and not is_backup_id(name))

    def path_of(self, backup_id: str) -> str:
        if "/" in backup_id or backup_id.startswith(".") or not backup_id:
            raise CatalogError("no backup with id %r" % backup_id)
        return os.path.join(self.root, backup_id)

    def read(self, backup_id: str) -> BackupRecord:
        try:
            with open(self.path_of(backup_id), "rb") as handle:
                blob = handle.read()
        except FileNotFoundError:
            raise CatalogError("no backup with id %r" % backup_id) from None
        except OSError as exc:
            raise CatalogError("backup %s: %s" % (backup_id, exc.strerror)) from None
        try:
            return BackupRecord.from_json(blob)
        except CatalogError as exc:
            raise CatalogError("backup %s: %s" % (backup_id, exc)) from None

    def records(self) -> Iterator[BackupRecord]:
        """Every readable record, oldest first; unreadable ones are skipped."""
        for backup_id in self.ids():
            try:
                yield self.read(backup_id)
            except CatalogError:
                continue

    def write(self, record: BackupRecord) -> None:
        """Publish a record atomically (the caller has made its objects durable)."""
        if record.backup_id in self._published and \
                not os.path.exists(self.path_of(record.backup_id)):
            # --expire took this backup for dead (no heartbeat for an hour)
            # and removed it: objects it counted on may be gone too.
            raise CatalogError("backup %s: its record was removed while it ran (by --expire, "
                               "after no sign of life for too long); objects it relies on "
                               "may be gone: run the backup again" % record.backup_id)
        record.updated = utc_now()
        write_file_atomically(self.root, record.backup_id, record.to_json(), self.hostname,
                              self.durable)
        if self.durable:
            fsync_directory(self.root)
        self._published.add(record.backup_id)

    def remove(self, backup_id: str) -> None:
        os.unlink(self.path_of(backup_id))
        if self.durable:
            fsync_directory(self.root)

    def modified_time(self, backup_id: str) -> float:
        """When the record was last replaced, by the save directory's clock."""
        return os.stat(self.path_of(backup_id)).st_mtime

    def temp_files(self) -> Iterator[str]:
        for name in os.listdir(self.root):
            if name.startswith(TEMP_PREFIX):
                yield os.path.join(self.root, name)
