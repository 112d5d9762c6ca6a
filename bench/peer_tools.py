"""The programs bench_peers.py compares, and the means to time them.

Each Tool knows how to make an empty repository, back up a path and restore
the latest backup; ``run_pipeline`` times a shell-like pipeline and keeps
the largest peak RSS and the CPU seconds of its processes.  ``Sshd`` is an
sshd on 127.0.0.1 (generated keys, a free port) that sshfs mounts, restic's
sftp backend and borg's ssh remote all use.
"""

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BACKSHIFT = [sys.executable, os.path.join(REPO, "bin", "backshift")]
MB = 1e6


class Run:
    """Wall time, CPU time (user + system, all processes) and peak RSS of a pipeline."""

    def __init__(self, seconds: float, peak_kib: int, cpu: float = 0.0) -> None:
        self.seconds = seconds
        self.peak_kib = peak_kib
        self.cpu = cpu

    def __add__(self, other: "Run") -> "Run":
        return Run(self.seconds + other.seconds, max(self.peak_kib, other.peak_kib),
                   self.cpu + other.cpu)


def run_pipeline(commands: Sequence[Sequence[str]], cwd: Optional[str] = None,
                 env: Optional[Dict[str, str]] = None, ok: Sequence[int] = (0,)) -> Run:
    """Run commands as a shell pipeline would; wall time, the largest max RSS, CPU."""
    started = time.perf_counter()
    procs: List[subprocess.Popen] = []
    previous = None
    for index, command in enumerate(commands):
        last = index == len(commands) - 1
        errors = tempfile.TemporaryFile()
        proc = subprocess.Popen(list(command), cwd=cwd, env=env, stdin=previous,
                                stdout=subprocess.DEVNULL if last else subprocess.PIPE,
                                stderr=errors)
        proc.errors = errors  # type: ignore[attr-defined]
        if previous is not None:
            previous.close()
        previous = proc.stdout
        procs.append(proc)
    peak = 0
    cpu = 0.0
    failures = []
    for proc, command in zip(procs, commands):
        # wait4 gives each process's own rusage (with its waited-for children).
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.errors.seek(0)  # type: ignore[attr-defined]
        err = proc.errors.read()  # type: ignore[attr-defined]
        proc.errors.close()  # type: ignore[attr-defined]
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak = max(peak, usage.ru_maxrss)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode not in ok:
            failures.append("%s: exit %d: %s" % (" ".join(command[:3]), proc.returncode,
                                                 err.decode(errors="replace")[-500:]))
    seconds = time.perf_counter() - started
    if failures:
        raise RuntimeError("; ".join(failures))
    return Run(seconds, peak, cpu)


def du(path: str, apparent: bool = False) -> int:
    args = ["du", "-s", "--block-size=1"] + (["--apparent-size"] if apparent else []) + [path]
    return int(subprocess.run(args, check=True, stdout=subprocess.PIPE).stdout.split()[0])


