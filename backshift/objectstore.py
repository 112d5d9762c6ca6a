"""The object store: immutable, content-addressed objects under ``objects/``.

An object lives at ``objects/<first two hex digits>/<64 hex digits>``, the
BLAKE2b-256 digest of its *uncompressed* content.  Its file is a 16-byte
header (``b"BSHO"``, u8 format version, u8 codec, u16 zero, u64
uncompressed length) followed by the payload.  A header with anything else
(another version, an unknown codec, a non-zero reserved field) is damage.

Writers never modify a file another process may read: an object is written
to a uniquely named temporary file in its own directory, flushed to disk,
and renamed into place.  Two writers racing to store the same object both
succeed, since either rename leaves the same bytes.  An object that is
already present is *touched* (its mtime set to now) instead of rewritten;
expiry relies on that mark (see FORMAT.md, "Expiry").
"""

import errno
import hashlib
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Optional, Protocol, Sequence, Set, Tuple

from .atomic import (TEMP_PREFIX, drop_from_cache, fsync_directory, remove_dead_writers_files,
                     write_file_atomically)
from .compression import CODEC_NAMES, CODEC_NONE, CODEC_XZ, Compressor, decompress

OBJECTS_DIR = "objects"
OBJECT_MAGIC = b"BSHO"
OBJECT_VERSION = 1
OBJECT_HEADER = struct.Struct("<4sBBHQ")
DIGEST_SIZE = 32
# How many digests a writer remembers as "known present" before forgetting
# them all; bounds memory on very large backups.
KNOWN_LIMIT = 200_000


# The last two bytes of every xz stream (its footer's magic).
XZ_FOOTER_MAGIC = b"YZ"


# An object directory is listed, and its names kept, only while it is
# this small: memory stays under a few MB, and a large repository's
# directories are not read whole for the few objects a backup adds.
LISTING_DIR_BYTES = 16 * 1024
LISTING_MAX = 512
# ... and only once this many objects were found absent in it one by one:
# over a network a listing costs several round trips (sshfs: a lookup,
# open, four reads, close), a failed ``utime`` one, so a directory that
# gets a new object or two (a small backup, a sparse save directory) is
# cheaper without.
LIST_AFTER_MISSES = 4
# Directories fsynced at once by ``sync``: a local file system commits
# them in one journal transaction instead of one flush each.
SYNC_THREADS = 8


def _small_listing(directory: str) -> Optional[Set[str]]:
    """The names in ``directory`` if it is small, else None."""
    try:
        if os.stat(directory).st_size > LISTING_DIR_BYTES:
            return None
        names = os.listdir(directory)
    except OSError:
        return None
    return set(names) if len(names) <= LISTING_MAX else None


class ObjectError(Exception):
    """An object that is missing, unreadable or does not match its digest."""

    def __init__(self, digest: bytes, reason: str) -> None:
        super().__init__("object %s: %s" % (digest.hex(), reason))
        self.digest = digest
        self.reason = reason


class ObjectReader(Protocol):
    """Where readers get objects: the store itself, or a cache in front of it."""

    def get(self, digest: bytes, verify: bool = True) -> bytes:
        """The uncompressed content of an object; raises ObjectError."""


class Objects(ObjectReader, Protocol):
    """What writers need of a store: ObjectStore, or MemoryObjects in unit tests."""

    def put(self, data: bytes, compressor: Compressor, digest: Optional[bytes] = None) -> bytes:
        """Store ``data`` unless present; return its digest."""

    def touch(self, digest: bytes) -> bool:
        """Mark a present object as just referenced; False if absent."""

    def exists(self, digest: bytes) -> bool:
        """Is the object present?"""


class KeptInCache:
    """Reads a store's objects leaving them in the page cache: for the directory
    records of earlier backups, which every re-backup reads (and the next one
    again: dropped, each re-backup would wait for the disk for all of them)."""

    def __init__(self, store: "ObjectStore") -> None:
        self._store = store

    def get(self, digest: bytes, verify: bool = True) -> bytes:
        return self._store.get(digest, verify, keep_cached=True)


def digest_of(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_SIZE).digest()


def _parse_header(header: bytes) -> Tuple[int, int, Optional[str]]:
    """(codec, uncompressed length, what is wrong or None) of an object header."""
    magic, version, codec, reserved, length = OBJECT_HEADER.unpack(header)
    if magic != OBJECT_MAGIC or version != OBJECT_VERSION:
        return codec, length, "bad header: not a backshift object"
    if codec not in CODEC_NAMES:
        return codec, length, "bad header: unknown codec %d" % codec
    if reserved:
        return codec, length, "bad header: reserved field is %#x, not zero" % reserved
    return codec, length, None


