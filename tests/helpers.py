"""Helpers for tests: run backshift (in this process or as one of its own) and tar, compare trees."""

import contextlib
import io
import json
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from backshift.backup import DIR_INLINE_MAX
from backshift.cli import main
from backshift.objectstore import ObjectStore
from backshift.records import FLAG_PACKED, FLAG_PARTIAL, KIND_FILE, KIND_HARDLINK, Entry
from backshift.savedir import SaveDir
from backshift.tree import TreeReader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKSHIFT = [sys.executable, os.path.join(REPO, "bin", "backshift")]
RANDOMIZE = [sys.executable, os.path.join(REPO, "bin", "randomize")]

KIB = 1024
MIB = 1024 * 1024
HOURS_AGO_2 = 2 * 3600
# Trust files written before an earlier backup began, however recently:
# tests pass this instead of waiting out the 2 s recent-change guard.
NO_SETTLE = ("--settle-time", "0")
# Bytes that must never reach a save directory (tests of symlink races).
SECRET = b"FOREIGN-SECRET-" * 64


def wait_until(predicate: Callable[[], object], timeout: float = 120.0,
               what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds.

    The one place tests wait for another process: on a file appearing, a
    record changing; never a fixed sleep to order events.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.005)


def run(args: Sequence[str], input: Optional[bytes] = None,
        cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """backshift's command line run in this process (backshift.cli.main), as
    bin/backshift runs it but without starting an interpreter each time.

    Its exit status, stdout and stderr (encoded as Python encodes a
    process's stderr) are returned as subprocess.run returns them.  One
    call at a time (``cwd`` changes this process's directory meanwhile).
    Tests of the process itself (its launcher, streams, signals), of
    several writers at once, or of races with a thread of the test use
    run_process.
    """
    stdout = io.BytesIO()
    stderr = io.StringIO()
    text_stdout = io.StringIO()  # argparse's --help and --version
    here = os.getcwd()
    threads = set(threading.enumerate())
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(text_stdout), contextlib.redirect_stderr(stderr):
            try:
                status = main(list(args), io.BytesIO(input or b""), stdout, stderr)
            except SystemExit as exc:
                status = exc.code if isinstance(exc.code, int) else 1
        # As a process ends: once its threads have (a read-ahead hint may be
        # finishing with a file, relative to ``cwd``).
        for thread in set(threading.enumerate()) - threads:
            if not thread.daemon:
                thread.join()
    finally:
        if cwd is not None:
            os.chdir(here)
    return subprocess.CompletedProcess(
        BACKSHIFT + list(args), status,
        stdout.getvalue() + text_stdout.getvalue().encode(),
        stderr.getvalue().encode("utf-8", "backslashreplace"))


def run_process(args: Sequence[str], input: Optional[bytes] = None, cwd: Optional[str] = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """bin/backshift as a process of its own."""
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
    with open(os.path.join(savedir, "backups", backup_id), "rb") as handle:
        return json.loads(handle.read().decode("utf-8"))


def saved_so_far(savedir: str, record: dict) -> Tuple[int, int]:
    """(bytes of whole files, bytes of PARTIAL prefixes) in a record's tree."""
    if record["root"] is None:
        return 0, 0
    reader = TreeReader(ObjectStore(savedir, "test"))
    root = [(bytes.fromhex(digest), length) for digest, length in record["root"]]
    whole = prefix = 0
    for _path, entry in reader.walk(root):
        if entry.kind not in (KIND_FILE, KIND_HARDLINK):
            continue
        if entry.flags & FLAG_PARTIAL:
            prefix += sum(length for _, length in entry.chunks)
        else:
            whole += entry.size
    return whole, prefix


def outgrow_inline_record(directory: str) -> int:
    """Add empty files until ``directory``'s record is too big to be held in its
    parent's (backup.DIR_INLINE_MAX): it then gets objects of its own.  How
    many files it added."""
    # An empty file's entry takes at least 88 bytes besides its name.
    files = DIR_INLINE_MAX // 88 + 1
    for number in range(files):
        open(os.path.join(directory, "filler-%04d" % number), "wb").close()
    return files


def write(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def age_files(top: str, seconds: float) -> None:
    """Pretend everything under ``top`` was last written ``seconds`` ago."""
    then = time.time() - seconds
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (then, then))


def tree_entries(savedir: str, backup_id: str) -> Dict[bytes, Entry]:
    """Every entry of a backup by path (as stored, without a leading '/')."""
    store = SaveDir(savedir, "test")
    root = store.catalog.read(backup_id).root
    return dict(TreeReader(store.objects).walk(root, include_implicit=True))


def object_digests(savedir: str) -> Set[str]:
    top = os.path.join(savedir, "objects")
    return {name for sub in os.listdir(top) for name in os.listdir(os.path.join(top, sub))
            if not name.startswith(".")}


def costly_text(rng: random.Random, size: int) -> bytes:
    """``size`` bytes of text that costs xz about as much CPU per MiB as
    base64 of random bytes but, unlike it, is compressible enough to be
    given to xz and not to zlib (compression.XZ_WORTH_RATIO: the trial's
    ratio is 0.53): lines of random hex digits between comment lines."""
    digits = rng.randbytes(size // 2).hex().encode()
    return b"".join(digits[start:start + 64] + b"\n# a comment\n"
                    for start in range(0, size, 64))[:size]


def payloads_by_codec(savedir: str) -> Dict[int, List[bytes]]:
    """Payloads of every object in the save directory, by the codec in its header,
    read from the files as FORMAT.md ("Objects") describes them."""
    header = struct.Struct("<4sBBHQ")
    found: Dict[int, List[bytes]] = {}
    root = os.path.join(savedir, "objects")
    for prefix in os.listdir(root):
        for name in os.listdir(os.path.join(root, prefix)):
            with open(os.path.join(root, prefix, name), "rb") as handle:
                blob = handle.read()
            found.setdefault(header.unpack_from(blob)[2], []).append(blob[header.size:])
    return found


def pack_of(entry: Entry) -> bytes:
    assert entry.flags & FLAG_PACKED, entry
    (digest, _length), = entry.chunks
    return digest


def restore(savedir: str, backup_id: str, dest: str, extra: Sequence[str] = ()) -> bytes:
    stream = produce_tar(savedir, backup_id, list(extra))
    extract(stream, dest)
    return stream


def all_stored_bytes(savedir: str) -> bytes:
    """Every object of the save directory, decompressed and concatenated."""
    store = ObjectStore(savedir, "test")
    return b"".join(store.get(digest) for digest in store.iter_digests())


def _sigint_as_from_a_terminal() -> None:
    """In a child: SIGINT at its default action.  A job started in the
    background by a non-interactive shell (as a CI runner may start the
    suite) inherits SIGINT ignored, and Python then installs no handler for
    it, so a test's Ctrl-C would not reach the program."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class FedBackup:
    """A backup process fed its paths through a pipe, a few at a time.

    Between feeds it waits for input (as behind a slow find): running,
    unfinished, its record written, touching nothing more.
    """

    def __init__(self, savedir: str, cwd: object, subset: str = "test",
                 extra: Sequence[str] = ()) -> None:
        self.savedir = savedir
        self.known = set(list_ids(savedir))
        self.proc = subprocess.Popen(BACKSHIFT + [
            "--save-directory", savedir, "--backup", "--subset", subset, "--no-fsync"]
            + list(extra), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=str(cwd), preexec_fn=_sigint_as_from_a_terminal)

    def feed(self, paths: bytes) -> None:
        self.proc.stdin.write(paths)
        self.proc.stdin.flush()

    def wait_started(self) -> str:
        """Wait until its first record is written (it is then reading paths); its id."""
        wait_until(lambda: self._new_ids(), what="the backup's first record")
        return self._new_ids()[0]

    def _new_ids(self) -> List[str]:
        assert self.proc.poll() is None, "backup ended early: " + \
            self.proc.stderr.read().decode(errors="replace")
        return [i for i in list_ids(self.savedir) if i not in self.known]

    def finish(self, paths: bytes = b"") -> Tuple[int, bytes]:
        """Send the last paths and end of input; (exit status, stderr)."""
        _out, err = self.proc.communicate(paths, timeout=300)
        return self.proc.returncode, err


# Four writers at once (test_concurrency.py; test_sshfs.py on a real sshfs mount).
SHARED = 6 * 1024 * 1024


def make_sources(base: str) -> List[str]:
    """Four source trees sharing one big file and a directory of small ones."""
    shared = os.urandom(SHARED)
    small = [os.urandom(500 + 300 * n) for n in range(30)]
    names = []
    for n in range(4):
        top = os.path.join(base, "src%d" % n)
        os.makedirs(os.path.join(top, "common"))
        with open(os.path.join(top, "shared.bin"), "wb") as handle:
            handle.write(shared)
        for i, data in enumerate(small):
            with open(os.path.join(top, "common", "s%02d" % i), "wb") as handle:
                handle.write(data)
        with open(os.path.join(top, "own.bin"), "wb") as handle:
            handle.write(os.urandom(200_000))  # unique to this tree
        names.append("src%d" % n)
    return names


def four_at_once(savedir: str, base: str, extra: Tuple[str, ...] = ()) -> None:
    """Back up four trees concurrently into ``savedir``; check stored-once and restores."""
    names = make_sources(base)
    who = [("alpha", "root"), ("alpha", "root"), ("alpha", "home"), ("beta", "root")]
    procs = []
    for name, (host, subset) in zip(names, who):
        proc = subprocess.Popen(BACKSHIFT + [
            "--save-directory", savedir, "--backup", "--subset", subset, "--hostname", host,
            "--checkpoint-interval", "0.1"] + list(extra),
            cwd=base, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
    # Start feeding only once all four are up, so their work overlaps.
    for name, proc in zip(names, procs):
        proc.stdin.write(find_print0(name, cwd=base))
        proc.stdin.close()
    for proc in procs:
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 0, err.decode(errors="replace")
        proc.stdout.close()
        proc.stderr.close()
    ids = list_ids(savedir)
    assert len(ids) == 4
    by_host = sorted((read_record(savedir, i)["hostname"], read_record(savedir, i)["subset"])
                     for i in ids)
    assert by_host == sorted(who)
    for backup_id in ids:
        record = read_record(savedir, backup_id)
        assert record["state"] == "complete"
        dest = os.path.join(base, "restore-" + backup_id)
        extract(produce_tar(savedir, backup_id), dest)
        restored = os.listdir(dest)
        assert len(restored) == 1
        assert_same_tree(os.path.join(base, restored[0]), os.path.join(dest, restored[0]))
    # The shared 6 MiB is stored once: four copies would need 24 MiB.
    unique = 4 * 200_000
    assert du_bytes(os.path.join(savedir, "objects")) < SHARED + unique + 2 * 1024 * 1024
    leftovers = [name for _dir, _subdirs, files in os.walk(savedir) for name in files
                 if name.startswith(".tmp-")]
    assert not leftovers
    run_ok(["--save-directory", savedir, "--check"])


def read_terminal(master: int, timeout: float = 120) -> List[Tuple[float, bytes]]:
    """(arrival time, bytes) of all written to a pseudo-terminal until its last writer
    closes it; closes ``master``."""
    import select
    import time
    arrivals = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal's last writer has gone
            break
        if not data:
            break
        arrivals.append((time.monotonic(), data))
    os.close(master)
    return arrivals


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
