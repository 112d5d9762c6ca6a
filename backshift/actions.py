"""What each action of the command line does, given plain arguments.

cli.py parses and checks the options and calls one of these; they write
their output and messages and return the exit status.
"""

import errno
import io
import os
from typing import BinaryIO, Callable, Iterable, List, Optional, Tuple

from .backup import Backup, BackupOptions
from .catalog import STATE_FAILED, BackupRecord, CatalogError, describe_filter, select
from .diffing import diff
from .finding import find
from .listing import (backup_summary, backup_totals, entry_json, find_line, json_line,
                      list_backup, list_backups, quote_name, shown_name)
from .progress import ProgressReporter, make_reporter
from .report import EXIT_FATAL, EXIT_OK, EXIT_PARTIAL, is_terminal
from .savedir import SaveDir
from .tarout import produce_tar
from .tree import TreeReader

OnDamage = Callable[[bytes, str], None]


def note_strays(savedir: SaveDir, stderr) -> None:
    """One note per file among the backup records that is not one."""
    for name in savedir.catalog.strays():
        stderr.write("backshift: note: %s: not a backup record (its name is not a backup "
                     "id); ignored\n" % os.path.join(savedir.catalog.root, name))


def run_backup(savedir: SaveDir, options: BackupOptions, level: str, as_json: bool,
               open_paths: Callable[[], Iterable[bytes]], stdout: BinaryIO, stderr) -> int:
    """Back up the paths ``open_paths()`` gives, with a progress report of ``level``."""
    reporter, inhale = make_reporter(level, stderr)
    try:
        paths = open_paths()
        if inhale:
            paths = reporter.inhale(paths)  # type: ignore[attr-defined]
        backup = Backup(savedir, options, reporter)
        if isinstance(reporter, ProgressReporter):
            reporter.watch(backup.store)
        try:
            record = backup.run(paths)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            stderr.write(_full_message(savedir, backup.record.backup_id, exc))
            return EXIT_FATAL
    finally:
        reporter.finish()
    if level != "none":
        stderr.write("backshift: %s\n" % backup_summary(record))
    if as_json:
        stdout.write(json_line(backup_totals(record)))
        stdout.flush()
    return EXIT_PARTIAL if record.errors or record.state == STATE_FAILED else EXIT_OK


def _full_message(savedir: SaveDir, backup_id: str, exc: OSError) -> str:
    """The one line for a save directory that filled up during a backup."""
    line = "backshift: %s: %s" % (savedir.path, exc.strerror or "No space left on device")
    if backup_id in savedir.catalog.ids():
        line += ("; the unfinished backup %s holds space: free it with --delete-backup %s, "
                 "then --expire (README, \"Save directory full\")" % (backup_id, backup_id))
    return line + "\n"


def run_list_backups(savedir: SaveDir, hostname: Optional[str], subset: Optional[str],
                     last_n: Optional[int], as_json: bool, stdout: BinaryIO) -> int:
    """The backups of ``hostname`` and ``subset`` (all when None), the newest ``last_n``."""
    records = select(savedir.catalog.records(), hostname, subset)
    if last_n is not None:
        records = records[-last_n:]
    form = "json" if as_json else "table" if is_terminal(stdout) else "tsv"
    list_backups(records, stdout, form)
    stdout.flush()
    return EXIT_OK


def chosen_record(savedir: SaveDir, backup_id: str, hostname: Optional[str],
                  subset: Optional[str]) -> BackupRecord:
    """The backup an id names; 'latest' is the newest complete one of ``hostname`` and ``subset``."""
    if backup_id == "latest":
        record = savedir.catalog.latest(hostname, subset)
    else:
        try:
            record = savedir.catalog.read(backup_id)
        except CatalogError as exc:
            recent = savedir.catalog.ids()[-5:]
            hint = "; recent ids: " + ", ".join(recent) if recent \
                else "; the save directory has no backups"
            raise CatalogError(str(exc) + hint) from None
        if (hostname is not None and record.hostname != hostname) or \
                (subset is not None and record.subset != subset):
            raise CatalogError("backup %s is not%s" % (backup_id,
                                                       describe_filter(hostname, subset)))
    if record.root is None:
        raise CatalogError("backup %s has no saved files yet (it was interrupted at once)"
                           % record.backup_id)
    return record


def _damage_reporter(stderr) -> Tuple[OnDamage, List[int]]:
    """An on_damage handler writing one line per damage found, and its count."""
    count = [0]

    def on_damage(path: bytes, reason: str) -> None:
        count[0] += 1
        stderr.write("backshift: %s: damaged: %s\n" % (_shown(path), reason))
    return on_damage, count


def _shown(path: bytes) -> str:
    """A path for one line of a message (control characters escaped)."""
    return quote_name(path).decode("utf-8", "replace") if path else "."


