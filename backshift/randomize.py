"""randomize: shuffle paths between ``find -print0`` and ``backshift``.

Processing files in random order makes a backup's progress estimate fairer
when big and small files are clustered (the seed's statistics notes).
"""

import argparse
import os
import random
import sys
from typing import BinaryIO, List, Optional, Sequence

from . import __version__


def read_items(stream: BinaryIO, separator: bytes) -> List[bytes]:
    data = stream.read()
    items = data.split(separator)
    if items and items[-1] == b"":
        items.pop()
    return items


def main(argv: Optional[Sequence[str]] = None, stdin: Optional[BinaryIO] = None,
         stdout: Optional[BinaryIO] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="randomize", description="Write the lines (or NUL-separated items) of stdin "
                                      "to stdout in random order.")
    parser.add_argument("-0", "--null", action="store_true", dest="null",
                        help="items are separated by NUL bytes (as find -print0 writes)")
    parser.add_argument("--version", action="version", version="randomize " + __version__)
    args = parser.parse_args(argv)
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    separator = b"\0" if args.null else b"\n"
    items = read_items(stdin, separator)
    random.SystemRandom().shuffle(items)
    stdout.write(b"".join(item + separator for item in items))
    stdout.flush()
    return 0


def entry_point() -> None:
    try:
        status = main()
    except BrokenPipeError:
        # The reader had enough (randomize -0 | head): end quietly, as Unix filters do,
        # with stdout on /dev/null so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)
