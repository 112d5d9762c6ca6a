"""Retention on real save directories: backups made at chosen past dates
(libfaketime's faketime runs the real program), --dry-run, --delete-backup,
stray files in backups/, growth per backup, --stats, and a full disk."""

import os
import re
import subprocess
import time

import pytest

import helpers

KIB = 1024


def backup_at(savedir: str, when: str, top: str, cwd: str, host: str = "h1",
              subset: str = "root", expect: int = 0) -> str:
    """Back up ``top`` as if at ``when`` (UTC); the new backup's id."""
    before = set(helpers.list_ids(savedir))
    env = dict(os.environ, TZ="UTC")
    result = subprocess.run(
        ["faketime", when] + helpers.BACKSHIFT + [
            "--save-directory", savedir, "--backup", "--subset", subset, "--hostname", host,
            "--no-fsync", "--settle-time", "0"],
        input=helpers.find_print0(top, cwd), cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, timeout=120)
    assert result.returncode == expect, result.stderr.decode(errors="replace")
    (new,) = set(helpers.list_ids(savedir)) - before
    return new


def expire(savedir: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    result = helpers.run(["--save-directory", savedir, "--expire"] + list(args))
    assert result.returncode == expect, result.stderr.decode(errors="replace")
    return result


def dry_run(savedir: str, *args: str):
    """({id: reasons} kept, {id: reason} removed, last line) of --expire --dry-run."""
    out = expire(savedir, "--dry-run", *args).stdout.decode()
    kept, removed = {}, {}
    lines = out.splitlines()
    for line in lines[:-1]:
        verdict, backup_id, why = re.match(r"^(keep|remove) +(\S+)  (.*)$", line).groups()
        (kept if verdict == "keep" else removed)[backup_id] = why
    return kept, removed, lines[-1]


def age_objects(savedir: str, seconds: float = 7200) -> None:
    then = time.time() - seconds
    for dirpath, _dirnames, names in os.walk(os.path.join(savedir, "objects")):
        for name in names:
            os.utime(os.path.join(dirpath, name), (then, then))


def exact_state(top: str):
    """Every file and directory under (and including) ``top``: content and mtime in ns."""
    state = {".": os.lstat(top).st_mtime_ns}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            content = open(path, "rb").read() if name in filenames else None
            state[os.path.relpath(path, top)] = (st.st_mtime_ns, st.st_mode, content)
    return state


@pytest.fixture(scope="module")
def calendar(tmp_path_factory):
    """Ten backups of two hosts and two subsets at chosen dates, in one save directory.

    h1/root: a week boundary (Sun 2025-01-05 / Mon 01-06), a year boundary
    (2024-12-31 / 2025-01-01, one ISO week), gaps of several days.
    """
    base = tmp_path_factory.mktemp("calendar")
    savedir = str(base / "savedir")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    src = base / "src"
    src.mkdir()
    ids = {}
    for when, host, subset in (
            ("2024-12-28 10:00:00", "h1", "root"), ("2024-12-31 23:00:00", "h1", "root"),
            ("2025-01-01 01:00:00", "h1", "root"), ("2025-01-05 10:00:00", "h1", "root"),
            ("2025-01-05 18:00:00", "h1", "root"), ("2025-01-06 09:00:00", "h1", "root"),
            ("2025-01-10 09:00:00", "h1", "root"), ("2025-01-02 12:00:00", "h1", "home"),
            ("2025-01-03 12:00:00", "h2", "root"), ("2025-01-04 12:00:00", "h2", "root")):
        # Each backup holds 64 KiB of its own (freed when it goes) and what all share.
        (src / "own.bin").write_bytes(os.urandom(64 * KIB))
        (src / "shared.txt").write_bytes(b"shared\n" * 100)
        ids[(when[:16], host, subset)] = backup_at(savedir, when, "src", str(base), host, subset)
    return savedir, ids, base


def names(ids, *keys):
    return {ids[key] for key in keys}


def test_calendar_rules_on_a_real_save_directory(calendar):
    savedir, ids, _base = calendar
    h1 = lambda when: (when, "h1", "root")  # noqa: E731
    home = ("2025-01-02 12:00", "h1", "home")
    h2_old, h2_new = ("2025-01-03 12:00", "h2", "root"), ("2025-01-04 12:00", "h2", "root")
    every = set(ids.values())

    # Days with a backup are counted, the gaps between them are not; each
    # day's newest is kept; each host and subset on its own.
    kept, removed, _ = dry_run(savedir, "--keep-daily", "3")
    assert set(kept) == names(ids, h1("2025-01-10 09:00"), h1("2025-01-06 09:00"),
                              h1("2025-01-05 18:00"), home, h2_old, h2_new)
    assert set(kept) | set(removed) == every
    assert kept[ids[h1("2025-01-05 18:00")]] == "keep-daily 2025-01-05"
    assert removed[ids[h1("2025-01-05 10:00")]] == "no rule keeps it"
    # h2 has two days of three asked: its oldest is kept too (and says why).
    assert "oldest (keep-daily 3 found 1 days)" in kept[ids[home]]

    # ISO weeks: Mon 2024-12-30 .. Sun 2025-01-05 is one week, across the year.
    kept, _removed, _ = dry_run(savedir, "--keep-weekly", "2", "--hostname", "h1",
                                "--subset", "root")
    assert set(kept) == names(ids, h1("2025-01-10 09:00"), h1("2025-01-05 18:00"))
    assert kept[ids[h1("2025-01-05 18:00")]] == "keep-weekly 2025-W01"

    # Years: 2024's newest is its last evening; fewer years than asked keeps
    # the oldest backup as well.
    kept, _removed, _ = dry_run(savedir, "--keep-yearly", "2", "--hostname", "h1",
                                "--subset", "root")
    assert set(kept) == names(ids, h1("2025-01-10 09:00"), h1("2024-12-31 23:00"))
    kept, _removed, _ = dry_run(savedir, "--keep-yearly", "5", "--hostname", "h1",
                                "--subset", "root")
    assert set(kept) == names(ids, h1("2025-01-10 09:00"), h1("2024-12-31 23:00"),
                              h1("2024-12-28 10:00"))
    assert kept[ids[h1("2024-12-28 10:00")]] == "oldest (keep-yearly 5 found 2 years)"

    # Rules are OR-ed; --keep-within counts back from the newest backup.
    kept, _removed, _ = dry_run(savedir, "--keep-last", "1", "--keep-monthly", "2",
                                "--keep-within", "5d")
    assert set(kept) == names(ids, h1("2025-01-10 09:00"), h1("2025-01-06 09:00"),
                              h1("2025-01-05 18:00"), h1("2025-01-05 10:00"),
                              h1("2024-12-31 23:00"), home, h2_old, h2_new)
    assert kept[ids[h1("2025-01-10 09:00")]] == \
        "keep-last 1, keep-within, keep-monthly 2025-01"


def test_dry_run_changes_nothing_and_foretells_the_sweep(calendar, tmp_path):
    savedir, ids, base = calendar
    age_objects(savedir)
    policy = ("--keep-daily", "7", "--keep-weekly", "5", "--keep-monthly", "12",
              "--expire-grace", "0s")
    before = exact_state(savedir)
    kept, removed, summary = dry_run(savedir, *policy)
    assert exact_state(savedir) == before  # byte for byte, mtimes too
    match = re.match(r"dry run: would remove (\d+) backups, then (\d+) objects", summary)
    assert match and int(match.group(1)) == len(removed) > 0 and int(match.group(2)) > 0

    report = expire(savedir, *policy, "--progress-report", "minimal").stderr.decode()
    assert set(helpers.list_ids(savedir)) == set(kept)
    done = re.search(r"removed (\d+) backups and (\d+) objects", report)
    assert done.groups() == match.groups(), (summary, report)
    helpers.run_ok(["--save-directory", savedir, "--check"])
    newest = ids[("2025-01-10 09:00", "h1", "root")]
    helpers.extract(helpers.produce_tar(savedir, newest), str(tmp_path / "out"))
    assert (tmp_path / "out" / "src" / "shared.txt").read_bytes() == b"shared\n" * 100


def test_expire_without_a_rule_is_refused(savedir, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"f")
    helpers.backup(savedir, "src", cwd=str(tmp_path))
    before = helpers.list_ids(savedir)
    for args in ([], ["--max-age", "0s"], ["--keep-daily", "0"], ["--dry-run"]):
        result = helpers.run(["--save-directory", savedir, "--expire"] + args)
        helpers.assert_one_line_error(result, "--keep-daily")
    helpers.assert_one_line_error(helpers.run(["--save-directory", savedir, "--list-backups",
                                               "--dry-run"]), "--dry-run")
    assert helpers.list_ids(savedir) == before


def test_empty_and_failed_backups_never_displace_the_real_one(savedir, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"precious\n")
    real = helpers.backup(savedir, "src", cwd=str(tmp_path))
    # As from `find /mnt/not-mounted -print0`: nothing, or only paths that fail.
    # (Whether such a run is refused or recorded, the real backup must survive.)
    for stdin in (b"", b"", b"/mnt/not-mounted\0"):
        result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "test",
                              "--no-fsync"], input=stdin, cwd=str(tmp_path))
        assert result.returncode in (0, 1, 2), result.stderr
    expire(savedir, "--keep-last", "1", "--expire-grace", "0s")
    assert helpers.list_ids(savedir) == [real]  # and the empty ones went
    helpers.extract(helpers.produce_tar(savedir, real), str(tmp_path / "out"))
    assert (tmp_path / "out" / "src" / "f").read_bytes() == b"precious\n"