class _Unclosable(io.RawIOBase):
    """Lets a BufferedWriter batch writes to a stream it must not close."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._stream.write(data)
        return len(data)

    def flush(self) -> None:
        self._stream.flush()


def _buffered(stdout: BinaryIO, size: int = 1 << 16) -> io.BufferedWriter:
    return io.BufferedWriter(_Unclosable(stdout), size)


def _subtree(savedir: SaveDir, record: BackupRecord, starting_directory: Optional[str],
             stderr) -> Tuple[bytes, OnDamage, List[int]]:
    """The start of a listing or restore of ``record``, and its damage reporter.

    Refuses a starting directory the backup does not hold.
    """
    if not record.complete:
        # Still running, or stopped: what its last checkpoint saved is all there is.
        stderr.write("backshift: note: backup %s is unfinished; it holds the files saved "
                     "up to its last checkpoint\n" % record.backup_id)
    start = os.fsencode(starting_directory or "")
    # Damage is named, skipped, exit 1: the rest of the backup is still worth having.
    on_damage, damaged = _damage_reporter(stderr)
    if starting_directory and not TreeReader(savedir.objects).lookup(record.root, start,
                                                                      on_damage):
        raise CatalogError("%s: not in backup %s" % (starting_directory, record.backup_id))
    return start, on_damage, damaged


def run_list_backup(savedir: SaveDir, record: BackupRecord, starting_directory: Optional[str],
                    simply: bool, recursive: bool, as_json: bool, stdout: BinaryIO,
                    stderr) -> int:
    """List the files of ``record`` (names only when ``simply``), as tar tvf would."""
    start, on_damage, damaged = _subtree(savedir, record, starting_directory, stderr)
    out = _buffered(stdout)
    list_backup(TreeReader(savedir.objects), record.root, start, out, simply=simply,
                recursive=recursive, as_json=as_json, on_damage=on_damage)
    out.flush()
    return EXIT_PARTIAL if damaged[0] else EXIT_OK


def run_produce_tar(savedir: SaveDir, record: BackupRecord, starting_directory: Optional[str],
                    recursive: bool, tar_format: str, stdout: BinaryIO, stderr) -> int:
    """Write ``record`` (or its subtree) as a tar stream of ``tar_format`` on ``stdout``."""
    start, on_damage, damaged = _subtree(savedir, record, starting_directory, stderr)

    def on_skip(path: bytes, reason: str) -> None:
        # One entry the format cannot hold must not cost the rest of the
        # restore: report it, keep the stream well formed, exit 1.
        stderr.write("backshift: %s\n" % reason)

    out = _buffered(stdout, 1 << 20)
    writer = produce_tar(savedir.objects, record.root, start, out, tar_format, on_damage,
                         on_skip, recursive=recursive)
    out.flush()
    if writer.attrs_dropped:
        stderr.write("backshift: note: %d entries have extended attributes or ACLs that %s "
                     "format cannot hold; --tar-format pax keeps them\n"
                     % (writer.attrs_dropped, tar_format))
    return EXIT_PARTIAL if damaged[0] or writer.damaged or writer.skipped else EXIT_OK


def run_find(savedir: SaveDir, pattern: str, backup_id: Optional[str],
             hostname: Optional[str], subset: Optional[str],
             starting_directory: Optional[str], as_json: bool, stdout: BinaryIO,
             stderr) -> int:
    """Every entry matching ``pattern`` in the backups chosen, one line each."""
    if backup_id is not None:
        records = [chosen_record(savedir, backup_id, hostname, subset)]
    else:
        records = select(savedir.catalog.records(), hostname, subset)
    out = _buffered(stdout)

    def on_match(record: BackupRecord, path: bytes, entry) -> None:
        out.write(json_line(entry_json(path, entry, record.backup_id)) if as_json
                  else find_line(record.backup_id, path, entry))

    on_damage, damaged = _damage_reporter(stderr)
    find(TreeReader(savedir.objects), records, os.fsencode(pattern),
         os.fsencode(starting_directory or ""), on_match, on_damage)
    out.flush()
    return EXIT_PARTIAL if damaged[0] else EXIT_OK


def run_diff(savedir: SaveDir, old_id: str, new_id: str, hostname: Optional[str],
             subset: Optional[str], starting_directory: Optional[str], stdout: BinaryIO,
             stderr) -> int:
    """The paths added, removed or changed from backup ``old_id`` to ``new_id``."""
    old, new = (chosen_record(savedir, backup_id, hostname, subset)
                for backup_id in (old_id, new_id))
    out = _buffered(stdout)

    def on_change(letter: str, path: bytes, entry) -> None:
        out.write(letter.encode() + b"\t" + shown_name(path, entry) + b"\n")

    on_damage, damaged = _damage_reporter(stderr)
    diff(TreeReader(savedir.objects), old, new, os.fsencode(starting_directory or ""),
         on_change, on_damage)
    out.flush()
    return EXIT_PARTIAL if damaged[0] else EXIT_OK
