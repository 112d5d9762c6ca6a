"""Copying a save directory with cp -a or rsync -a while a backup writes
to it (seed feature 9): records first, then objects, as README says."""

import os
import random
import signal
import subprocess

import helpers

MIB = 1024 * 1024
RSYNC_EXCLUDES = ["--exclude=.tmp-*", "--exclude=.expire-*"]
# Compression is not under test here: the text is stored in less time so.
CHEAP = ["--compression", "zlib:1"]


def make_tree(top) -> None:
    os.makedirs(os.path.join(top, "sub"))
    rng = random.Random(3)
    words = [b"%x" % rng.getrandbits(40) for _ in range(3000)]
    for number in range(6):
        with open(os.path.join(top, "sub", "text-%d.txt" % number), "wb") as handle:
            for _ in range(12):
                handle.write(b" ".join(rng.choices(words, k=20000)) + b"\n")
    with open(os.path.join(top, "random.bin"), "wb") as handle:
        handle.write(os.urandom(4 * MIB))
    for number in range(50):
        with open(os.path.join(top, "small-%d" % number), "wb") as handle:
            handle.write(b"small file %d\n" % number)


def start_backup(savedir, tmp_path, top="src", subset="copy"):
    listing = tmp_path / ("paths-" + subset)
    listing.write_bytes(helpers.find_print0(top, cwd=str(tmp_path)))
    with open(str(listing), "rb") as stdin:
        return subprocess.Popen(helpers.BACKSHIFT + [
            "--save-directory", savedir, "--backup", "--subset", subset, "--no-fsync",
            "--checkpoint-interval", "0.1"], stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=str(tmp_path))


def cp_records_then_objects(savedir, dest) -> None:
    """README's cp -a recipe; a temporary file renamed away mid-copy is all cp may miss."""
    os.makedirs(dest)
    for names in (["backshift-format", "backups"], ["objects"]):
        result = subprocess.run(["cp", "-a"] + [os.path.join(savedir, name) for name in names]
                                + [dest], stderr=subprocess.PIPE)
        complaints = [line for line in result.stderr.decode(errors="replace").splitlines()
                      if ".tmp-" not in line]
        assert not complaints, complaints


def rsync_records_then_objects(savedir, dest) -> None:
    os.makedirs(dest, exist_ok=True)
    for names, extra in ((["backshift-format", "backups"], ["--delete"]), (["objects"], [])):
        result = subprocess.run(["rsync", "-a"] + extra + RSYNC_EXCLUDES
                                + [os.path.join(savedir, name) for name in names] + [dest + "/"],
                                stderr=subprocess.PIPE)
        assert result.returncode == 0, result.stderr


def check(path):
    return helpers.run(["--save-directory", path, "--check"])


def completed(path):
    ids = []
    for backup_id in helpers.list_ids(path):
        with open(os.path.join(path, "backups", backup_id)) as handle:
            if '"state": "complete"' in handle.read():
                ids.append(backup_id)
    return ids


def test_copies_taken_during_a_backup_pass_check(tmp_path, savedir):
    make_tree(str(tmp_path / "src"))
    first = helpers.backup(savedir, "src", cwd=str(tmp_path), subset="first",
                           extra=CHEAP)
    proc = start_backup(savedir, tmp_path)
    copies = []
    try:
        while proc.poll() is None or len(copies) < 2:
            number = len(copies)
            cp_dest = str(tmp_path / ("cp-%d" % number))
            cp_records_then_objects(savedir, cp_dest)
            rsync_dest = str(tmp_path / "mirror")  # one mirror, updated again and again
            rsync_records_then_objects(savedir, rsync_dest)
            copies.append(cp_dest)
            result = check(rsync_dest)
            assert result.returncode == 0, result.stderr
            assert len(copies) < 50
    finally:
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    print("%d copies taken while the backup ran" % len(copies))
    for dest in copies:
        result = check(dest)
        assert result.returncode == 0, (dest, result.stderr)
        assert first in completed(dest)
    # The last mirror run after the backup ended has it complete, and restores.
    rsync_records_then_objects(savedir, str(tmp_path / "mirror"))
    assert completed(str(tmp_path / "mirror")) == completed(savedir)
    second = [backup_id for backup_id in completed(savedir) if backup_id != first][0]
    out = tmp_path / "restored"
    helpers.extract(helpers.produce_tar(str(tmp_path / "mirror"), second), str(out))
    helpers.assert_same_tree(str(tmp_path / "src"), str(out / "src"))


def test_records_first_is_the_order_that_works(tmp_path, savedir):
    """A backup that completes between the two steps: records first keeps the
    copy whole (its record is copied unfinished); objects first does not."""
    make_tree(str(tmp_path / "src"))
    helpers.backup(savedir, "src", cwd=str(tmp_path), subset="first",
                           extra=CHEAP)

    def paused_backup(subset):
        proc = start_backup(savedir, tmp_path, subset=subset)
        helpers.wait_until(lambda: any("-%s-" % subset in name
                                       for name in helpers.list_ids(savedir)), timeout=60)
        proc.send_signal(signal.SIGSTOP)
        return proc

    def finish(proc):
        proc.send_signal(signal.SIGCONT)
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err

    good = str(tmp_path / "good")
    os.makedirs(good)
    proc = paused_backup("second")
    subprocess.run(["cp", "-a", os.path.join(savedir, "backshift-format"),
                    os.path.join(savedir, "backups"), good], check=True)
    finish(proc)
    subprocess.run(["cp", "-a", os.path.join(savedir, "objects"), good], check=True)
    result = check(good)
    assert result.returncode == 0, result.stderr

    bad = str(tmp_path / "bad")
    os.makedirs(bad)
    (tmp_path / "src" / "new.bin").write_bytes(os.urandom(2 * MIB))
    proc = paused_backup("third")
    subprocess.run(["cp", "-a", os.path.join(savedir, "objects"), bad], check=True)
    finish(proc)
    subprocess.run(["cp", "-a", os.path.join(savedir, "backshift-format"),
                    os.path.join(savedir, "backups"), bad], check=True)
    result = check(bad)
    assert result.returncode == 1 and b"missing" in result.stderr
