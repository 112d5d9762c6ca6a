"""Reading the files being backed up, cautiously (seed features 7, 12 and 13).

Every path is resolved one component at a time with ``O_NOFOLLOW`` and
``dir_fd``, so a directory swapped for a symlink between ``find`` and us can
never lead the backup into someone else's files.  A regular file is opened
with ``O_NOFOLLOW`` relative to its verified parent and its ``fstat`` must
match the ``lstat`` we recorded (device, inode, type).  Data read is dropped
from the page cache as we go, and ``O_NOATIME`` is used where permitted.
Nothing is ever written on the source side.
"""

import errno
import grp
import os
import pwd
import stat
from typing import Dict, Optional, Tuple

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
               | getattr(os, "O_CLOEXEC", 0))
_NOATIME = getattr(os, "O_NOATIME", 0)
# Advise the kernel to drop what we read every this many bytes.
FADVISE_STEP = 8 * 1024 * 1024


class SourceError(Exception):
    """A source path that cannot be saved; the message names the reason."""


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
        return "a path component is not a directory (replaced by a symlink?)"
    return exc.strerror or str(exc)


class ParentCache:
    """Holds an open, verified descriptor of the directory last used.

    Files arrive in find order, so consecutive paths usually share a parent;
    keeping its descriptor avoids re-walking every component per file.
    """

    def __init__(self) -> None:
        self._path: Optional[bytes] = None
        self._fd: Optional[int] = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._path = None

    def parent_fd(self, directory: bytes) -> int:
        """A descriptor for ``directory`` reached without following any symlink."""
        if directory == self._path and self._fd is not None:
            return self._fd
        fd = open_directory_nofollow(directory)
        self.close()
        self._path, self._fd = directory, fd
        return fd


def open_directory_nofollow(directory: bytes) -> int:
    """Open a directory walking each component with O_NOFOLLOW."""
    start = b"/" if directory.startswith(b"/") else b"."
    fd = os.open(start, _DIR_FLAGS)
    try:
        for component in directory.split(b"/"):
            if component in (b"", b"."):
                continue
            next_fd = os.open(component, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except OSError:
        os.close(fd)
        raise
    return fd


def split_parent(path: bytes) -> Tuple[bytes, bytes]:
    """(parent directory, last component) of a source path."""
    stripped = path.rstrip(b"/") or path
    head, _, tail = stripped.rpartition(b"/")
    if not _:
        return b".", stripped
    return head or b"/", tail


class SourceTree:
    """Access to the live file system, one path at a time."""

    def __init__(self) -> None:
        self._parents = ParentCache()
        self._users: Dict[int, bytes] = {}
        self._groups: Dict[int, bytes] = {}

    def close(self) -> None:
        self._parents.close()

    def lstat(self, path: bytes) -> os.stat_result:
        """lstat ``path`` relative to its parent reached without symlinks."""
        parent, name = split_parent(path)
        if name in (b".", b"/", b""):
            try:
                return os.lstat(path)
            except OSError as exc:
                raise SourceError(_reason(exc)) from None
        try:
            fd = self._parents.parent_fd(parent)
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError as exc:
            self._parents.close()
            raise SourceError(_reason(exc)) from None

    def readlink(self, path: bytes) -> bytes:
        parent, name = split_parent(path)
        try:
            return os.readlink(name, dir_fd=self._parents.parent_fd(parent))
        except OSError as exc:
            raise SourceError(_reason(exc)) from None

    def open_file(self, path: bytes, expected: os.stat_result) -> "SourceFile":
        """Open a regular file that must still be the one ``expected`` describes."""
        parent, name = split_parent(path)
        try:
            parent_fd = self._parents.parent_fd(parent)
            fd = _open_noatime(name, parent_fd)
        except OSError as exc:
            raise SourceError(_reason(exc)) from None
        try:
            actual = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise SourceError(_reason(exc)) from None
        if (actual.st_dev, actual.st_ino) != (expected.st_dev, expected.st_ino) or \
                stat.S_IFMT(actual.st_mode) != stat.S_IFMT(expected.st_mode):
            os.close(fd)
            raise SourceError("file was replaced between lstat and open; not saved")
        return SourceFile(fd, actual)

    def user_name(self, uid: int) -> bytes:
        name = self._users.get(uid)
        if name is None:
            try:
                name = pwd.getpwuid(uid).pw_name.encode("utf-8", "surrogateescape")
            except KeyError:
                name = b""
            self._users[uid] = name
        return name

    def group_name(self, gid: int) -> bytes:
        name = self._groups.get(gid)
        if name is None:
            try:
                name = grp.getgrgid(gid).gr_name.encode("utf-8", "surrogateescape")
            except KeyError:
                name = b""
            self._groups[gid] = name
        return name


def _open_noatime(name: bytes, parent_fd: int) -> int:
    if _NOATIME:
        try:
            return os.open(name, _FILE_FLAGS | _NOATIME, dir_fd=parent_fd)
        except PermissionError:
            pass  # O_NOATIME needs ownership or CAP_FOWNER; fall back quietly
    return os.open(name, _FILE_FLAGS, dir_fd=parent_fd)


class SourceFile:
    """An opened regular file, read sequentially, kept out of the page cache."""

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.stat = st
        self.offset = 0
        self._advised = 0

    def __enter__(self) -> "SourceFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self._drop_cache(final=True)
            os.close(self.fd)
            self.fd = -1

    def seek(self, offset: int) -> None:
        os.lseek(self.fd, offset, os.SEEK_SET)
        self.offset = offset
        self._advised = offset

    def read(self, size: int) -> bytes:
        try:
            data = os.read(self.fd, size)
        except OSError as exc:
            raise SourceError("read error at offset %d: %s" % (self.offset, _reason(exc))) from None
        self.offset += len(data)
        if self.offset - self._advised >= FADVISE_STEP:
            self._drop_cache()
        return data

    def _drop_cache(self, final: bool = False) -> None:
        if not hasattr(os, "posix_fadvise") or self.offset <= self._advised and not final:
            return
        try:
            os.posix_fadvise(self.fd, self._advised, self.offset - self._advised,
                             os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        self._advised = self.offset

    def changed_while_read(self) -> bool:
        """Did size or mtime move since open, or did we read other than st_size bytes?"""
        try:
            now = os.fstat(self.fd)
        except OSError:
            return True
        return (now.st_size != self.stat.st_size or now.st_mtime_ns != self.stat.st_mtime_ns
                or self.offset != self.stat.st_size)
