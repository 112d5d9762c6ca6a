"""The backshift command line.

Exit status: 0 all well; 1 some files were not saved, changed while being
read, or are damaged in the save directory; 2 a fatal error (bad options, no
save directory, unknown backup id).
"""

import argparse
import contextlib
import errno
import io
import os
import sys
from typing import BinaryIO, Iterable, Optional, Sequence

from . import __version__
from .actions import (chosen_record, note_strays, run_backup, run_diff, run_find,
                      run_list_backup, run_list_backups, run_produce_tar)
from .backup import BackupOptions
from .catalog import CatalogError
from .compression import CompressionSpec
from .pathinput import InputError, iter_nul_paths
from .objectstore import ObjectError
from .progress import LEVELS
from .report import EXIT_FATAL, EXIT_OK, is_terminal
from .retention import Policy, parse_duration
from .records import RecordError
from .savedir import SaveDir, SaveDirError, default_hostname, init_savedir
from .tarout import TarFormatError

EXAMPLES = """\
examples:
  back up a root file system into a save directory on another disk:
    find / -xdev -print0 | backshift --save-directory /where/ever/save-directory --backup --subset root

  pull a remote system over sshfs (sshfs has one file system for all, so prune by hand):
    cd /ssh/fs/base
    find . -xdev \\( \\( -path ./sys -o -path ./dev -o -path ./var/run -o -path ./var/lock \\
        -o -name .gvfs \\) -prune -o -print0 \\) | \\
      backshift --save-directory /where/ever/save-directory --backup --init-savedir --subset fullsave

  see what backups there are, then what one holds:
    backshift --save-directory DIR --list-backups
    backshift --save-directory DIR --list-backup --backup-id ID --starting-directory /etc

  restore a directory through tar:
    backshift --save-directory DIR --produce-tar --backup-id ID --starting-directory /etc | tar xvfp -

  keep a week of daily backups, five weekly and a year of monthly ones (days, weeks
  and months in UTC), as a cron line; look first with --dry-run:
    backshift --save-directory DIR --expire --keep-daily 7 --keep-weekly 5 --keep-monthly 12

  delete one backup (say a failed one), then free the space only it used:
    backshift --save-directory DIR --delete-backup ID
    backshift --save-directory DIR --expire --keep-daily 7 --expire-grace 0s

exit status: 0 all well; 1 some files not saved, changed while read, or damaged;
2 fatal error (bad options, no save directory, unknown backup id).
"""


class UsageError(Exception):
    """A bad option or option combination."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + traceback
        raise UsageError(message)


def _whole_number(least: int):
    """An argparse type: a whole number of at least ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError("%r is not a whole number" % text) from None
        if value < least:
            raise argparse.ArgumentTypeError("must be at least %d, not %s" % (least, text))
        return value
    return parse


# A count of things to show; a count of buckets to keep (0: the rule is off).
_positive_int = _whole_number(1)
_count = _whole_number(0)


