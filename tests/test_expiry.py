"""--expire: which backups go, that space comes back, and that it is safe
while other processes back up (real processes, real files, real tar)."""

import datetime
import os
import random
import re
import shutil
import threading
import time

import pytest

import helpers
from helpers import HOURS_AGO_2, MIB, FedBackup, age_files, wait_until
from backshift.catalog import BackupRecord
from backshift.expiry import TIMESTAMP_MARGIN, Heartbeat, protection_time
from backshift.retention import parse_duration
from backshift.savedir import SaveDir
from backshift.tree import TreeReader


def expire(savedir, *args, expect=0):
    result = helpers.run(["--save-directory", savedir, "--expire", "--progress-report",
                          "minimal"] + list(args))
    assert result.returncode == expect, result.stderr.decode(errors="replace")
    return result.stderr.decode(errors="replace")


def removed_counts(report: str):
    match = re.search(r"removed (\d+) backups and (\d+) objects", report)
    assert match, report
    return int(match.group(1)), int(match.group(2))


def object_files(savedir: str):
    return sorted(os.path.join(dirpath, name)
                  for dirpath, _d, names in os.walk(os.path.join(savedir, "objects"))
                  for name in names if not name.startswith("."))


def chunk_paths(savedir: str, backup_id: str, path: bytes):
    store = SaveDir(savedir, "test")
    (entry,) = TreeReader(store.objects).lookup(store.catalog.read(backup_id).root, path)
    return [store.objects.path_of(digest) for digest, _length in entry.chunks]


def restore_and_compare(savedir, backup_id, expected_snapshot, top, tmp_path):
    out = tmp_path / ("restore-" + backup_id)
    helpers.extract(helpers.produce_tar(savedir, backup_id), str(out))
    actual = helpers.snapshot(str(out / top))
    assert actual == expected_snapshot, backup_id
    shutil.rmtree(str(out))