def count_files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def evict(top: str) -> None:
    """Drop the cached pages of every file under top (only those files)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for directory, _dirs, files in os.walk(top):
        for name in files:
            try:
                fd = os.open(os.path.join(directory, name),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def fresh_dir(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


# -- an sshd on loopback -------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Sshd:
    """An sshd on 127.0.0.1 with its own host and client keys; sshfs mounts of it."""

    def __init__(self, work: str) -> None:
        self.work = fresh_dir(work)
        self.port = _free_port()
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.key = os.path.join(work, "client_key")
        self.mounts: List[str] = []
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
        log = open(os.path.join(work, "sshd.log"), "wb")
        # sshd re-executes itself, so it must be started by its absolute path.
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.sshd = subprocess.Popen([sshd, "-D", "-e", "-f", config],
                                     stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.sshd.poll() is not None:
                    raise RuntimeError("sshd did not start (see %s)" % log.name)
                time.sleep(0.1)
        raise RuntimeError("sshd did not start")

    @property
    def ssh_options(self) -> List[str]:
        return ["-p", str(self.port), "-i", self.key, "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
                "-o", "LogLevel=ERROR"]

    def ssh_command(self) -> str:
        return " ".join(["ssh"] + self.ssh_options)

    def mount(self, remote: str, mountpoint: str) -> None:
        os.makedirs(remote, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)
        subprocess.run(["sshfs", "%s@127.0.0.1:%s" % (self.user, remote), mountpoint,
                        "-p", str(self.port), "-o",
                        "IdentityFile=%s,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
                        "BatchMode=yes,LogLevel=ERROR" % self.key],
                       check=True, stdin=subprocess.DEVNULL, timeout=60)
        self.mounts.append(mountpoint)

    def mount_traced(self, remote: str, mountpoint: str, log: str) -> subprocess.Popen:
        """Mount as ``mount`` does, sshfs in the foreground writing each SFTP request
        it sends to ``log`` (its -d output: a line "[id] TYPE" per request)."""
        os.makedirs(remote, exist_ok=True)
        os.makedirs(mountpoint, exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["sshfs", "%s@127.0.0.1:%s" % (self.user, remote), mountpoint, "-f", "-d",
                 "-p", str(self.port), "-o",
                 "IdentityFile=%s,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,"
                 "BatchMode=yes,LogLevel=ERROR" % self.key],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        deadline = time.monotonic() + 60
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sshfs did not mount (see %s)" % log)
            time.sleep(0.1)
        self.mounts.append(mountpoint)
        return proc

    def close(self) -> None:
        for mountpoint in reversed(self.mounts):
            subprocess.run(["fusermount", "-u", "-z", mountpoint], check=False)
        self.sshd.terminate()
        self.sshd.wait()


# -- the tools -----------------------------------------------------------------

class Tool:
    """One backup program: init, backup of a path, restore of the latest backup.

    ``repo`` is where its repository is, as the tool spells it (a path, or
    a remote URL for the ssh variants).
    """

    name = ""
    needs: Tuple[str, ...] = ()
    ok: Tuple[int, ...] = (0,)

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.env = dict(os.environ)
        self.count = 0

    def missing(self) -> Optional[str]:
        for program in self.needs:
            if shutil.which(program) is None:
                return "%s not installed" % program
        return None

    @property
    def local_path(self) -> str:
        """The repository's directory on this machine (for du, eviction, removal)."""
        return self.repo

    def init(self) -> None:
        self.count = 0
        shutil.rmtree(self.local_path, ignore_errors=True)

    def backup(self, source: str) -> Run:
        self.count += 1
        return run_pipeline(self.backup_commands(source), env=self.env, ok=self.ok)

    def backup_commands(self, source: str) -> List[List[str]]:
        raise NotImplementedError

    def restore(self, target: str, source: str) -> Run:
        raise NotImplementedError

    def _sh(self, *commands: Sequence[str]) -> None:
        for command in commands:
            subprocess.run(list(command), check=True, env=self.env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)


class Backshift(Tool):
    name = "backshift"
    needs = ("find", "tar")
    ok = (0, 1)  # 1: some file could not be read (reported, as tar does)
    options: Tuple[str, ...] = ()

    def init(self) -> None:
        super().init()
        self._sh(BACKSHIFT + ["--save-directory", self.repo, "--init-savedir"])

    def backup_commands(self, source: str) -> List[List[str]]:
        return [["find", source, "-print0"],
                BACKSHIFT + ["--save-directory", self.repo, "--backup", "--subset", "bench",
                             "--no-stats"] + list(self.options)]

    def latest(self) -> str:
        out = subprocess.run(BACKSHIFT + ["--save-directory", self.repo, "--list-backups"],
                             check=True, stdout=subprocess.PIPE).stdout.decode()
        return out.strip().splitlines()[-1].split()[0]

    def produce_tar(self) -> List[str]:
        return BACKSHIFT + ["--save-directory", self.repo, "--produce-tar",
                            "--backup-id", self.latest()]

    def restore(self, target: str, source: str) -> Run:
        return run_pipeline([self.produce_tar(), ["tar", "-C", target, "-xf", "-"]])


class BackshiftZlib(Backshift):
    name = "backshift-zlib"
    options = ("--compression", "zlib")


class Restic(Tool):
    name = "restic"
    needs = ("restic",)

    def __init__(self, repo: str) -> None:
        super().__init__(repo)
        self.env.update(RESTIC_PASSWORD="bench", RESTIC_REPOSITORY=repo,
                        RESTIC_CACHE_DIR=self.local_path + "-cache")

    def init(self) -> None:
        super().init()
        shutil.rmtree(self.local_path + "-cache", ignore_errors=True)
        self._sh(["restic", "init"] + self.extra())

    def extra(self) -> List[str]:
        return []

    def backup_commands(self, source: str) -> List[List[str]]:
        return [["restic", "backup", "--quiet", source] + self.extra()]

    def restore(self, target: str, source: str) -> Run:
        return run_pipeline([["restic", "restore", "latest", "--target", target]
                             + self.extra()], env=self.env)


