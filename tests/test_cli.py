"""The command line as a Unix tool: help, version, exit codes, one-line errors, quiet runs.

Every user error must end with exit status 2 and one line on stderr naming
the problem, never a traceback; cron runs that go well print nothing.
"""

import json
import os
import pty
import re
import shlex
import signal
import subprocess
import sys

import pytest

import helpers

from backshift import __version__
from backshift.cli import build_parser

MAN_PAGE = os.path.join(helpers.REPO, "backshift.1")


def small_tree(top) -> None:
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"alpha\n")
    (top / "sub" / "b.txt").write_bytes(b"beta\n" * 100)


def test_help_shows_the_seed_examples_and_exit_codes():
    result = helpers.run_ok(["--help"])
    text = result.stdout.decode()
    assert result.stderr == b""
    for example in ("find / -xdev -print0 | backshift --save-directory",
                    "cd /ssh/fs/base", "-path ./sys", "-name .gvfs", "--init-savedir --subset fullsave",
                    "--list-backups", "--list-backup --backup-id ID",
                    "--produce-tar --backup-id ID", "| tar xvfp -"):
        assert example in text, example
    assert re.search(r"exit status: 0 .*1 .*2 fatal", text, re.S)


def test_version_from_launcher_and_as_module(tmp_path):
    result = helpers.run_process(["--version"])
    assert result.returncode == 0 and result.stdout.decode().strip() == "backshift " + __version__
    env = dict(os.environ, PYTHONPATH=helpers.REPO)
    result = subprocess.run([sys.executable, "-m", "backshift", "--version"], cwd=str(tmp_path),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert result.returncode == 0 and result.stdout.decode().strip() == "backshift " + __version__


BAD_OPTIONS = [
    ([], "no action"),
    (["--backup", "--list-backups"], "--backup and --list-backups"),
    (["--backup"], "--subset"),
    (["--produce-tar"], "--backup-id"),
    (["--list-backup"], "--backup-id"),
    (["--list-backup-simply"], "--backup-id"),
    (["--backup", "--subset", "x", "--no-stats", "--progress-report", "full"], "--no-stats"),
    (["--backup", "--subset", "x", "--progress-report", "loud"], "--progress-report"),
    (["--backup", "--subset", "x", "--compression", "lz9"], "--compression"),
    (["--backup", "--subset", "x", "--compression", "xz:12"], "--compression"),
    (["--backup", "--subset", "x", "--checkpoint-interval", "0"], "--checkpoint-interval"),
    (["--backup", "--subset", "x", "--checkpoint-interval", "soon"], "--checkpoint-interval"),
    (["--list-backups", "--last-n", "x"], "--last-n"),
    (["--list-backups", "--last-n", "-1"], "--last-n"),
    (["--produce-tar", "--backup-id", "x", "--tar-format", "zip"], "--tar-format"),
    (["--expire", "--max-age", "soon"], "soon"),
    (["--bogus"], "--bogus"),
]


@pytest.mark.parametrize("args,word", BAD_OPTIONS, ids=[" ".join(a) or "none" for a, _ in BAD_OPTIONS])
def test_bad_options_are_one_line_and_exit_2(savedir, args, word):
    before = helpers.list_ids(savedir)
    result = helpers.run(["--save-directory", savedir] + args, input=b"")
    helpers.assert_one_line_error(result, word)
    assert result.stdout == b""
    assert helpers.list_ids(savedir) == before  # nothing was started


def test_save_directory_option_is_required():
    helpers.assert_one_line_error(helpers.run(["--list-backups"]), "--save-directory")


def test_missing_save_directory_suggests_mount_or_init(tmp_path):
    where = tmp_path / "not-mounted"
    result = helpers.run(["--save-directory", str(where), "--backup", "--subset", "x"],
                         input=b"/etc/hostname\0")
    helpers.assert_one_line_error(result, str(where))
    assert not where.exists()


def test_uninitialised_save_directory(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (["--list-backups"], ["--backup", "--subset", "x"],
                 ["--produce-tar", "--backup-id", "x"]):
        result = helpers.run(["--save-directory", str(empty)] + args, input=b"/etc/hostname\0")
        helpers.assert_one_line_error(result, "empty", "--init-savedir")
    assert os.listdir(str(empty)) == []


def test_save_directory_that_is_a_file(tmp_path):
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    helpers.assert_one_line_error(helpers.run(["--save-directory", str(plain), "--list-backups"]),
                          "plain")
    helpers.assert_one_line_error(helpers.run(["--save-directory", str(plain), "--init-savedir"]),
                          "plain")
    assert plain.read_bytes() == b"x"


def test_init_refuses_a_foreign_directory_and_is_idempotent(tmp_path, savedir):
    foreign = tmp_path / "foreign"
    small_tree(foreign)
    helpers.assert_one_line_error(helpers.run(["--save-directory", str(foreign), "--init-savedir"]),
                          "foreign")
    assert sorted(os.listdir(str(foreign))) == ["a.txt", "sub"]
    small_tree(tmp_path / "src")
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    assert helpers.list_ids(savedir) == [backup_id]


def _without_root_override():
    """Prefix that makes root obey permission bits (drops CAP_DAC_OVERRIDE), as a user would."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def test_save_directory_not_writable(tmp_path, savedir):
    small_tree(tmp_path / "src")
    for sub in ("", "backups", "objects"):
        os.chmod(os.path.join(savedir, sub), 0o500)
    try:
        result = subprocess.run(_without_root_override() + helpers.BACKSHIFT + [
            "--save-directory", savedir, "--backup", "--subset", "x", "--no-fsync"],
            input=helpers.find_print0("src", cwd=str(tmp_path)), cwd=str(tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    finally:
        for sub in ("", "backups", "objects"):
            os.chmod(os.path.join(savedir, sub), 0o700)
    line = helpers.assert_one_line_error(result, "Permission denied")
    assert savedir in line
    assert helpers.list_ids(savedir) == []


def test_filelist_missing_and_present(tmp_path, savedir):
    small_tree(tmp_path / "src")
    missing = tmp_path / "no-such-list"
    result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "x",
                          "--filelist", str(missing)], cwd=str(tmp_path))
    helpers.assert_one_line_error(result, "no-such-list")
    assert helpers.list_ids(savedir) == []
    listing = tmp_path / "list"
    listing.write_bytes(helpers.find_print0("src", cwd=str(tmp_path)))
    helpers.run_ok(["--save-directory", savedir, "--backup", "--subset", "x", "--no-fsync",
                    "--filelist", str(listing)], cwd=str(tmp_path))
    backup_id, = helpers.list_ids(savedir)
    names = helpers.run_ok(["--save-directory", savedir, "--list-backup-simply",
                            "--backup-id", backup_id]).stdout.split(b"\n")
    assert b"src/sub/b.txt" in names
    # Run in this process (helpers.run), the program left the list closed.
    open_files = [os.readlink("/proc/self/fd/" + fd) for fd in os.listdir("/proc/self/fd")
                  if os.path.exists("/proc/self/fd/" + fd)]
    assert str(listing) not in open_files


def test_unknown_backup_id_lists_recent_ids(tmp_path, savedir):
    result = helpers.run(["--save-directory", savedir, "--list-backup", "--backup-id", "nope"])
    helpers.assert_one_line_error(result, "nope", "no backups")
    small_tree(tmp_path / "src")
    ids = [helpers.backup(savedir, "src", cwd=str(tmp_path), subset="s%d" % n) for n in range(2)]
    for action in ("--list-backup", "--list-backup-simply", "--produce-tar"):
        result = helpers.run(["--save-directory", savedir, action, "--backup-id", "nope"])
        helpers.assert_one_line_error(result, "nope", ids[0], ids[1])
        assert result.stdout == b""
    for sneaky in ("../backshift-format", "/etc/passwd", ".", ""):
        result = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id", sneaky])
        helpers.assert_one_line_error(result)
        assert result.stdout == b""


def test_starting_directory_not_in_backup(tmp_path, savedir):
    small_tree(tmp_path / "src")
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    for action in ("--list-backup", "--produce-tar"):
        for start in ("/nowhere", "src/missing", "src/a.txt/below"):
            result = helpers.run(["--save-directory", savedir, action, "--backup-id", backup_id,
                                  "--starting-directory", start])
            helpers.assert_one_line_error(result, start, backup_id)
            assert result.stdout == b""
    listed = helpers.run_ok(["--save-directory", savedir, "--list-backup-simply", "--backup-id",
                             backup_id, "--starting-directory", "src/sub"]).stdout
    assert listed.split(b"\n")[:2] == [b"src/sub/", b"src/sub/b.txt"]


def _big_backup(tmp_path, savedir) -> str:
    src = tmp_path / "src"
    src.mkdir()
    (src / "random.bin").write_bytes(os.urandom(2 * 1024 * 1024))
    for n in range(3000):
        (src / ("file-%04d" % n)).write_bytes(b"%d\n" % n)
    return helpers.backup(savedir, "src", cwd=str(tmp_path))


def _pipe_into(command, reader: str) -> subprocess.CompletedProcess:
    """``command | reader`` through a real shell pipe; stdout is the first command's status."""
    line = " ".join("'%s'" % part for part in command) + " | " + reader + \
        " >/dev/null; echo ${PIPESTATUS[0]}"
    return subprocess.run(["bash", "-c", line], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=300)


def test_stdout_closed_early(tmp_path, savedir):
    backup_id = _big_backup(tmp_path, savedir)
    base = helpers.BACKSHIFT + ["--save-directory", savedir, "--backup-id", backup_id]
    # A restore cut short is worth one line and status 2 ...
    result = _pipe_into(base + ["--produce-tar"], "head -c 100")
    err = result.stderr.decode()
    assert result.stdout.strip() == b"2" and "Traceback" not in err, err
    assert err.splitlines() == ["backshift: output pipe closed early"]
    # ... while a listing read by head ends quietly, like ls | head.
    for action in ("--list-backup", "--list-backup-simply"):
        result = _pipe_into(base + [action], "head -n 1")
        assert result.stderr == b"" and result.stdout.strip() == b"0", result


def test_randomize_shuffles_and_ends_quietly_on_a_closed_pipe():
    paths = b"".join(b"dir/file %d\n\0" % n for n in range(100000))
    result = subprocess.run(helpers.RANDOMIZE + ["-0"], input=paths, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=120)
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout != paths and sorted(result.stdout.split(b"\0")) == \
        sorted(paths.split(b"\0"))
    command = " ".join(shlex.quote(part) for part in helpers.RANDOMIZE + ["-0"])
    result = subprocess.run(["bash", "-c", command + " | true; echo ${PIPESTATUS[0]}"],
                            input=paths, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=120)
    assert result.stderr == b"" and result.stdout.strip() == b"0", result.stderr


def test_cron_runs_are_silent(tmp_path, savedir):
    small_tree(tmp_path / "src")
    # No terminal anywhere, as under cron: nothing on stdout or stderr.
    result = subprocess.run(helpers.BACKSHIFT + ["--save-directory", savedir, "--backup",
                                                 "--subset", "cron", "--no-fsync"],
                            input=helpers.find_print0("src", cwd=str(tmp_path)),
                            cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    # Something wrong: exactly one line naming it, status 1.
    result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "cron",
                          "--no-fsync"], input=b"src/a.txt\0src/gone\0", cwd=str(tmp_path))
    assert result.returncode == 1 and result.stdout == b""
    assert len(result.stderr.splitlines()) == 1 and b"src/gone" in result.stderr


def _checkpoints(savedir: str) -> int:
    """How many checkpoints the one backup record in ``savedir`` has published so far."""
    for backup_id in helpers.list_ids(savedir):
        with open(os.path.join(savedir, "backups", backup_id), encoding="utf-8") as handle:
            return json.load(handle).get("checkpoints", 0)
    return 0


def test_unfinished_backup_can_be_listed_and_restored(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    for n in range(400):
        (src / ("f%03d" % n)).write_bytes(b"file %d\n" % n)
    proc = subprocess.Popen(helpers.BACKSHIFT + [
        "--save-directory", savedir, "--backup", "--subset", "cut", "--no-fsync",
        "--checkpoint-interval", "0.01"], cwd=str(tmp_path), stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        # Give it most of the paths (more than it reads ahead), wait for checkpoints to
        # publish the first files, then kill it as a power cut would, its input still open.
        proc.stdin.write(b"\0".join([b"src"] + [b"src/f%03d" % n for n in range(300)]) + b"\0")
        proc.stdin.flush()
        # The first checkpoint may come right after "src" alone; the second
        # follows a later path, so it holds f000.
        helpers.wait_until(lambda: _checkpoints(savedir) >= 2, timeout=60, what="2 checkpoints")
    finally:
        proc.kill()
        proc.communicate()
    backup_id, = helpers.list_ids(savedir)
    listing = helpers.run_ok(["--save-directory", savedir, "--list-backups"]).stdout.decode()
    assert backup_id in listing and "unfinished" in listing
    result = helpers.run(["--save-directory", savedir, "--produce-tar", "--backup-id", backup_id])
    assert result.returncode == 0 and "Traceback" not in result.stderr.decode()
    assert "unfinished" in result.stderr.decode()
    helpers.extract(result.stdout, str(tmp_path / "out"))
    assert (tmp_path / "out" / "src" / "f000").read_bytes() == b"file 0\n"
    assert not (tmp_path / "out" / "src" / "f399").exists()


def test_backup_refuses_a_terminal_as_its_path_list(savedir):
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(helpers.BACKSHIFT + ["--save-directory", savedir, "--backup",
                                                     "--subset", "tty"], stdin=terminal,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    helpers.assert_one_line_error(result, "terminal", "find")
    assert helpers.list_ids(savedir) == []


def test_produce_tar_refuses_a_terminal_as_its_output(tmp_path, savedir):
    small_tree(tmp_path / "src")
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    controller, terminal = pty.openpty()
    try:
        result = subprocess.run(helpers.BACKSHIFT + ["--save-directory", savedir,
                                                     "--produce-tar", "--backup-id", backup_id],
                                stdout=terminal, stderr=subprocess.PIPE, timeout=60)
    finally:
        os.close(terminal)
        os.close(controller)
    helpers.assert_one_line_error(result, "terminal", "tar xvfp -")


def test_interrupt_is_one_line(tmp_path, savedir):
    (tmp_path / "src").mkdir()
    # As soon as its record is written (after the first path; it then waits
    # for more on stdin);
    # a few times, as the moment varies: once the input reader's threads
    # started half way, one was left waiting and the process never ended.
    for _ in range(3):
        running = helpers.FedBackup(savedir, tmp_path, subset="int")
        running.feed(b"src\0")
        running.wait_started()
        running.proc.send_signal(signal.SIGINT)
        _out, err = running.proc.communicate(timeout=60)
        assert running.proc.returncode == 130, err
        assert err.decode().splitlines() == ["backshift: interrupted"]


def _man_text() -> str:
    with open(MAN_PAGE, encoding="utf-8") as handle:
        return handle.read()


def test_man_page_covers_every_option():
    text = _man_text().replace("\\-", "-")
    options = sorted({option for action in build_parser()._actions
                      for option in action.option_strings if option.startswith("--")})
    assert len(options) > 20
    missing = [option for option in options if not re.search(
        r'^\.TP\n\.B[IR]? (?:-h ", " )?%s(?![\w-])' % re.escape(option), text, re.M)]
    assert not missing, "options not described in backshift.1: %s" % missing
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES"):
        assert re.search(r"^\.SH \"?%s\"?$" % section, text, re.M), section
    assert "__version__" not in text


def test_man_page_formats_without_warnings():
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    result = subprocess.run(["man", "--warnings", "-l", MAN_PAGE], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()
    page = result.stdout.decode()
    assert "--save-directory" in page.replace("\u2010", "-") and "EXIT STATUS" in page
