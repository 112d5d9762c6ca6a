"""Issue 4 item 3 over the network: the save directory on a real sshfs mount.

An sshd is started on 127.0.0.1 (a free port, a host key and a client key
generated for the tests, one sshd for them all), a directory is mounted with sshfs, and four backup
processes write into a save directory on the mount at once.  Skipped only
where /dev/fuse is missing.  Also: sshfs inode numbers are not stable across
mounts, which is what --no-inode-check is for.
"""

import os
import pwd
import shutil
import socket
import subprocess

import pytest

import helpers
from helpers import NO_SETTLE, backup, four_at_once, read_record, run_ok

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                                reason="sshfs test not run: /dev/fuse is missing")

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sshfs:
    """An sshd on loopback and the means to mount its directories."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.port = _free_port()
        self.key = os.path.join(work, "client_key")
        self.mounts = []
        host_key = os.path.join(work, "host_key")
        for key in (host_key, self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key],
                           check=True, stdin=subprocess.DEVNULL)
        authorized = os.path.join(work, "authorized_keys")
        shutil.copy(self.key + ".pub", authorized)
        os.chmod(authorized, 0o600)
        config = os.path.join(work, "sshd_config")
        with open(config, "w") as handle:
            handle.write("\n".join([
                "ListenAddress 127.0.0.1", "Port %d" % self.port, "HostKey " + host_key,
                "AuthorizedKeysFile " + authorized, "PasswordAuthentication no",
                "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
                "UsePAM no", "StrictModes no", "PidFile " + os.path.join(work, "sshd.pid"),
                "Subsystem sftp internal-sftp", ""]))
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
        self.log = os.path.join(work, "sshd.log")  # a file: a full pipe would stall sshd
        with open(self.log, "wb") as log:
            self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", config],
                                         stdout=subprocess.DEVNULL, stderr=log)
        helpers.wait_until(self._listening, timeout=20, what="sshd to listen")

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            assert self.sshd.poll() is None, open(self.log, "rb").read().decode(errors="replace")
            return False

    def mount(self, remote: str, mountpoint: str) -> None:
        os.makedirs(mountpoint, exist_ok=True)
        user = pwd.getpwuid(os.getuid()).pw_name
        subprocess.run(["sshfs", "%s@127.0.0.1:%s" % (user, remote), mountpoint,
                        "-p", str(self.port), "-o",
                        "IdentityFile=%s,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
                        "BatchMode=yes,LogLevel=ERROR" % self.key],
                       check=True, stdin=subprocess.DEVNULL, timeout=60)
        self.mounts.append(mountpoint)

    def unmount(self, mountpoint: str) -> None:
        command = ["fusermount3", "-u"] if shutil.which("fusermount3") else \
            ["fusermount", "-u"] if shutil.which("fusermount") else ["umount"]
        subprocess.run(command + [mountpoint], check=False, timeout=60)
        self.mounts.remove(mountpoint)

    def close(self) -> None:
        for mountpoint in list(self.mounts):
            self.unmount(mountpoint)
        self.sshd.kill()
        self.sshd.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One sshd for the module's tests."""
    server = Sshfs(str(tmp_path_factory.mktemp("ssh")))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def sshfs(server):
    """The module's sshd; what a test mounts is unmounted after it."""
    try:
        yield server
    finally:
        for mountpoint in list(server.mounts):
            server.unmount(mountpoint)


def test_four_writers_on_sshfs(sshfs, tmp_path):
    remote = str(tmp_path / "remote")
    os.makedirs(remote)
    mount = str(tmp_path / "mnt")
    sshfs.mount(remote, mount)
    savedir = os.path.join(mount, "savedir")
    run_ok(["--save-directory", savedir, "--init-savedir"])
    base = str(tmp_path / "sources")
    os.makedirs(base)
    # Durable writes (fsync) on: sshfs passes them on to the server.
    four_at_once(savedir, base)
    # What the mount shows is what the server's disk holds.
    assert sorted(os.listdir(os.path.join(remote, "savedir", "backups"))) == \
        sorted(os.listdir(os.path.join(savedir, "backups")))


def test_no_inode_check_on_sshfs_source(sshfs, savedir, tmp_path):
    # sshfs numbers inodes in the order it meets files, so after a remount
    # that looks files up in another order, inodes differ: with the inode
    # check every such file is read again; --no-inode-check reuses them.
    remote = str(tmp_path / "remote")
    os.makedirs(os.path.join(remote, "src"))
    names = ["f%02d" % n for n in range(20)]
    for name in names:
        with open(os.path.join(remote, "src", name), "wb") as handle:
            handle.write(os.urandom(30_000))
    mount = str(tmp_path / "mnt")
    sshfs.mount(remote, mount)
    for name in names:
        os.lstat(os.path.join(mount, "src", name))
    # Two subsets, so each second backup can only reuse the first mount's.
    backup(savedir, "src", cwd=mount, subset="checked", extra=NO_SETTLE)
    backup(savedir, "src", cwd=mount, subset="trusting", extra=NO_SETTLE)
    sshfs.unmount(mount)
    sshfs.mount(remote, mount)
    for name in reversed(names):
        os.lstat(os.path.join(mount, "src", name))
    checked = read_record(savedir, backup(savedir, "src", cwd=mount, subset="checked",
                                          extra=NO_SETTLE))
    trusting = read_record(savedir, backup(savedir, "src", cwd=mount, subset="trusting",
                                           extra=("--no-inode-check",) + NO_SETTLE))
    assert checked["files_reused"] < len(names) and checked["bytes_read"] > 0
    assert trusting["files_reused"] == len(names) and trusting["bytes_read"] == 0
