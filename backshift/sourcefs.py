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
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
               | getattr(os, "O_CLOEXEC", 0))
_NOATIME = getattr(os, "O_NOATIME", 0)
# PyPy lacks these constants; on Linux their values are fixed by the ABI.
_LINUX = sys.platform.startswith("linux")
_SEEK_DATA = getattr(os, "SEEK_DATA", 3 if _LINUX else None)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", 4 if _LINUX else None)
# Advise the kernel to drop what we read every this many bytes.
FADVISE_STEP = 8 * 1024 * 1024


class SourceError(Exception):
    """A source path that cannot be saved; the message names the reason."""


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP or exc.errno == errno.ENOTDIR:
        return "a path component is not a directory (replaced by a symlink?)"
    return exc.strerror or str(exc)


class ParentCache:
    """Holds open, verified descriptors of the directories on the current path.

    Files arrive in find order, so consecutive paths share a parent, and
    the next directory is a child of one of the current directory's
    ancestors: keeping their descriptors means each directory is opened
    once, descending from its verified parent, never re-walked from the top.
    """

    # Descriptors held at most (deeper trees reopen the middle of the chain).
    MAX_HELD = 64

    def __init__(self) -> None:
        self._chain: List[Tuple[bytes, int]] = []  # (path, fd), ancestors first

    def close(self) -> None:
        for _path, fd in self._chain:
            os.close(fd)
        self._chain = []

    def parent_fd(self, directory: bytes) -> int:
        """A descriptor for ``directory`` reached without following any symlink."""
        chain = self._chain
        if chain and chain[-1][0] == directory:
            return chain[-1][1]
        while chain and not _is_within(directory, chain[-1][0]):
            os.close(chain.pop()[1])
        if not chain:
            start = b"/" if directory.startswith(b"/") else b"."
            chain.append((start, os.open(start, _DIR_FLAGS)))
            if directory == start:
                return chain[-1][1]
        base, fd = chain[-1]
        path = base
        rest = directory if base == b"." else directory[len(base):]
        for component in rest.split(b"/"):
            if component in (b"", b"."):
                continue
            fd = os.open(component, _DIR_FLAGS, dir_fd=fd)
            if path == b".":
                path = component
            else:
                path = path + component if path.endswith(b"/") else path + b"/" + component
            chain.append((path, fd))
            if len(chain) > self.MAX_HELD:
                os.close(chain.pop(1)[1])
        if path != directory:
            chain.append((directory, os.dup(fd)))  # the same directory, spelled otherwise
        return chain[-1][1]


def _is_within(directory: bytes, ancestor: bytes) -> bool:
    """Is ``directory`` the path ``ancestor`` or below it (as spelled)?"""
    if directory == ancestor:
        return True
    if ancestor == b".":
        return not directory.startswith(b"/")
    prefix = ancestor if ancestor.endswith(b"/") else ancestor + b"/"
    return directory.startswith(prefix)


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
        # Extended attributes are read through /proc/self/fd/<parent>/<name>
        # where /proc is mounted (checked once: a stat per file adds up).
        self._proc_fd = os.path.isdir(b"/proc/self/fd")
        # Content bytes read from the source so far (reported in the backup
        # record, so tests and users can see what an incremental re-read).
        self.bytes_read = 0

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
        return self.lstat_at(parent, name)

    def lstat_at(self, parent: bytes, name: bytes) -> os.stat_result:
        """lstat the path split_parent splits into ``parent`` and ``name``."""
        try:
            return os.stat(name, dir_fd=self._parents.parent_fd(parent), follow_symlinks=False)
        except OSError as exc:
            self._parents.close()
            raise SourceError(_reason(exc)) from None

    def readlink(self, path: bytes) -> bytes:
        parent, name = split_parent(path)
        try:
            return os.readlink(name, dir_fd=self._parents.parent_fd(parent))
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # lstat saw a symlink; something else is there now
                raise SourceError("changed during backup (no longer a symlink); not saved") \
                    from None
            raise SourceError(_reason(exc)) from None

    def xattrs(self, path: bytes) -> Tuple[Dict[bytes, bytes], Optional[str]]:
        """Extended attributes (ACLs included) of ``path`` itself, never of a link's target.

        Returns the attributes read and, if some could not be, why.  The
        path is reached through the verified parent descriptor, via
        /proc/self/fd where there is one, so no component is followed.
        """
        if not hasattr(os, "listxattr"):
            return {}, None
        parent, name = split_parent(path)
        where = path
        if name not in (b".", b"/", b"") and self._proc_fd:
            try:
                where = b"/proc/self/fd/%d/%s" % (self._parents.parent_fd(parent), name)
            except OSError as exc:
                return {}, "extended attributes not read: " + _reason(exc)
        return read_xattrs(where)

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
        return SourceFile(fd, actual, self._count_read)

    def _count_read(self, count: int) -> None:
        self.bytes_read += count

    def user_name(self, uid: int) -> bytes:
        return _cached_name(self._users, uid, lambda: pwd.getpwuid(uid).pw_name)

    def group_name(self, gid: int) -> bytes:
        return _cached_name(self._groups, gid, lambda: grp.getgrgid(gid).gr_name)


