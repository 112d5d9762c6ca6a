"""Small files whose content is compressed already go into raw packs (packing.py).

A tree mixing gzip, PNG and zip files with text, in the same directories,
is backed up with the default xz compression; the object files are then
read as FORMAT.md describes them: the compressed files' contents must lie
in objects stored raw (codec 0) and the text in xz objects, and the whole
tree must come back exactly through GNU tar.
"""

import gzip
import os
import random
import struct
import zipfile
import zlib
from typing import Dict, List

import helpers

CODEC_NONE, CODEC_XZ = 0, 2


def _png(rng: random.Random) -> bytes:
    """A small real PNG (one IDAT chunk of noise)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + \
            struct.pack(">I", zlib.crc32(kind + body))
    width = 64
    raw = b"".join(b"\0" + rng.randbytes(width * 3) for _ in range(32))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, 32, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _make_tree(top: str) -> Dict[str, List[bytes]]:
    """Directories each mixing compressed and plain files; their contents by kind."""
    rng = random.Random(15)
    contents: Dict[str, List[bytes]] = {"compressed": [], "plain": []}
    words = [b"alpha", b"beta", b"gamma", b"delta", b"backup", b"pack", b"tree"]
    for number in range(6):
        directory = os.path.join(top, "d%d" % number)
        os.makedirs(directory)
        for index in range(5):
            text = b" ".join(rng.choice(words) for _ in range(rng.randrange(200, 3000)))
            plain = b"%d %d\n" % (number, index) + text
            packed = [gzip.compress(plain + rng.randbytes(600)), _png(rng)]
            zip_path = os.path.join(directory, "a%d.zip" % index)
            with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr("inner.txt", plain + rng.randbytes(300))
            with open(zip_path, "rb") as handle:
                packed.append(handle.read())
            for name, data in (("t%d.txt" % index, plain), ("c%d.gz" % index, packed[0]),
                               ("i%d.png" % index, packed[1])):
                with open(os.path.join(directory, name), "wb") as handle:
                    handle.write(data)
            contents["plain"].append(plain)
            contents["compressed"] += packed
    return contents


def test_compressed_small_files_go_to_raw_packs_and_restore_exactly(tmp_path):
    source = str(tmp_path / "src")
    contents = _make_tree(source)
    savedir = str(tmp_path / "save")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    backup_id = helpers.backup(savedir, source)

    objects = helpers.payloads_by_codec(savedir)
    raw = b"\0".join(objects.get(CODEC_NONE, []))
    for data in contents["compressed"]:
        assert data in raw, "a compressed file's content is not in a raw object"
    for data in contents["plain"]:
        assert data not in raw, "a text file was stored raw beside the compressed ones"
    assert objects.get(CODEC_XZ), "the text files' pack is not xz-compressed"

    restored = str(tmp_path / "restored")
    helpers.extract(helpers.produce_tar(savedir, backup_id), restored)
    helpers.assert_same_tree(source, os.path.join(restored, source.lstrip("/")))
