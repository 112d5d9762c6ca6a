"""The save directory as a whole: creating it, opening it, its format version.

Layout (see FORMAT.md)::

    backshift-format     "backshift save directory\\nformat 2\\n"
    objects/00 .. ff/    content-addressed objects (objectstore.py)
    backups/             one record per backup (catalog.py)
"""

import os

from .catalog import Catalog
from .atomic import fsync_directory, this_host, write_file_atomically
from .objectstore import ObjectStore

FORMAT_FILE = "backshift-format"
FORMAT_VERSION = 2
FORMAT_TEXT = "backshift save directory\nformat %d\n"


class SaveDirError(Exception):
    """The save directory is missing, not initialised, or of another format."""


def default_hostname() -> str:
    return this_host()


def init_savedir(path: str, hostname: str) -> None:
    """Create a save directory (mode 0700), or accept an existing one of our format."""
    if os.path.exists(os.path.join(path, FORMAT_FILE)):
        read_format_version(path)
        return
    if os.path.isdir(path) and os.listdir(path):
        raise SaveDirError("%s: exists, is not empty and is not a backshift save directory"
                           % path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
        ObjectStore.create_layout(path)
        Catalog.create_layout(path)
        write_file_atomically(path, FORMAT_FILE, (FORMAT_TEXT % FORMAT_VERSION).encode(),
                              hostname)
        fsync_directory(path)
    except OSError as exc:
        raise SaveDirError("%s: cannot create save directory: %s" % (path, exc.strerror)) from None


def read_format_version(path: str) -> int:
    try:
        with open(os.path.join(path, FORMAT_FILE), "rb") as handle:
            text = handle.read(4096).decode("utf-8", "replace")
    except FileNotFoundError:
        if not os.path.isdir(path):
            raise SaveDirError("%s: no such save directory (is it mounted? "
                               "use --init-savedir to create one)" % path) from None
        raise SaveDirError("%s: not a backshift save directory (no %s; is it mounted? "
                           "use --init-savedir to create one)" % (path, FORMAT_FILE)) from None
    except OSError as exc:
        raise SaveDirError("%s: cannot read %s: %s" % (path, FORMAT_FILE, exc.strerror)) from None
    lines = text.splitlines()
    if len(lines) < 2 or lines[0] != "backshift save directory" or not lines[1].startswith("format "):
        raise SaveDirError("%s: %s is not a backshift format file" % (path, FORMAT_FILE))
    try:
        version = int(lines[1].split()[1])
    except (IndexError, ValueError):
        raise SaveDirError("%s: unreadable format version %r" % (path, lines[1])) from None
    if version != FORMAT_VERSION:
        raise SaveDirError("%s: save directory format %d; this backshift reads format %d"
                           % (path, version, FORMAT_VERSION))
    if text != FORMAT_TEXT % version:
        # Anything else in the file is damage, or a format this version does not know.
        raise SaveDirError("%s: %s holds more than its two lines; not a format %d save "
                           "directory this backshift knows" % (path, FORMAT_FILE, version))
    return version


class SaveDir:
    """An opened save directory: its object store and its catalog."""

    def __init__(self, path: str, hostname: str, durable: bool = True) -> None:
        read_format_version(path)
        self.path = path
        self.hostname = hostname
        self.objects = ObjectStore(path, hostname, durable)
        self.catalog = Catalog(path, hostname, durable)