def read_xattrs(where: Union[bytes, int]) -> Tuple[Dict[bytes, bytes], Optional[str]]:
    """Extended attributes of a path (not followed) or an open descriptor, and any problem."""
    if not hasattr(os, "listxattr"):
        return {}, None
    follow = isinstance(where, int)  # a descriptor is the file itself; a path is not followed
    try:
        names = os.listxattr(where, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            return {}, None  # the file system (or FUSE server) has none
        return {}, "extended attributes not read: " + _reason(exc)
    found: Dict[bytes, bytes] = {}
    problems: List[str] = []
    for attribute in sorted(names):
        try:
            found[os.fsencode(attribute)] = os.getxattr(where, attribute, follow_symlinks=follow)
        except OSError as exc:
            if exc.errno != errno.ENODATA:  # removed since listed: nothing lost
                problems.append("%s (%s)" % (attribute, _reason(exc)))
    if problems:
        return found, "extended attributes not saved: " + ", ".join(problems)
    return found, None


def _cached_name(cache: Dict[int, bytes], number: int, lookup: Callable[[], str]) -> bytes:
    """A user or group name, b"" when the number has none; looked up once each."""
    name = cache.get(number)
    if name is None:
        try:
            name = lookup().encode("utf-8", "surrogateescape")
        except KeyError:
            name = b""
        cache[number] = name
    return name


def _open_noatime(name: bytes, parent_fd: int) -> int:
    if _NOATIME:
        try:
            return os.open(name, _FILE_FLAGS | _NOATIME, dir_fd=parent_fd)
        except PermissionError:
            pass  # O_NOATIME needs ownership or CAP_FOWNER; fall back quietly
    return os.open(name, _FILE_FLAGS, dir_fd=parent_fd)


class SourceFile:
    """An opened regular file, read sequentially, kept out of the page cache.

    Reads stop at the size the file had when opened, as GNU tar's do: a file
    that grows while read is saved as it was, then reported as changed,
    instead of being chased forever.
    """

    def __init__(self, fd: int, st: os.stat_result,
                 on_close: Optional[Callable[[int], None]] = None) -> None:
        self.fd = fd
        self.stat = st
        self.offset = 0
        self._advised = 0
        self._on_close = on_close
        self._read_count = 0

    def xattrs(self) -> Tuple[Dict[bytes, bytes], Optional[str]]:
        """Extended attributes of the open file (cheaper than by path)."""
        return read_xattrs(self.fd)

    def __enter__(self) -> "SourceFile":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            self._drop_cache(final=True)
            os.close(self.fd)
            self.fd = -1
            if self._on_close is not None:
                self._on_close(self._read_count)

    def seek(self, offset: int) -> None:
        os.lseek(self.fd, offset, os.SEEK_SET)
        self.offset = offset
        self._advised = offset

    def data_extents(self) -> Optional[List[Tuple[int, int]]]:
        """(offset, length) of the data regions of a file with holes, else None.

        Holes are found with SEEK_DATA/SEEK_HOLE, asked only when the file
        has fewer blocks than its size needs, so ordinary files cost nothing
        and a mostly empty 9 GiB file is never read as zeros.
        """
        size = self.stat.st_size
        if _SEEK_DATA is None or self.stat.st_blocks * 512 >= size:
            return None
        extents: List[Tuple[int, int]] = []
        offset = 0
        try:
            while offset < size:
                try:
                    start = os.lseek(self.fd, offset, _SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:
                        break  # nothing but a hole up to the end
                    raise
                if start >= size:
                    break
                end = min(os.lseek(self.fd, start, _SEEK_HOLE), size)
                extents.append((start, end - start))
                offset = end
            os.lseek(self.fd, self.offset, os.SEEK_SET)
        except OSError:
            return None  # no hole support here: read it all
        if sum(length for _, length in extents) >= size:
            return None
        return extents

    def extent_reader(self, extents: Sequence[Tuple[int, int]],
                      skip: int = 0) -> Callable[[int], bytes]:
        """A read function giving the data extents back to back, from ``skip`` bytes in.

        Once the last extent is read the whole file counts as read (the
        holes hold nothing), so changed_while_read works as for any file.
        """
        pending: List[Tuple[int, int]] = []
        for offset, length in extents:
            if skip >= length:
                skip -= length
                continue
            pending.append((offset + skip, length - skip))
            skip = 0
        pending.reverse()

        def read(size: int) -> bytes:
            if not pending:
                self.offset = max(self.offset, self.stat.st_size)
                return b""
            offset, length = pending[-1]
            if self.offset != offset:
                self._drop_cache()
                self.seek(offset)
            data = self.read(min(size, length))
            if not data:
                pending.clear()  # the file shrank; changed_while_read will say so
            elif len(data) == length:
                pending.pop()
            else:
                pending[-1] = (offset + len(data), length - len(data))
            return data
        return read

    def read(self, size: int) -> bytes:
        size = min(size, self.stat.st_size - self.offset)
        if size <= 0:
            return b""
        try:
            data = os.read(self.fd, size)
        except OSError as exc:
            raise SourceError("read error at offset %d: %s" % (self.offset, _reason(exc))) from None
        self.offset += len(data)
        self._read_count += len(data)
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
        """Did size, mtime or ctime move since open, or did we read other than st_size bytes?

        The ctime as GNU tar checks it: a rewrite in place whose writer then
        set the mtime back (as rsync or a careful tool may) still moves it.
        """
        try:
            now = os.fstat(self.fd)
        except OSError:
            return True
        before = self.stat
        return (now.st_size != before.st_size or now.st_mtime_ns != before.st_mtime_ns
                or now.st_ctime_ns != before.st_ctime_ns or self.offset != before.st_size)


def device_numbers(rdev: int) -> Tuple[int, int]:
    """(major, minor) of a device number as stat gives it.

    On Linux this decodes glibc's layout itself: PyPy 7.3's os.major and
    os.minor return garbage once the number passes 2**31 (minors of 2**19
    and up), while CPython agrees with this formula everywhere."""
    if sys.platform.startswith("linux"):
        return (((rdev >> 8) & 0xFFF) | ((rdev >> 32) & 0xFFFFF000),
                (rdev & 0xFF) | ((rdev >> 12) & 0xFFFFFF00))
    return os.major(rdev), os.minor(rdev)