def _duration(text: str) -> float:
    """An argparse type: seconds in a duration such as 90d."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="backshift",
        description="Deduplicating, compressing backups chosen with find -print0 and "
                    "restored through tar.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version="backshift " + __version__)
    parser.add_argument("--save-directory", metavar="DIR",
                        help="the repository (save directory) to use")
    actions = parser.add_argument_group("actions (choose one)")
    for flag, text in (
            ("--backup", "back up the NUL-separated paths read from stdin (or --filelist)"),
            ("--list-backups", "list the backups in the save directory"),
            ("--list-backup", "list the files of one backup, as tar tvf would"),
            ("--list-backup-simply", "list the names of the files of one backup"),
            ("--produce-tar", "write one backup (or a subtree) as a tar stream on stdout"),
            ("--expire", "remove the backups no --keep-* rule (or --max-age) keeps, "
                         "and the data only they used"),
            ("--stats", "totals of the save directory: backups, objects, bytes stored and "
                        "backed up, deduplication and compression"),
            ("--check", "check every backup's records and that every object they use exists"),
            ("--verify", "as --check, and read every object and verify its digest"),
            ("--check-hashes", "the same as --verify")):
        actions.add_argument(flag, action="store_true", help=text)
    actions.add_argument("--find", metavar="PATTERN",
                         help="list every entry, in every backup (or those chosen with "
                              "--backup-id, --hostname, --subset), whose path matches a shell "
                              "pattern as find -path matches: '*/notes.txt', '/etc/*.conf' "
                              "('*' crosses '/')")
    actions.add_argument("--diff", nargs=2, metavar=("ID1", "ID2"),
                         help="list the paths added (+), removed (-), changed (M) or changed "
                              "only in metadata (m) from backup ID1 to backup ID2")
    actions.add_argument("--delete-backup", metavar="ID", nargs="+",
                         help="remove these backups (ids as --list-backups shows them); "
                              "the next --expire frees the space only they used")
    parser.add_argument("--init-savedir", action="store_true",
                        help="create the save directory if it does not exist")
    backup = parser.add_argument_group("backing up")
    backup.add_argument("--subset", metavar="NAME",
                        help="name of this set of files (e.g. root, home, fullsave); "
                             "elsewhere: only backups of this subset")
    backup.add_argument("--hostname", metavar="NAME",
                        help="host name to record (default: this host's short name); "
                             "elsewhere: only backups of this host")
    backup.add_argument("--filelist", metavar="FILE",
                        help="read the NUL-separated paths from FILE instead of stdin")
    backup.add_argument("--compression", metavar="CODEC[:LEVEL]", default="xz",
                        help="xz[:0-9] (default xz:1), zlib[:0-9] (default zlib:1), bz2[:1-9] or none")
    backup.add_argument("--progress-report", choices=LEVELS,
                        help="progress on stderr (default: full on a terminal, else none)")
    backup.add_argument("--no-stats", action="store_true",
                        help="no progress report: stream the paths with little memory")
    backup.add_argument("--no-inode-check", action="store_true",
                        help="do not compare inode numbers to detect unchanged files "
                             "(for sshfs and other file systems with unstable inodes)")
    backup.add_argument("--checkpoint-interval", metavar="SECONDS", type=float, default=60.0,
                        help="publish an unfinished backup record this often (default 60)")
    backup.add_argument("--settle-time", metavar="SECONDS", type=float, default=2.0,
                        help="trust an earlier backup's copy of a file only if the file last "
                             "changed this long before that backup began (default 2; more "
                             "for file systems with coarse timestamps)")
    backup.add_argument("--no-fsync", action="store_true",
                        help="do not flush objects to disk (faster; unsafe on power loss)")
    restore = parser.add_argument_group("listing and restoring")
    restore.add_argument("--backup-id", metavar="ID",
                         help="which backup; 'latest' is the newest complete backup (of "
                              "--hostname and --subset when given)")
    restore.add_argument("--starting-directory", metavar="DIR",
                         help="only this directory (or file) of the backup, e.g. /etc")
    restore.add_argument("--nonrecursive", action="store_true",
                         help="only the starting directory and its immediate entries")
    restore.add_argument("--tar-format", choices=("gnu", "pax", "ustar"), default="gnu",
                         help="tar format to produce (default gnu)")
    restore.add_argument("--last-n", metavar="N", type=_positive_int,
                         help="with --list-backups: only the newest N")
    restore.add_argument("--json", action="store_true",
                         help="JSON Lines, every field (--list-backups, --list-backup, --find; "
                              "--backup: one line of totals).  A name that is not UTF-8 has "
                              "U+FFFD for its bad bytes in its text field (\"path\") and its "
                              "exact bytes in base64 beside it (\"path_b64\")")
    expire = parser.add_argument_group(
        "expiring", "Each host and subset on its own; a backup any rule keeps is kept.  Only\n"
        "complete backups that saved files count (never empty, failed or unfinished\n"
        "ones).  Hours, days, ISO weeks, months and years are those of UTC; a period\n"
        "without a backup is not counted.")
    expire.add_argument("--keep-last", metavar="N", type=_count, default=0,
                        help="keep the newest N backups")
    for unit, period in (("hourly", "hour"), ("daily", "day"), ("weekly", "ISO week"),
                         ("monthly", "month"), ("yearly", "year")):
        expire.add_argument("--keep-" + unit, metavar="N", type=_count, default=0,
                            help="keep the newest backup of each of the last N %ss (UTC) "
                                 "that have one" % period)
    expire.add_argument("--keep-within", metavar="DURATION", type=_duration,
                        help="keep every backup started within DURATION of the newest one")
    expire.add_argument("--max-age", metavar="DURATION", type=_duration,
                        help="never remove a backup younger than this; alone, expire those "
                             "finished longer ago (90d, 12w, 1y, 3600s)")
    expire.add_argument("--expire-grace", metavar="DURATION", type=_duration,
                        default=parse_duration("1h"),
                        help="keep unreferenced objects used this recently (default 1h; "
                             "at least how far the writers' clocks may be off)")
    expire.add_argument("--dry-run", action="store_true",
                        help="with --expire: print keep or remove for each backup, and why, "
                             "and what the sweep would free; change nothing")
    return parser


# Which options each action takes; any other option given is an error, so
# that nothing a user typed is silently ignored.  --save-directory,
# --init-savedir and --no-fsync go with every action.
_RESTORE = ("backup_id", "hostname", "subset", "starting_directory", "nonrecursive")
ACTION_OPTIONS = {
    "backup": ("subset", "hostname", "filelist", "compression", "progress_report", "no_stats",
               "no_inode_check", "checkpoint_interval", "settle_time", "json"),
    "list_backups": ("hostname", "subset", "last_n", "json"),
    "list_backup": _RESTORE + ("json",),
    "list_backup_simply": _RESTORE,
    "produce_tar": _RESTORE + ("tar_format",),
    "find": ("backup_id", "hostname", "subset", "starting_directory", "json"),
    "diff": ("hostname", "subset", "starting_directory"),
    "expire": ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
               "keep_yearly", "keep_within", "max_age", "expire_grace", "dry_run", "hostname",
               "subset", "progress_report"),
    "delete_backup": ("progress_report",),
    "stats": (),
    "check": (),
    "verify": (),
    "check_hashes": (),
}
ACTIONS = tuple(ACTION_OPTIONS)
_EVERYWHERE = ("save_directory", "init_savedir", "no_fsync")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _check_options(parser: argparse.ArgumentParser, args: argparse.Namespace,
                   action: Optional[str]) -> None:
    """Refuse an option the chosen action does not take."""
    allowed = set(_EVERYWHERE) | set(ACTION_OPTIONS.get(action or "", ()))
    for dest, value in sorted(vars(args).items()):
        if dest in allowed or dest in ACTION_OPTIONS or value == parser.get_default(dest):
            continue
        if action is None:
            raise UsageError("%s needs an action (--backup, --list-backups, ...)" % _flag(dest))
        raise UsageError("%s does not apply to %s" % (_flag(dest), _flag(action)))


def _chosen_action(args: argparse.Namespace) -> Optional[str]:
    chosen = [action for action in ACTIONS if getattr(args, action) not in (None, False)]
    if len(chosen) > 1:
        raise UsageError("choose one action, not %s" % " and ".join(
            _flag(action) for action in chosen))
    if not chosen:
        if args.init_savedir:
            return None
        raise UsageError("no action given (--backup, --list-backups, --produce-tar, ...)")
    return chosen[0]


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[BinaryIO] = None,
         stdout: Optional[BinaryIO] = None, stderr=None) -> int:
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    args: Optional[argparse.Namespace] = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        _check_options(parser, args, _chosen_action(args))
        return _run(args, stdin, stdout, stderr)
    except UsageError as exc:
        stderr.write("backshift: %s (see backshift --help)\n" % exc)
        return EXIT_FATAL
    except (SaveDirError, CatalogError, InputError) as exc:
        stderr.write("backshift: %s\n" % exc)
        return EXIT_FATAL
    except (ObjectError, RecordError) as exc:
        stderr.write("backshift: save directory damaged: %s\n" % exc)
        return EXIT_FATAL
    except TarFormatError as exc:
        stderr.write("backshift: %s\n" % exc)
        return EXIT_FATAL
    except BrokenPipeError:
        _silence_stdout()
        if args is not None and not args.produce_tar:
            # A listing read by head is done when the reader has had enough, as ls | head;
            # a restore cut short is worth a line.
            return EXIT_OK
        stderr.write("backshift: output pipe closed early\n")
        return EXIT_FATAL
    except KeyboardInterrupt:
        stderr.write("backshift: interrupted\n")
        return 130
    except OSError as exc:
        where = exc.filename if exc.filename is not None else ""
        if not where and exc.errno == errno.ENOSPC and args is not None:
            where = args.save_directory or ""  # a full disk: say which
        stderr.write("backshift: %s%s\n" % ("%s: " % os.fsdecode(where) if where else "",
                                           exc.strerror or exc))
        return EXIT_FATAL


def _silence_stdout() -> None:
    # Python flushes stdout at exit; with the reader gone that would fail again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        pass


def _require(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) in (None, ""):
            raise UsageError("--%s is required here" % name.replace("_", "-"))


def _run(args: argparse.Namespace, stdin: BinaryIO, stdout: BinaryIO, stderr) -> int:
    action = _chosen_action(args)
    _require(args, "save_directory")
    if args.dry_run and action != "expire":
        raise UsageError("--dry-run goes with --expire")
    if action == "produce_tar" and is_terminal(stdout):
        # As gzip does: binary data on a terminal is garbage and can upset it.
        raise UsageError("--produce-tar writes a tar stream, not for a terminal; "
                         "pipe it into tar xvfp - (or tar tvf -)")
    savedir_path = args.save_directory
    hostname = args.hostname or default_hostname()
    if args.init_savedir:
        init_savedir(savedir_path, hostname)
        if action is None:
            return EXIT_OK
    savedir = SaveDir(savedir_path, hostname, durable=not args.no_fsync)
    if action in ("list_backups", "expire", "check", "verify", "check_hashes"):
        note_strays(savedir, stderr)
    if action == "backup":
        return _backup(args, savedir, hostname, stdin, stdout, stderr)
    if action == "list_backups":
        return run_list_backups(savedir, args.hostname, args.subset, args.last_n, args.json,
                                stdout)
    if action == "find":
        return run_find(savedir, args.find, args.backup_id, args.hostname, args.subset,
                        args.starting_directory, args.json, stdout, stderr)
    if action == "diff":
        return run_diff(savedir, args.diff[0], args.diff[1], args.hostname, args.subset,
                        args.starting_directory, stdout, stderr)
    if action in ("list_backup", "list_backup_simply", "produce_tar"):
        _require(args, "backup_id")
        record = chosen_record(savedir, args.backup_id, args.hostname, args.subset)
        if action == "produce_tar":
            return run_produce_tar(savedir, record, args.starting_directory,
                                   not args.nonrecursive, args.tar_format, stdout, stderr)
        return run_list_backup(savedir, record, args.starting_directory,
                               action == "list_backup_simply", not args.nonrecursive,
                               args.json, stdout, stderr)
    if action == "expire":
        from .expiry import run_expire
        policy = Policy(args.keep_last, args.keep_hourly, args.keep_daily, args.keep_weekly,
                        args.keep_monthly, args.keep_yearly, args.keep_within, args.max_age)
        return run_expire(savedir, policy, args.expire_grace, args.hostname, args.subset,
                          args.dry_run, stdout, stderr, _verbose(args, stderr))
    if action == "delete_backup":
        from .expiry import run_delete
        return run_delete(savedir, args.delete_backup, stderr, _verbose(args, stderr))
    if action == "stats":
        from .stats import print_stats
        print_stats(savedir, stdout)
        return EXIT_OK
    from .checking import run_check
    return run_check(savedir, verify=action != "check", out=stderr)


def _verbose(args: argparse.Namespace, stderr) -> bool:
    """Say what was removed?  When asked to, or on a terminal."""
    level = args.progress_report
    return level not in (None, "none") or (level is None and is_terminal(stderr))


def _paths(args: argparse.Namespace, stdin: BinaryIO,
           closing: contextlib.ExitStack) -> Iterable[bytes]:
    if args.filelist:
        handle = closing.enter_context(open(args.filelist, "rb"))
        return iter_nul_paths(handle, args.filelist)
    if is_terminal(stdin):
        # Nobody types NUL-separated paths: the find pipe was forgotten.
        raise UsageError("--backup reads NUL-separated paths from stdin, which is a terminal; "
                         "pipe find ... -print0 into it, or use --filelist")
    return iter_nul_paths(stdin)


def _backup(args: argparse.Namespace, savedir: SaveDir, hostname: str, stdin: BinaryIO,
            stdout: BinaryIO, stderr) -> int:
    _require(args, "subset")
    try:
        compression = CompressionSpec.parse(args.compression)
    except ValueError as exc:
        raise UsageError("--compression: %s" % exc) from None
    if args.checkpoint_interval <= 0:
        raise UsageError("--checkpoint-interval must be positive")
    if args.settle_time < 0:
        raise UsageError("--settle-time must not be negative")
    level = args.progress_report
    if level is None:
        level = "full" if is_terminal(stderr) and not args.no_stats else "none"
    elif args.no_stats and level != "none":
        raise UsageError("--no-stats and --progress-report %s contradict each other" % level)
    options = BackupOptions(args.subset, hostname, compression,
                            checkpoint_interval=args.checkpoint_interval,
                            inode_check=not args.no_inode_check,
                            settle_ns=int(args.settle_time * 1e9))
    # Opened by run_backup inside its progress report, which it ends however
    # the opening goes (a --filelist missing, stdin a terminal).
    with contextlib.ExitStack() as closing:
        return run_backup(savedir, options, level, args.json,
                          lambda: _paths(args, stdin, closing), stdout, stderr)


def entry_point() -> None:
    sys.exit(main())
