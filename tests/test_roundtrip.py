"""Back up real trees from real find output, restore through real tar, compare."""

import io
import os
import shutil
import subprocess
import tarfile

import pytest

import helpers


def test_hostile_tree_round_trip_gnu_tar(tmp_path, savedir):
    src = str(tmp_path / "src")
    helpers.make_hostile_tree(src)
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    out = str(tmp_path / "out")
    helpers.extract(helpers.produce_tar(savedir, backup_id), out)
    helpers.assert_same_tree(src, os.path.join(out, "src"))


def test_absolute_paths_restore_relative(tmp_path, savedir):
    src = str(tmp_path / "src")
    helpers.make_hostile_tree(src)
    backup_id = helpers.backup(savedir, src)
    stream = helpers.produce_tar(savedir, backup_id)
    names = tarfile.open(fileobj=io.BytesIO(stream)).getnames()
    assert names and not any(name.startswith("/") or ".." in name.split("/") for name in names)
    out = str(tmp_path / "out")
    helpers.extract(stream, out)
    helpers.assert_same_tree(src, os.path.join(out, src.lstrip("/")))


def test_dot_root_is_restored_with_its_metadata(tmp_path, savedir):
    src = tmp_path / "src"
    helpers.make_hostile_tree(str(src))
    os.chmod(src, 0o751)
    backup_id = helpers.backup(savedir, ".", cwd=str(src))
    out = tmp_path / "out"
    helpers.extract(helpers.produce_tar(savedir, backup_id), str(out))
    assert os.stat(out).st_mode & 0o777 == 0o751
    helpers.assert_same_tree(str(src), str(out))


def test_bsdtar_and_tarfile_read_the_stream(tmp_path, savedir):
    if shutil.which("bsdtar") is None:
        pytest.fail("bsdtar is not installed (.ci/run installs libarchive-tools)")
    src = str(tmp_path / "src")
    helpers.make_hostile_tree(src)
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    stream = helpers.produce_tar(savedir, backup_id)
    listing = subprocess.run(["bsdtar", "-tf", "-"], input=stream, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert listing.returncode == 0, listing.stderr
    assert b"src/plain.txt" in listing.stdout.splitlines()
    out = str(tmp_path / "bsd")
    helpers.extract(stream, out, tar=("bsdtar", "-xpf", "-"))
    helpers.assert_same_tree(src, os.path.join(out, "src"), dir_mtimes=False)
    with tarfile.open(fileobj=io.BytesIO(stream)) as archive:
        member = archive.getmember("src/big.bin")
        with open(os.path.join(src, "big.bin"), "rb") as handle:
            assert archive.extractfile(member).read() == handle.read()
        names = archive.getnames()
    assert os.fsdecode(b"src/bad\xff\xfename") in names
    assert "src/new\nline" in names


def test_subtree_restore(tmp_path, savedir):
    src = str(tmp_path / "src")
    helpers.make_hostile_tree(src)
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    stream = helpers.produce_tar(savedir, backup_id, ["--starting-directory", "src/dir"])
    names = set(tarfile.open(fileobj=io.BytesIO(stream)).getnames())
    assert "src/dir" in names and "src/dir/sub/hard-medium" in names
    assert "src/plain.txt" not in names
    out = str(tmp_path / "out")
    helpers.extract(stream, out)
    helpers.assert_same_tree(os.path.join(src, "dir"), os.path.join(out, "src", "dir"))


def test_hard_link_inside_subtree_carries_data_when_first_link_is_outside(tmp_path, savedir):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "first").write_bytes(b"shared content")
    os.link(src / "a" / "first", src / "b" / "second")
    os.link(src / "a" / "first", src / "b" / "third")
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    stream = helpers.produce_tar(savedir, backup_id, ["--starting-directory", "/src/b"])
    out = tmp_path / "out"
    helpers.extract(stream, str(out))
    second, third = out / "src" / "b" / "second", out / "src" / "b" / "third"
    assert second.read_bytes() == b"shared content"
    assert os.stat(second).st_ino == os.stat(third).st_ino


def test_listing_matches_tar_listing(tmp_path, savedir):
    src = str(tmp_path / "src")
    helpers.make_hostile_tree(src)
    backup_id = helpers.backup(savedir, "src", cwd=str(tmp_path))
    simple = helpers.run_ok(["--save-directory", savedir, "--list-backup-simply",
                             "--backup-id", backup_id]).stdout.splitlines()
    tar_names = subprocess.run(["tar", "tf", "-"], input=helpers.produce_tar(savedir, backup_id),
                               stdout=subprocess.PIPE, check=True).stdout.splitlines()
    assert simple == tar_names
    verbose = helpers.run_ok(["--save-directory", savedir, "--list-backup",
                              "--backup-id", backup_id]).stdout.splitlines()
    assert len(verbose) == len(simple)
    script = [line for line in verbose if line.endswith(b" src/dir/exec.sh")]
    assert script and script[0].startswith(b"-rwxr-xr-x ") and b" 18 " in script[0]
    assert any(line.startswith(b"lrwxrwxrwx") and line.endswith(b"src/link-to-plain -> plain.txt")
               for line in verbose)


def test_list_backups_shows_host_subset_and_state(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"12345")
    backup_id = helpers.backup(savedir, "src", subset="home", cwd=str(tmp_path),
                               extra=["--hostname", "alpha"])
    lines = helpers.run_ok(["--save-directory", savedir, "--list-backups"]).stdout.splitlines()
    assert len(lines) == 1
    fields = lines[0].decode().split("\t")
    assert fields[0] == backup_id and fields[1:3] == ["alpha", "home"]
    assert fields[4] != "unfinished" and fields[5:7] == ["1", "5"]