def test_delete_backup(savedir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.bin").write_bytes(os.urandom(256 * KIB))
    first = helpers.backup(savedir, "src", cwd=str(tmp_path))
    (src / "big.bin").unlink()
    (src / "small").write_bytes(b"small")
    second = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
    # An unfinished backup: its writer still waits for paths.
    proc = subprocess.Popen(helpers.BACKSHIFT + ["--save-directory", savedir, "--backup",
                                                 "--subset", "other", "--no-fsync"],
                            stdin=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    proc.stdin.write(b"src\0")  # a first path: only then is its record written
    proc.stdin.flush()
    try:
        helpers.wait_until(lambda: proc.poll() is not None or len(helpers.list_ids(savedir)) >= 3,
                           timeout=60, what="the third record")
        assert proc.poll() is None
        (running,) = set(helpers.list_ids(savedir)) - {first, second}
        assert helpers.read_record(savedir, running)["state"] == "unfinished"

        # One unknown id: nothing removed, exit 2.
        result = helpers.run(["--save-directory", savedir, "--delete-backup", first, "nope"])
        helpers.assert_one_line_error(result, "nope")
        assert len(helpers.list_ids(savedir)) == 3

        helpers.run_ok(["--save-directory", savedir, "--delete-backup", first, running])
        assert helpers.list_ids(savedir) == [second]
    finally:
        proc.kill()
        proc.communicate()
    du_before = helpers.du_bytes(savedir)
    expire(savedir, "--keep-last", "1", "--expire-grace", "0s")
    assert du_before - helpers.du_bytes(savedir) < 200 * KIB  # protected: used 5 s ago
    age_objects(savedir)
    expire(savedir, "--keep-last", "1", "--expire-grace", "0s")
    assert du_before - helpers.du_bytes(savedir) >= 256 * KIB  # the first backup's data went
    helpers.run_ok(["--save-directory", savedir, "--check"])


def test_stray_files_in_backups_are_named_and_block_nothing(savedir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(64 * KIB))
    first = helpers.backup(savedir, "src", cwd=str(tmp_path))
    (src / "f").write_bytes(os.urandom(64 * KIB))
    second = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
    stray = os.path.join(savedir, "backups", "README")
    with open(stray, "w") as handle:
        handle.write("backups of the web servers\n")
    for action in ("--check", "--list-backups"):
        result = helpers.run_ok(["--save-directory", savedir, action])
        notes = result.stderr.decode().splitlines()
        assert len(notes) == 1 and "README" in notes[0] and "ignored" in notes[0], notes
    age_objects(savedir)
    result = expire(savedir, "--keep-last", "1", "--expire-grace", "0s",
                    "--progress-report", "minimal")
    assert result.stderr.decode().count("README") == 1
    assert re.search(r"removed 1 backups and [1-9]\d* objects", result.stderr.decode())
    assert helpers.list_ids(savedir) == sorted([second, "README"])  # the stray stays

    # A record with a backup id's name that does not parse blocks removal of
    # objects (what it refers to is unknown), and says how to get out.
    broken = first  # a valid id name, no longer in use
    with open(os.path.join(savedir, "backups", broken), "w") as handle:
        handle.write("{ not json")
    result = expire(savedir, "--keep-last", "1", expect=1)
    line = [l for l in result.stderr.decode().splitlines() if "README" not in l]
    assert len(line) == 1 and broken in line[0] and "--delete-backup " + broken in line[0]
    helpers.run_ok(["--save-directory", savedir, "--delete-backup", broken])
    expire(savedir, "--keep-last", "1")


def test_bytes_added_and_stats(savedir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "random.bin").write_bytes(os.urandom(512 * KIB))
    (src / "text").write_bytes(b"the same line again\n" * 10000)
    first = helpers.backup(savedir, "src", cwd=str(tmp_path))
    second = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
    stored = sum(os.path.getsize(os.path.join(d, n))
                 for d, _s, names in os.walk(os.path.join(savedir, "objects")) for n in names)
    added = {i: helpers.read_record(savedir, i)["bytes_added"] for i in (first, second)}
    # The first backup wrote every object there is; the second (nothing
    # changed) almost nothing: a new top record at most.
    assert added[first] + added[second] == stored
    assert added[first] >= 512 * KIB and added[second] < 4 * KIB
    listing = helpers.run_ok(["--save-directory", savedir, "--list-backups"]).stdout.decode()
    for backup_id in (first, second):
        line = [l for l in listing.splitlines() if l.startswith(backup_id)][0]
        assert line.endswith(", %d bytes added" % added[backup_id]), line

    stats = helpers.run_ok(["--save-directory", savedir, "--stats"]).stdout.decode()
    value = lambda name: re.search(r"^%s: +(\S+)" % name, stats, re.M).group(1)  # noqa: E731
    objects = sum(len(n) for d, _s, n in os.walk(os.path.join(savedir, "objects")))
    assert value("backups") == "2" and int(value("objects")) == objects
    assert int(value("bytes stored")) == stored
    record = helpers.read_record(savedir, first)
    assert int(value("bytes backed up")) == 2 * record["bytes"] == 2 * (512 * KIB + 200000)
    assert 1.9 < float(value("deduplication")) <= 2.0  # two copies of one tree
    assert float(value("compression")) > 1.2            # the text compresses well


def test_a_full_save_directory_and_the_way_back(tmp_path):
    """README's "Save directory full" recipe, on a small tmpfs."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs",
                              str(mount_point)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?): %s" % mounted.stderr.decode())
    try:
        savedir = str(mount_point / "savedir")
        helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
        src = tmp_path / "src"
        src.mkdir()
        (src / "keep.bin").write_bytes(os.urandom(256 * KIB))
        first = helpers.backup(savedir, "src", cwd=str(tmp_path))
        (src / "huge.bin").write_bytes(os.urandom(3 * 1024 * KIB))
        free_before = os.statvfs(savedir).f_bavail
        result = helpers.run(["--save-directory", savedir, "--backup", "--subset", "test",
                              "--no-fsync", "--settle-time", "0"],
                             input=helpers.find_print0("src", str(tmp_path)), cwd=str(tmp_path))
        line = helpers.assert_one_line_error(result, savedir, "No space left on device",
                                             "--delete-backup", "--expire")
        (failed,) = set(helpers.list_ids(savedir)) - {first}
        assert "--delete-backup " + failed in line
        free_when_full = os.statvfs(savedir).f_bavail

        # The recipe: delete the failed backup, expire, back up again, check.
        helpers.run_ok(["--save-directory", savedir, "--delete-backup", failed])
        age_objects(savedir)
        expire(savedir, "--keep-daily", "7", "--expire-grace", "0s")
        # What the failed backup wrote before the disk filled came back, all of it
        # (a few blocks aside: directories grown by the names written).
        assert free_when_full < free_before
        assert os.statvfs(savedir).f_bavail >= free_before - 4
        (src / "huge.bin").unlink()
        (src / "new.bin").write_bytes(os.urandom(256 * KIB))
        again = helpers.backup(savedir, "src", cwd=str(tmp_path), extra=["--settle-time", "0"])
        assert helpers.list_ids(savedir) == sorted([first, again])
        helpers.run_ok(["--save-directory", savedir, "--check"])
    finally:
        subprocess.run(["umount", "-l", str(mount_point)])
