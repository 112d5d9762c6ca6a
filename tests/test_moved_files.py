"""A small file that moved to another directory is found by content (contentindex.py).

Between two backups a directory of small files is renamed, as between two
releases of a source tree: the files have no entry at their new paths in
the earlier backup, yet their contents are in its packs.  The second
backup must store none of them again, and restore them exactly.
"""

import lzma
import os
import struct

import helpers

HEADER = struct.Struct("<4sBBHQ")  # FORMAT.md, "Objects"


def _object_names(savedir: str) -> set:
    root = os.path.join(savedir, "objects")
    return {os.path.join(root, prefix, name) for prefix in os.listdir(root)
            for name in os.listdir(os.path.join(root, prefix))}


def _content(path: str) -> bytes:
    with open(path, "rb") as handle:
        blob = handle.read()
    codec = HEADER.unpack_from(blob)[2]
    payload = blob[HEADER.size:]
    return lzma.decompress(payload) if codec == 2 else payload


def test_a_renamed_directory_of_small_files_is_not_stored_again(tmp_path):
    top = tmp_path / "tree"
    contents = []
    for directory in ("release/lib", "release/doc", "other"):
        os.makedirs(top / directory)
    for number in range(40):
        data = b"small file %d of the release\n" % number * (3 + number)
        contents.append(data)
        (top / "release" / ("lib" if number % 2 else "doc") / ("f%d.txt" % number)).write_bytes(data)
    (top / "other" / "kept.txt").write_bytes(b"unchanged file beside the move\n" * 5)
    savedir = str(tmp_path / "save")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    helpers.backup(savedir, str(top), extra=["--settle-time", "0"])
    before = _object_names(savedir)

    os.rename(top / "release", top / "release-2")
    os.rename(top / "release-2" / "lib", top / "release-2" / "library")
    second = helpers.backup(savedir, str(top), extra=["--settle-time", "0"])

    for path in _object_names(savedir) - before:
        new = _content(path)
        stored_again = [data for data in contents if data in new]
        assert not stored_again, "%d moved files stored again" % len(stored_again)
    restored = str(tmp_path / "restored")
    helpers.extract(helpers.produce_tar(savedir, second), restored)
    helpers.assert_same_tree(str(top), os.path.join(restored, str(top).lstrip("/")))