class ObjectStore:
    """Reads and writes objects in ``<save directory>/objects``."""

    def __init__(self, savedir: str, hostname: str, durable: bool = True) -> None:
        self.root = os.path.join(savedir, OBJECTS_DIR)
        self.hostname = hostname
        self.durable = durable
        self._known: Set[bytes] = set()
        self._dirty_dirs: Set[str] = set()
        # Names in each small object directory, listed once (_listed_absent);
        # None for a directory too large to keep its names.
        self._listings: Dict[str, Optional[Set[str]]] = {}
        # Objects found absent by a failed touch, per directory not listed yet.
        self._misses: Dict[str, int] = {}
        self.objects_written = 0
        self.bytes_written = 0
        # put() may run in several threads at once (pipeline.py).
        self._lock = threading.Lock()

    @staticmethod
    def create_layout(savedir: str) -> None:
        root = os.path.join(savedir, OBJECTS_DIR)
        os.makedirs(root, mode=0o700, exist_ok=True)
        for prefix in range(256):
            os.makedirs(os.path.join(root, "%02x" % prefix), mode=0o700, exist_ok=True)

    def path_of(self, digest: bytes) -> str:
        hexdigest = digest.hex()
        return os.path.join(self.root, hexdigest[:2], hexdigest)

    def touch(self, digest: bytes) -> bool:
        """Mark an existing object as just referenced; False if it is absent."""
        if digest in self._known:
            return True
        try:
            os.utime(self.path_of(digest))
        except FileNotFoundError:
            return False
        except OSError as exc:
            # A network file system whose name was just replaced by another
            # writer's rename of the same object: treat it as absent, so the
            # caller stores it again (same bytes) or reads its file again.
            if exc.errno == errno.ESTALE:
                return False
            raise
        self._remember(digest)
        return True

    def touch_all(self, digests: Sequence[bytes]) -> bool:
        """``touch`` each; False at the first absent (once per entry of a re-backup)."""
        known = self._known
        for digest in digests:
            if digest not in known and not self.touch(digest):
                return False
        return True

    def exists(self, digest: bytes) -> bool:
        return os.path.exists(self.path_of(digest))

    def put(self, data: bytes, compressor: Compressor,
            digest: Optional[bytes] = None) -> bytes:
        """Store ``data`` unless already present; return its digest."""
        if digest is None:
            digest = digest_of(data)
        if not self.touch_if_present(digest):
            codec, payload = compressor.compress(data)
            self.put_encoded(digest, codec, len(data), payload)
        return digest

    def touch_if_present(self, digest: bytes) -> bool:
        """Is the object present (then touched), the first step of ``put``?"""
        if digest in self._known:
            return True
        if self._listed_absent(digest):
            return False
        if self.touch(digest):
            return True
        prefix = digest.hex()[:2]
        with self._lock:
            self._misses[prefix] = self._misses.get(prefix, 0) + 1
        return False

    def _listed_absent(self, digest: bytes) -> bool:
        """Is the object surely new, by a listing of its (small) directory?

        A save directory's first backups write mostly new objects, and on a
        network file system the failed ``utime`` that finds each one new is
        a round trip.  A small object directory that keeps getting new
        objects (LIST_AFTER_MISSES) is listed once instead (a few round
        trips for all its names).  A listing that is stale (another writer
        stored the object since) only makes this writer store the same
        bytes again, which is success (FORMAT.md, "Writing rule").
        Temporary files the listing shows of writers provably dead go.
        """
        hexdigest = digest.hex()
        prefix = hexdigest[:2]
        if prefix not in self._listings:
            if self._misses.get(prefix, 0) < LIST_AFTER_MISSES:
                return False
            directory = os.path.join(self.root, prefix)
            listing = _small_listing(directory)
            if listing is not None:
                remove_dead_writers_files(directory, listing)
            with self._lock:
                self._listings.setdefault(prefix, listing)
        names = self._listings[prefix]
        return names is not None and hexdigest not in names

    def put_encoded(self, digest: bytes, codec: int, length: int, payload: bytes) -> None:
        """Write an already compressed object (the caller computed digest and payload)."""
        header = OBJECT_HEADER.pack(OBJECT_MAGIC, OBJECT_VERSION, codec, 0, length)
        directory = os.path.dirname(self.path_of(digest))
        write_file_atomically(directory, digest.hex(), header + payload, self.hostname,
                              self.durable)
        with self._lock:
            self._dirty_dirs.add(directory)
            names = self._listings.get(digest.hex()[:2])
            if names is not None:
                names.add(digest.hex())
                if len(names) > LISTING_MAX:
                    self._listings[digest.hex()[:2]] = None
            self.objects_written += 1
            self.bytes_written += len(payload) + OBJECT_HEADER.size
        self._remember(digest)

    def _remember(self, digest: bytes) -> None:
        if len(self._known) >= KNOWN_LIMIT:
            self._known.clear()
        self._known.add(digest)

    def sync(self) -> None:
        """Make every rename done so far durable; call before referring to them."""
        with self._lock:
            directories = sorted(self._dirty_dirs)
            self._dirty_dirs.clear()
        if not self.durable:
            return
        if len(directories) < 2:
            for directory in directories:
                fsync_directory(directory)
            return
        with ThreadPoolExecutor(max_workers=SYNC_THREADS,
                                thread_name_prefix="backshift-sync") as pool:
            list(pool.map(fsync_directory, directories))

    def read_raw(self, digest: bytes, keep_cached: bool = False) -> Tuple[int, int, bytes]:
        """(codec, uncompressed length, payload) of an object, unverified.

        What is read is dropped from the page cache (a restore or check would
        otherwise push out what the machine is using), unless ``keep_cached``.
        """
        path = self.path_of(digest)
        for attempt in range(3):
            try:
                with open(path, "rb") as handle:
                    blob = handle.read()
                    if not keep_cached:
                        drop_from_cache(handle.fileno())
                break
            except FileNotFoundError:
                raise ObjectError(digest, "missing") from None
            except OSError as exc:
                # ESTALE: another writer's rename replaced the name (same
                # bytes) under a network file system client; look it up again.
                if exc.errno != errno.ESTALE or attempt == 2:
                    raise ObjectError(digest, "unreadable: %s" % exc.strerror) from None
        if len(blob) < OBJECT_HEADER.size:
            raise ObjectError(digest, "truncated header")
        codec, length, problem = _parse_header(blob[:OBJECT_HEADER.size])
        if problem is not None:
            raise ObjectError(digest, problem)
        return codec, length, blob[OBJECT_HEADER.size:]

    def header_problem(self, digest: bytes,
                       expected_length: Optional[int] = None) -> Optional[str]:
        """What is wrong with an object, judged by its header and size alone (None if sane)."""
        try:
            fd = os.open(self.path_of(digest), os.O_RDONLY)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return "unreadable: %s" % exc.strerror
        try:
            header = os.pread(fd, OBJECT_HEADER.size, 0)
            size = os.fstat(fd).st_size
            if len(header) < OBJECT_HEADER.size:
                return "truncated: %d bytes, shorter than an object header" % size
            codec, length, problem = _parse_header(header)
            if problem is not None:
                return problem
            if expected_length is not None and length != expected_length:
                return "holds %d bytes, the backup expects %d" % (length, expected_length)
            payload = size - OBJECT_HEADER.size
            if codec == CODEC_NONE and payload != length:
                return "truncated: %d of %d bytes of content" % (payload, length)
            if codec != CODEC_NONE and payload <= 0:
                return "truncated: no payload"
            if codec == CODEC_XZ and os.pread(fd, 2, size - 2) != XZ_FOOTER_MAGIC:
                return "truncated: the xz stream has no end"
        except OSError as exc:
            return "unreadable: %s" % exc.strerror
        finally:
            os.close(fd)
        return None

    def get(self, digest: bytes, verify: bool = True, keep_cached: bool = False) -> bytes:
        """The uncompressed content of an object, checked against its digest
        (``keep_cached``: see read_raw)."""
        codec, length, payload = self.read_raw(digest, keep_cached)
        try:
            data = decompress(codec, payload)
        except ValueError as exc:
            raise ObjectError(digest, str(exc)) from None
        if len(data) != length:
            raise ObjectError(digest, "length %d, header says %d" % (len(data), length))
        if verify and digest_of(data) != digest:
            raise ObjectError(digest, "content does not match its digest")
        return data

    def directories(self) -> Iterator[Tuple[int, str, List[str]]]:
        """(prefix, directory, names) of each object directory: the one listing of the layout."""
        for prefix in range(256):
            directory = os.path.join(self.root, "%02x" % prefix)
            try:
                yield prefix, directory, os.listdir(directory)
            except FileNotFoundError:
                continue

    def iter_digests(self, on_prefix: Optional[Callable[[int], None]] = None) -> Iterator[bytes]:
        """Every object present (temporary files skipped)."""
        for prefix, _directory, names in self.directories():
            if on_prefix is not None:
                on_prefix(prefix)
            for name in names:
                if len(name) == 2 * DIGEST_SIZE and not name.startswith("."):
                    try:
                        yield bytes.fromhex(name)
                    except ValueError:
                        continue

    def temp_files(self) -> Iterator[str]:
        """Paths of temporary files left in object directories."""
        for _prefix, directory, names in self.directories():
            for name in names:
                if name.startswith(TEMP_PREFIX):
                    yield os.path.join(directory, name)