class Borg(Tool):
    name = "borg-lz4"
    needs = ("borg",)
    compression = "lz4"

    def __init__(self, repo: str) -> None:
        super().__init__(repo)
        self.env.update(BORG_PASSPHRASE="", BORG_BASE_DIR=self.local_path + "-base",
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
                        BORG_RELOCATED_REPO_ACCESS_IS_OK="yes")

    def init(self) -> None:
        super().init()
        shutil.rmtree(self.local_path + "-base", ignore_errors=True)
        self._sh(["borg", "init", "--encryption", "none", self.repo])

    def backup_commands(self, source: str) -> List[List[str]]:
        return [["borg", "create", "--compression", self.compression,
                 "%s::b%d" % (self.repo, self.count), source]]

    def restore(self, target: str, source: str) -> Run:
        return run_pipeline([["borg", "extract", "%s::b%d" % (self.repo, self.count)]],
                            cwd=target, env=self.env)


class BorgLzma(Borg):
    name = "borg-lzma"
    compression = "auto,lzma,6"


class Bup(Tool):
    name = "bup"
    needs = ("bup",)

    def __init__(self, repo: str) -> None:
        super().__init__(repo)
        self.env.update(BUP_DIR=repo)

    def init(self) -> None:
        super().init()
        self._sh(["bup", "init"])

    def backup(self, source: str) -> Run:
        self.count += 1
        index = run_pipeline([["bup", "index", source]], env=self.env)
        return index + run_pipeline([["bup", "save", "-n", "bench", source]], env=self.env)

    def restore(self, target: str, source: str) -> Run:
        path = "/bench/latest" + os.path.abspath(source) + "/."
        return run_pipeline([["bup", "restore", "-q", "-C", target, path]], env=self.env)


class Rsync(Tool):
    name = "rsync"
    needs = ("rsync", "cp")

    def init(self) -> None:
        super().init()
        os.makedirs(self.repo)

    def backup_commands(self, source: str) -> List[List[str]]:
        snapshot = os.path.join(self.repo, "snap%d" % self.count)
        link = ["--link-dest=" + os.path.join(self.repo, "snap%d" % (self.count - 1))] \
            if self.count > 1 else []
        return [["rsync", "-aH"] + link + [source.rstrip("/") + "/", snapshot + "/"]]

    def restore(self, target: str, source: str) -> Run:
        return run_pipeline([["cp", "-a", os.path.join(self.repo, "snap%d" % self.count),
                              os.path.join(target, "data")]])


TOOLS = {cls.name: cls for cls in (Backshift, BackshiftZlib, Restic, Borg, BorgLzma, Bup, Rsync)}


# -- the same tools with the repository behind the loopback sshd ------------------

class SshfsBackshift(Backshift):
    """backshift with its save directory on an sshfs mount (``repo`` is the mount path)."""

    name = "backshift-sshfs"

    def __init__(self, repo: str, sshd: Sshd, remote: str) -> None:
        super().__init__(repo)
        self.remote = remote  # the same directory, as the sshd side sees it

    @property
    def local_path(self) -> str:
        return self.remote

    def init(self) -> None:
        super().init()  # removes the remote side directly, then creates through the mount


class SftpRestic(Restic):
    """restic's sftp backend through the loopback sshd."""

    name = "restic-sftp"

    def __init__(self, repo: str, sshd: Sshd) -> None:
        self.sshd = sshd
        self.path = repo
        super().__init__("sftp:%s@127.0.0.1:%s" % (sshd.user, repo))

    @property
    def local_path(self) -> str:
        return self.path

    def extra(self) -> List[str]:
        return ["-o", "sftp.command=%s %s@127.0.0.1 -s sftp"
                % (self.sshd.ssh_command(), self.sshd.user)]


class SshBorg(Borg):
    """borg with an ssh:// repository on the loopback sshd (``borg serve`` there)."""

    name = "borg-ssh"

    def __init__(self, repo: str, sshd: Sshd) -> None:
        self.path = repo
        super().__init__("ssh://%s@127.0.0.1:%d%s" % (sshd.user, sshd.port, repo))
        self.env["BORG_RSH"] = " ".join(["ssh"] + sshd.ssh_options[2:])

    @property
    def local_path(self) -> str:
        return self.path
