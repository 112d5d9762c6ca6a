"""Helpers for tests: run backshift and tar as real processes, compare trees."""

import os
import stat
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKSHIFT = [sys.executable, os.path.join(REPO, "bin", "backshift")]
RANDOMIZE = [sys.executable, os.path.join(REPO, "bin", "randomize")]


def run(args: Sequence[str], input: Optional[bytes] = None, cwd: Optional[str] = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(BACKSHIFT + list(args), input=input, cwd=cwd, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_ok(args: Sequence[str], input: Optional[bytes] = None,
           cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    result = run(args, input=input, cwd=cwd)
    assert result.returncode == 0, (args, result.returncode, result.stderr.decode(errors="replace"))
    return result


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> str:
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 2, (result.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("backshift: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def find_print0(top: str, cwd: Optional[str] = None) -> bytes:
    """Real GNU find output for ``top``."""
    return subprocess.run(["find", top, "-print0"], cwd=cwd, check=True,
                          stdout=subprocess.PIPE).stdout


def backup(savedir: str, top: str, subset: str = "test", cwd: Optional[str] = None,
           extra: Sequence[str] = (), expect: int = 0) -> str:
    """Back up ``top`` (as find prints it from ``cwd``); return the new backup id."""
    before = set(list_ids(savedir))
    result = run(["--save-directory", savedir, "--backup", "--subset", subset,
                  "--no-fsync"] + list(extra), input=find_print0(top, cwd), cwd=cwd)
    assert result.returncode == expect, result.stderr.decode(errors="replace")
    new = sorted(set(list_ids(savedir)) - before)
    assert len(new) == 1, new
    return new[0]


def list_ids(savedir: str) -> List[str]:
    return sorted(name for name in os.listdir(os.path.join(savedir, "backups"))
                  if not name.startswith("."))


def produce_tar(savedir: str, backup_id: str, extra: Sequence[str] = ()) -> bytes:
    return run_ok(["--save-directory", savedir, "--produce-tar", "--backup-id", backup_id]
                  + list(extra)).stdout


def extract(tar_bytes: bytes, dest: str, tar: Sequence[str] = ("tar", "xpf", "-")) -> None:
    os.makedirs(dest, exist_ok=True)
    result = subprocess.run(list(tar), input=tar_bytes, cwd=dest, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert result.returncode == 0, result.stderr.decode(errors="replace")


def du_bytes(path: str) -> int:
    """Allocated bytes, as ``du -s`` counts them."""
    out = subprocess.run(["du", "-s", "--block-size=1", path], check=True,
                         stdout=subprocess.PIPE).stdout
    return int(out.split()[0])


def snapshot(top: str, mtimes: bool = True, dir_mtimes: bool = True) -> Dict[bytes, Tuple]:
    """Every entry below ``top``: type, mode, content or target, mtime; and link groups."""
    top_b = os.fsencode(top)
    result: Dict[bytes, Tuple] = {}
    inodes: Dict[Tuple[int, int], List[bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(top_b):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top_b)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    payload = handle.read()
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                payload = os.readlink(full)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                payload = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                payload = None
            keep_mtime = mtimes and not stat.S_ISLNK(st.st_mode) and \
                (dir_mtimes or not stat.S_ISDIR(st.st_mode))
            result[rel] = (kind, stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode) else 0,
                           payload, st.st_mtime_ns // 10**9 if keep_mtime else None)
    groups = sorted(sorted(group) for group in inodes.values() if len(group) > 1)
    result[b"<hardlink groups>"] = tuple(tuple(group) for group in groups)
    return result


def assert_same_tree(expected: str, actual: str, **kwargs) -> None:
    a = snapshot(expected, **kwargs)
    b = snapshot(actual, **kwargs)
    missing = sorted(set(a) - set(b))
    extra = sorted(set(b) - set(a))
    assert not missing and not extra, ("missing", missing[:10], "extra", extra[:10])
    differ = [key for key in a if a[key] != b[key]]
    assert not differ, [(key, a[key], b[key]) for key in differ[:5]]


def make_hostile_tree(top: str) -> None:
    """A tree with every file type and awkward names (needs root for devices)."""
    os.makedirs(top)
    top_b = os.fsencode(top)

    def write(rel: bytes, data: bytes, mode: int = 0o644) -> None:
        path = os.path.join(top_b, rel)
        with open(path, "wb") as handle:
            handle.write(data)
        os.chmod(path, mode)

    os.makedirs(os.path.join(top_b, b"dir/sub/deeper"))
    write(b"plain.txt", b"hello world\n" * 10)
    write(b"empty", b"")
    write(b"big.bin", os.urandom(3 * 1024 * 1024 + 17))
    write(b"dir/medium.bin", os.urandom(40000))
    write(b"dir/exec.sh", b"#!/bin/sh\necho hi\n", 0o755)
    write(b"dir/setuid", b"x", 0o4755)
    write(b"dir/private", b"secret", 0o600)
    write(b"new\nline", b"newline in name")
    write(b"bad\xff\xfename", b"not utf-8")
    write(b"-leading-dash", b"dash")
    write(b"caf\xc3\xa9 \xe2\x98\x83", b"utf-8 name")
    write(b"x" * 250, b"long component")
    long_dir = os.path.join(top_b, b"/".join([b"d" * 200] * 6))
    os.makedirs(long_dir)
    with open(os.path.join(long_dir, b"f" * 100), "wb") as handle:
        handle.write(b"path over 1 KiB")
    os.symlink(b"plain.txt", os.path.join(top_b, b"link-to-plain"))
    os.symlink(b"/nonexistent/" + b"t" * 300, os.path.join(top_b, b"dangling-long-link"))
    os.symlink(b"dir", os.path.join(top_b, b"link-to-dir"))
    os.link(os.path.join(top_b, b"plain.txt"), os.path.join(top_b, b"dir/hardlink-to-plain"))
    os.link(os.path.join(top_b, b"dir/medium.bin"), os.path.join(top_b, b"dir/sub/hard-medium"))
    os.mkfifo(os.path.join(top_b, b"fifo"))
    if os.geteuid() == 0:
        os.mknod(os.path.join(top_b, b"chardev"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(os.path.join(top_b, b"blockdev"), 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    os.chmod(os.path.join(top_b, b"dir/sub"), 0o750)
    # Distinct old mtimes, set last so they stick (directories included).
    stamp = 1_500_000_000
    for dirpath, dirnames, filenames in os.walk(top_b, topdown=False):
        for name in filenames + dirnames:
            full = os.path.join(dirpath, name)
            stamp += 7
            os.utime(full, ns=(stamp * 10**9, stamp * 10**9 + 123), follow_symlinks=False)
    os.utime(top_b, ns=(stamp * 10**9, stamp * 10**9))


def read_record(savedir: str, backup_id: str) -> dict:
    """A backup record (backups/<id>) as the JSON document FORMAT.md describes."""
    import json
    with open(os.path.join(savedir, "backups", backup_id), "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def outgrow_inline_record(directory: str, files: int = 80) -> None:
    """Add empty files until ``directory``'s record is too big to be held in its
    parent's (backup.DIR_INLINE_MAX): it then gets objects of its own."""
    for number in range(files):
        open(os.path.join(directory, "filler-%03d" % number), "wb").close()


class MemoryObjects:
    """An object store in memory (objectstore.Objects), for walking crafted trees in-process."""

    def __init__(self) -> None:
        self.blobs: Dict[bytes, bytes] = {}

    def get(self, digest: bytes, verify: bool = True) -> bytes:
        from backshift.objectstore import ObjectError
        try:
            return self.blobs[digest]
        except KeyError:
            raise ObjectError(digest, "missing") from None

    def put(self, data: bytes, compressor=None, digest: Optional[bytes] = None) -> bytes:
        from backshift.objectstore import digest_of
        digest = digest or digest_of(data)
        self.blobs.setdefault(digest, data)
        return digest

    def touch(self, digest: bytes) -> bool:
        return digest in self.blobs

    def exists(self, digest: bytes) -> bool:
        return digest in self.blobs