def test_durations():
    assert parse_duration("90d") == 90 * 86400
    assert parse_duration("12w") == 12 * 7 * 86400
    assert parse_duration("1y") == 365 * 86400
    assert parse_duration("3600s") == 3600
    assert parse_duration("0s") == 0
    assert parse_duration("36h") == 36 * 3600 and parse_duration("15m") == 900
    for bad in ("", "90", "d", "-1d", "1x", "1d2h"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_protection_time_allows_for_writers_clocks():
    """P is never after a live backup's start, whichever clock is off."""
    start = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    now = start.timestamp() + 600

    def beat(writer_offset: float, state="unfinished") -> Heartbeat:
        # The writer's clock reads true time + writer_offset.
        record = BackupRecord("id", "h", "s", start + datetime.timedelta(seconds=writer_offset))
        record.state = state
        record.updated = start + datetime.timedelta(seconds=writer_offset + 60)
        return Heartbeat(record, start.timestamp() + 60)  # mtime: the save directory's clock

    assert protection_time([], now, 0) == now - TIMESTAMP_MARGIN
    assert protection_time([beat(0)], now, 0) == start.timestamp() - TIMESTAMP_MARGIN
    # A writer an hour fast: its "started" is an hour late; corrected.
    assert protection_time([beat(3600)], now, 0) <= start.timestamp() - TIMESTAMP_MARGIN
    # An hour slow: its own stamps (sshfs utime) are an hour early; kept too.
    assert protection_time([beat(-3600)], now, 0) <= start.timestamp() - 3600
    assert protection_time([beat(0, "complete")], now, 30) == now - 30 - TIMESTAMP_MARGIN
    assert not beat(0).stale(start.timestamp() + 60 + 3000)
    assert beat(0).stale(start.timestamp() + 60 + 3700)


def test_bad_expire_options_are_one_line_exit_2(savedir):
    for args in ([], ["--max-age", "ninety"], ["--max-age", "1d", "--expire-grace", "soon"],
                 ["--max-age", "1d", "--keep-last", "-1"]):
        result = helpers.run(["--save-directory", savedir, "--expire"] + args)
        helpers.assert_one_line_error(result)


def test_space_really_comes_back(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "old.bin").write_bytes(os.urandom(8 * MIB))
    (src / "kept.txt").write_bytes(b"kept\n" * 1000)
    first = helpers.backup(savedir, "src", cwd=str(tmp_path))
    (src / "old.bin").unlink()
    (src / "new.bin").write_bytes(os.urandom(2 * MIB))
    second = helpers.backup(savedir, "src", cwd=str(tmp_path))
    expected = helpers.snapshot(str(src))

    # Freshly used objects are protected by the grace period (default 1h).
    report = expire(savedir, "--max-age", "0s", "--keep-last", "1")
    assert removed_counts(report) == (1, 0)
    assert helpers.list_ids(savedir) == [second]
    assert first in report

    age_files(os.path.join(savedir, "objects"), HOURS_AGO_2)
    before = helpers.du_bytes(savedir)
    report = expire(savedir, "--max-age", "0s", "--keep-last", "1")
    after = helpers.du_bytes(savedir)
    assert removed_counts(report)[1] >= 8
    assert before - after >= 8 * MIB, (before, after)
    assert after < 3 * MIB + 1 * MIB
    restore_and_compare(savedir, second, expected, "src", tmp_path)
    helpers.run_ok(["--save-directory", savedir, "--verify"])


def test_max_age_keep_last_host_and_subset(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    ids = {}
    for host, subset, count in (("h1", "root", 3), ("h1", "home", 1), ("h2", "root", 2)):
        for _ in range(count):
            ids.setdefault((host, subset), []).append(
                helpers.backup(savedir, "src", subset=subset, cwd=str(tmp_path),
                               extra=["--hostname", host]))
    everything = set(helpers.list_ids(savedir))
    assert len(everything) == 6

    expire(savedir, "--max-age", "1d")
    assert set(helpers.list_ids(savedir)) == everything  # nothing is a day old

    expire(savedir, "--max-age", "0s", "--keep-last", "1", "--hostname", "h2")
    assert ids[("h2", "root")][0] not in helpers.list_ids(savedir)
    assert set(ids[("h1", "root")]) <= set(helpers.list_ids(savedir))

    expire(savedir, "--max-age", "0s", "--keep-last", "2", "--subset", "root")
    left = set(helpers.list_ids(savedir))
    assert left == set(ids[("h1", "root")][1:] + ids[("h1", "home")] + ids[("h2", "root")][1:])

    expire(savedir, "--max-age", "0s", "--keep-last", "1")
    assert set(helpers.list_ids(savedir)) == {ids[("h1", "root")][-1], ids[("h1", "home")][0],
                                             ids[("h2", "root")][-1]}
    # No rule keeps anything: refused (exit 2), never "remove everything".
    left = helpers.list_ids(savedir)
    expire(savedir, "--max-age", "0s", expect=2)
    expire(savedir, expect=2)
    assert helpers.list_ids(savedir) == left


def test_objects_a_running_backup_found_present_survive_expiry(tmp_path, savedir):
    """The case the seed's design missed: a running backup decided not to
    write an object because it was there; expiry must not then remove it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "shared.bin").write_bytes(os.urandom(3 * MIB))
    (src / "gone.bin").write_bytes(os.urandom(1 * MIB))
    first = helpers.backup(savedir, "src", cwd=str(tmp_path))
    shared = chunk_paths(savedir, first, b"src/shared.bin")
    gone = chunk_paths(savedir, first, b"src/gone.bin")
    age_files(os.path.join(savedir, "objects"), HOURS_AGO_2)
    old_mtime = os.stat(shared[0]).st_mtime
    (src / "gone.bin").unlink()
    (src / "new.bin").write_bytes(os.urandom(MIB))
    expected = helpers.snapshot(str(src))

    # The second backup reuses shared.bin (metadata unchanged), touching its
    # objects, then waits for more paths: running, no record names them.
    second_backup = FedBackup(savedir, tmp_path)
    second_backup.feed(b"src\0src/shared.bin\0")
    wait_until(lambda: all(os.stat(path).st_mtime > old_mtime for path in shared))
    second = [i for i in helpers.list_ids(savedir) if i != first][0]
    record = open(os.path.join(savedir, "backups", second)).read()
    assert '"state": "unfinished"' in record and '"root": null' in record
    helpers.run_ok(["--save-directory", savedir, "--delete-backup", first])
    report = expire(savedir, "--keep-last", "1", "--expire-grace", "0s")
    assert helpers.list_ids(savedir) == [second]
    assert removed_counts(report)[1] >= 1
    assert not any(os.path.exists(path) for path in gone)  # real garbage went
    assert all(os.path.exists(path) for path in shared)    # what it relies on stayed

    status, err = second_backup.finish(b"src/new.bin\0")
    assert status == 0, err
    restore_and_compare(savedir, second, expected, "src", tmp_path)
    helpers.run_ok(["--save-directory", savedir, "--verify"])


def test_unfinished_backups_live_are_kept_stale_are_removed(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(2 * MIB))
    crashing = FedBackup(savedir, tmp_path)
    crashing.feed(b"src\0src/a.bin\0")
    wait_until(lambda: len(object_files(savedir)) >= 1)
    crashing.proc.kill()  # as a crash would
    crashing.finish()
    (crashed,) = helpers.list_ids(savedir)
    assert '"state": "unfinished"' in open(os.path.join(savedir, "backups", crashed)).read()
    assert object_files(savedir)

    # Its record was just written: for all expire knows it is still running.
    report = expire(savedir, "--max-age", "0s", "--keep-last", "1", "--expire-grace", "0s")
    assert removed_counts(report) == (0, 0)
    assert helpers.list_ids(savedir) == [crashed]

    # No sign of life for two hours: it is dead, and its objects are garbage.
    age_files(os.path.join(savedir, "objects"), HOURS_AGO_2)
    record = os.path.join(savedir, "backups", crashed)
    os.utime(record, (time.time() - HOURS_AGO_2,) * 2)
    report = expire(savedir, "--max-age", "1d")  # younger than a day: kept
    assert helpers.list_ids(savedir) == [crashed]
    report = expire(savedir, "--max-age", "0s", "--keep-last", "1")
    assert "unfinished" in report and crashed in report
    assert helpers.list_ids(savedir) == []
    assert object_files(savedir) == []


def test_a_backup_expired_as_dead_that_wakes_up_stops(tmp_path, savedir):
    """A stalled backup (a suspended laptop) taken for dead and expired must
    not go on to publish a record naming objects that may have gone."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(MIB))
    (src / "b.bin").write_bytes(os.urandom(MIB))
    # No checkpoint while the test runs: one renewing the record after it is
    # aged below would (rightly) make the backup look alive.
    stalled_backup = FedBackup(savedir, tmp_path, extra=["--checkpoint-interval", "600"])
    stalled_backup.feed(b"src\0src/a.bin\0")
    wait_until(lambda: len(object_files(savedir)) >= 1)
    (stalled,) = helpers.list_ids(savedir)
    record = os.path.join(savedir, "backups", stalled)
    os.utime(record, (time.time() - HOURS_AGO_2,) * 2)
    report = expire(savedir, "--max-age", "0s", "--keep-last", "1")
    assert stalled in report and helpers.list_ids(savedir) == []
    status, err = stalled_backup.finish(b"src/b.bin\0")
    assert status == 2
    assert b"record was removed while it ran" in err and b"Traceback" not in err
    assert helpers.list_ids(savedir) == []


def test_expire_removes_nothing_while_a_remaining_backup_is_damaged(tmp_path, savedir):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "file.bin").write_bytes(os.urandom(MIB))
    helpers.outgrow_inline_record(str(src / "sub"))
    (src / "old.bin").write_bytes(os.urandom(MIB))
    helpers.backup(savedir, "src", cwd=str(tmp_path))
    (src / "old.bin").unlink()
    second = helpers.backup(savedir, "src", cwd=str(tmp_path))
    store = SaveDir(savedir, "test")
    (sub,) = TreeReader(store.objects).lookup(store.catalog.read(second).root, b"src/sub")
    os.unlink(store.objects.path_of(sub.chunks[0][0]))
    age_files(os.path.join(savedir, "objects"), HOURS_AGO_2)
    before = object_files(savedir)
    report = expire(savedir, "--max-age", "0s", "--keep-last", "1", expect=1)
    assert "damaged" in report and second in report
    assert object_files(savedir) == before


def test_leftovers_of_dead_writers_are_cleaned_up(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    # Under the chunker's minimum size: one chunk, whatever the random bytes.
    (src / "f.bin").write_bytes(os.urandom(MIB // 4))
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    (victim,) = chunk_paths(savedir, backup_id, b"src/f.bin")
    directory, name = os.path.split(victim)
    # An expire that died between renaming an object aside and judging it.
    trash = os.path.join(directory, ".expire-%s-otherhost-1-abcdef" % name)
    os.rename(victim, trash)
    old_temp = os.path.join(savedir, "objects", "00", ".tmp-deadhost-1-000000000000")
    new_temp = os.path.join(savedir, "objects", "00", ".tmp-livehost-1-000000000000")
    old_record_temp = os.path.join(savedir, "backups", ".tmp-deadhost-2-000000000000")
    for path in (old_temp, new_temp, old_record_temp):
        with open(path, "wb") as handle:
            handle.write(b"partial")
    for path in (old_temp, old_record_temp):
        os.utime(path, (time.time() - 2 * 86400,) * 2)
    expire(savedir, "--max-age", "1d")
    assert os.path.exists(victim) and not os.path.exists(trash)
    assert not os.path.exists(old_temp) and not os.path.exists(old_record_temp)
    assert os.path.exists(new_temp)
    helpers.run_ok(["--save-directory", savedir, "--verify"])


# -- expire in a loop while three backups run --------------------------------

HOSTS = ("h1", "h2", "h3")
# Objects unused for TIMESTAMP_MARGIN (5 s) before the oldest running
# backup began can go: run a little longer than that, so that the hosts'
# own garbage may go too (what must go is made before they start).
MIN_ROUNDS, MIN_SECONDS, MAX_ROUNDS = 4, 6.0, 60


def mutate(top, rng, round_number, common: bytes) -> None:
    """Change the tree a little, as a day of use would."""
    big = os.path.join(top, "big.bin")
    if round_number == 0:
        os.makedirs(os.path.join(top, "etc"))
        with open(big, "wb") as handle:
            handle.write(os.urandom(3 * MIB))
        with open(os.path.join(top, "common.bin"), "wb") as handle:
            handle.write(common)  # the same on every host: stored once
    else:
        with open(big, "r+b") as handle:  # rewrite a middle part
            handle.seek(rng.randrange(0, 2 * MIB))
            handle.write(os.urandom(600 * 1024))
    with open(os.path.join(top, "round-%d.bin" % round_number), "wb") as handle:
        handle.write(os.urandom(rng.randrange(20000, 900000)))
    if round_number >= 2:
        os.unlink(os.path.join(top, "round-%d.bin" % (round_number - 2)))
    with open(os.path.join(top, "etc", "conf"), "wb") as handle:
        handle.write(b"setting = %d\n" % round_number * 50)


def test_expire_in_a_loop_while_three_backups_run(tmp_path, savedir):
    common = os.urandom(2 * MIB)
    snapshots = {}
    failures = []
    done = threading.Event()

    def worker(host):
        rng = random.Random(host)
        top = str(tmp_path / host)
        started = time.monotonic()
        try:
            for round_number in range(MAX_ROUNDS):
                if round_number >= MIN_ROUNDS and time.monotonic() - started > MIN_SECONDS:
                    break
                mutate(top, rng, round_number, common)
                before = set(helpers.list_ids(savedir))
                # Processes, as several hosts' backups are.
                result = helpers.run_process(["--save-directory", savedir, "--backup",
                                              "--subset", "sys", "--hostname", host, "--no-fsync",
                                              "--checkpoint-interval", "0.05"],
                                             input=helpers.find_print0(host, cwd=str(tmp_path)),
                                             cwd=str(tmp_path))
                if result.returncode != 0:
                    failures.append((host, result.stderr))
                    return
                new = [backup_id for backup_id in set(helpers.list_ids(savedir)) - before
                       if "-%s-" % host in backup_id]
                assert len(new) <= 1, new
                if new:  # else already expired: nothing to restore
                    snapshots[new[0]] = (host, helpers.snapshot(top))
        except Exception as exc:  # reported by the main thread
            failures.append((host, repr(exc)))

    # Garbage for the first expire, whatever the threads' timing: objects
    # of a deleted backup, content of its own, unused for two hours.
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "unique.bin").write_bytes(os.urandom(300 * 1024))
    helpers.run_ok(["--save-directory", savedir, "--delete-backup",
                    helpers.backup(savedir, "gone", subset="x", cwd=str(tmp_path))])
    age_files(os.path.join(savedir, "objects"), HOURS_AGO_2)
    threads = [threading.Thread(target=worker, args=(host,)) for host in HOSTS]
    for thread in threads:
        thread.start()
    # Never all of them at once: some backups must remain to be restored.
    settings = [["--keep-last", "1"], ["--keep-last", "2"],
                ["--keep-within", "0s", "--hostname", "h3"],
                ["--keep-last", "1", "--hostname", "h2"], ["--keep-within", "0s", "--subset", "x"]]
    runs = objects_removed = backups_removed = 0
    try:
        while runs == 0 or any(thread.is_alive() for thread in threads):
            report = expire(savedir, "--max-age", "0s", "--expire-grace", "0s",
                            *settings[runs % len(settings)])
            removed = removed_counts(report)
            backups_removed += removed[0]
            objects_removed += removed[1]
            runs += 1
            if runs % 3 == 0:  # while backups write, a check finds nothing wrong
                result = helpers.run(["--save-directory", savedir, "--check"])
                assert result.returncode == 0, result.stderr.decode(errors="replace")
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not failures, failures
    # Writers done: one more run leaves the newest backup of each host, so
    # how many were removed in all no longer hangs on the threads' timing.
    removed = removed_counts(expire(savedir, "--max-age", "0s", "--expire-grace", "0s",
                                    "--keep-last", "1"))
    backups_removed += removed[0]
    objects_removed += removed[1]
    assert runs >= 3 and backups_removed >= 3
    assert objects_removed >= 1, "expiry never swept anything during the run"

    # Every backup that is left restores exactly what was backed up.
    remaining = helpers.list_ids(savedir)
    assert remaining
    for backup_id in remaining:
        host, expected = snapshots[backup_id]
        restore_and_compare(savedir, backup_id, expected, host, tmp_path)
    helpers.run_ok(["--save-directory", savedir, "--verify"])
    # And a last expire with nothing running leaves only what they use.
    expire(savedir, "--max-age", "0s", "--keep-last", "1", "--expire-grace", "0s")
    helpers.run_ok(["--save-directory", savedir, "--verify"])
