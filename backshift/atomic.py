"""Files written whole or not at all: a unique temporary file, then a rename.

Every writer of the save directory (objects, backup records, the format
file) writes this way, so a reader never sees a partial file.  The
temporary file's name says which host and process wrote it
(``.tmp-<host>-<pid space>-<pid>-<random>``, FORMAT.md "Writing rule"), so
a leftover of a writer that is provably dead can be removed at once.

A pid alone proves nothing: machines may share a host name (two called
"web" writing one save directory), and containers on one machine have
pid namespaces of their own.  So the name carries a *pid space* token:
a digest of the machine's name, its boot id and the pid namespace, which
a process can compare with its own.  Where the token cannot be made (no
/proc), names carry none, and no one can prove their writer dead.
"""

import errno
import functools
import hashlib
import os
import re
from typing import Iterable, Optional

TEMP_PREFIX = ".tmp-"
# .tmp-<host>-<pid space>-<pid>-<random>; earlier versions (and systems
# without a pid space token) wrote .tmp-<host>-<pid>-<random>.
_TEMP_NAME = re.compile(r"^\.tmp-.+-([0-9a-f]{16})-(\d+)-[0-9a-f]{12}$")
BOOT_ID = "/proc/sys/kernel/random/boot_id"
PID_NAMESPACE = "/proc/self/ns/pid"


def safe_hostname(hostname: str) -> str:
    """A host name as it appears in temporary file names."""
    return "".join(c if c.isalnum() or c in "-." else "_" for c in hostname)


@functools.lru_cache(maxsize=1)
def pid_space() -> Optional[str]:
    """16 hex digits naming where this process's pid means something: this machine
    (by name), since its last boot, in this pid namespace; None if unknown.

    Fixed for a process's life (computed once).
    """
    try:
        with open(BOOT_ID, "rb") as handle:
            boot = handle.read().strip()
        namespace = os.readlink(PID_NAMESPACE).encode()
    except OSError:
        return None
    if not boot:
        return None
    node = os.uname().nodename.encode()
    return hashlib.blake2b(b"\0".join((node, boot, namespace)), digest_size=8).hexdigest()


def unique_suffix(hostname: str) -> str:
    """A name part no other writer (host, process) will choose."""
    space = pid_space()
    return "%s-%s%d-%s" % (safe_hostname(hostname), space + "-" if space else "", os.getpid(),
                           os.urandom(6).hex())


def write_file_atomically(directory: str, name: str, data: bytes, hostname: str,
                          durable: bool = True) -> None:
    """Write ``directory/name`` via a unique temporary file and a rename."""
    temp = os.path.join(directory, TEMP_PREFIX + unique_suffix(hostname))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
        # Written pages are clean after fsync and can be dropped (seed feature
        # 7); without fsync this only starts their write-back.
        drop_from_cache(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temp)
        raise
    os.close(fd)
    final = os.path.join(directory, name)
    try:
        os.rename(temp, final)
    except OSError as exc:
        # Some network file systems refuse to rename onto an existing name;
        # an object already there holds the same bytes, so that is success.
        _unlink_quietly(temp)
        if not (exc.errno in (errno.EEXIST, errno.EACCES, errno.EPERM) and os.path.exists(final)):
            raise


def fsync_directory(path: str) -> None:
    """Make renames into ``path`` durable (ignored where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def drop_from_cache(fd: int) -> None:
    """Tell the kernel we will not read this file again (seed feature 7)."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass




def this_host() -> str:
    """This machine's name as written into temporary file names by default."""
    return os.uname().nodename.split(".")[0] or "localhost"


def writer_is_dead(name: str) -> bool:
    """Is the temporary file ``name`` provably abandoned: written in this pid space
    (machine, boot, pid namespace: ``pid_space``) by a process that no longer exists?

    A name without a pid space token proves nothing.  A pid that exists
    again (reused) counts as alive, which errs on the safe side.
    """
    match = _TEMP_NAME.match(name)
    space = pid_space()
    if match is None or space is None or match.group(1) != space:
        return False
    pid = int(match.group(2))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # EPERM: it exists, under another user
    return False


def remove_if_writer_dead(path: str) -> bool:
    """Remove a temporary file whose writer is provably dead; True if removed."""
    if not writer_is_dead(os.path.basename(path)):
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def remove_dead_writers_files(directory: str, names: Iterable[str]) -> int:
    """Remove the temporary files among ``names`` (listed in ``directory``) whose writers
    are provably dead; how many were removed."""
    return sum(remove_if_writer_dead(os.path.join(directory, name)) for name in names
               if name.startswith(TEMP_PREFIX))
