"""Which codec each chunk gets under the default ``--compression xz`` (compression.py).

Three big files, each cut into chunks of its own: text (xz), random bytes
(no codec: stored raw) and data that zlib shrinks only a little (zlib level
1, where xz would cost several times as long for a few percent more).  The
object files are read as FORMAT.md describes them; every xz payload must be
a stream the ``xz`` command line tool decodes to the object's content, and
the tree must come back exactly through GNU tar.
"""

import base64
import hashlib
import os
import random
import subprocess
import zlib

import helpers
from backshift import compression

CODEC_NONE, CODEC_ZLIB, CODEC_XZ = 0, 1, 2
SIZE = 3 * 1024 * 1024  # several chunks of the data chunker


def _poorly_compressible(rng: random.Random, size: int) -> bytes:
    """Random bytes with a recurring phrase between them: zlib keeps ~75%."""
    phrase = b"a phrase that repeats "
    noise = rng.randbytes(size)
    return b"".join(noise[start:start + 64] + phrase
                    for start in range(0, size, 64))[:size]


def test_poorly_compressible_data_gets_zlib_and_round_trips():
    rng = random.Random(15)
    compressor = compression.Compressor(compression.CompressionSpec.parse("xz"))
    poor = _poorly_compressible(rng, 1 << 20)
    assert 0.6 < len(zlib.compress(poor, 1)) / len(poor) < 0.9  # the premise
    codec, payload = compressor.compress(poor)
    assert codec == CODEC_ZLIB
    assert compression.decompress(codec, payload) == poor
    for level in ("xz:0", "xz:6"):
        chosen = compression.Compressor(compression.CompressionSpec.parse(level))
        assert chosen.compress(poor)[0] == CODEC_ZLIB
    text = b" ".join(b"word%d" % rng.randrange(500) for _ in range(100000))
    assert compressor.compress(text)[0] == CODEC_XZ
    # Words of a vocabulary larger than a trial's sample: each sample looks
    # poor, the whole does not (its words recur further apart), and xz's
    # window finds them: xz it is.
    vocabulary = [base64.b64encode(rng.randbytes(9)) for _ in range(4096)]
    words = b" ".join(rng.choices(vocabulary, k=200000))
    assert compression.trial_ratio(words) > compression.XZ_WORTH_RATIO  # the premise
    codec, payload = compressor.compress(words)
    assert codec == CODEC_XZ and len(payload) < len(zlib.compress(words, 1)) * 0.7
    # Asked for bz2, it is bz2 whatever the data: the choice is xz's alone.
    bz2 = compression.Compressor(compression.CompressionSpec.parse("bz2"))
    assert bz2.compress(poor)[0] == compression.CODEC_BZ2


def test_each_chunk_gets_its_codec_and_xz_objects_are_plain_xz(tmp_path):
    rng = random.Random(16)
    source = str(tmp_path / "src")
    os.makedirs(source)
    contents = {
        "text": b"\n".join(b"line %d of some text, word%d" % (number, rng.randrange(900))
                           for number in range(SIZE // 30)),
        "noise": rng.randbytes(SIZE),
        "poor": _poorly_compressible(rng, SIZE),
    }
    for name, data in contents.items():
        helpers.write(os.path.join(source, name), data)
    savedir = str(tmp_path / "save")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    backup_id = helpers.backup(savedir, source)

    objects = helpers.payloads_by_codec(savedir)
    codec_of = {hashlib.blake2b(compression.decompress(codec, payload),
                                digest_size=32).digest(): codec
                for codec, payloads in objects.items() for payload in payloads}
    entries = helpers.tree_entries(savedir, backup_id)
    for name, codec in (("text", CODEC_XZ), ("noise", CODEC_NONE), ("poor", CODEC_ZLIB)):
        entry = entries[os.path.join(source, name).lstrip("/").encode()]
        assert entry.chunks and {codec_of[digest] for digest, _ in entry.chunks} == {codec}, name

    for payload in objects[CODEC_XZ]:
        plain = subprocess.run(["xz", "-dc"], input=payload, check=True,
                               stdout=subprocess.PIPE).stdout
        assert codec_of.get(hashlib.blake2b(plain, digest_size=32).digest()) == CODEC_XZ

    restored = str(tmp_path / "restored")
    helpers.restore(savedir, backup_id, restored)
    helpers.assert_same_tree(source, os.path.join(restored, source.lstrip("/")))


def _xz_dictionaries(payload: bytes, tmp_path) -> set:
    """The LZMA2 dictionary sizes of an xz stream's blocks, as the xz tool lists them."""
    path = tmp_path / "object.xz"
    path.write_bytes(payload)
    listing = subprocess.run(["xz", "--robot", "--list", "-vv", str(path)], check=True,
                             stdout=subprocess.PIPE).stdout.decode()
    return {field.split("dict=")[1] for line in listing.splitlines() if line.startswith("block")
            for field in line.split("\t") if "dict=" in field}


def test_big_files_chunks_get_a_small_xz_dictionary_and_packs_the_presets(tmp_path):
    # compression.XZ_CHUNK_DICT: a big file's chunks at level 1 with a
    # 256 KiB window (faster, nearly as small); packs of small files with
    # level 1's 1 MiB, where files repeat one another further apart.
    rng = random.Random(17)
    source = str(tmp_path / "src")
    helpers.write(os.path.join(source, "big"), helpers.costly_text(rng, SIZE))
    for number in range(70):  # over a pack's minimum (1 MiB): cut by the rule, at level 1
        helpers.write(os.path.join(source, "small", "f%02d" % number),
                      helpers.costly_text(rng, 20 * 1024))
    savedir = str(tmp_path / "save")
    helpers.run_ok(["--save-directory", savedir, "--init-savedir"])
    backup_id = helpers.backup(savedir, source)

    by_digest = {hashlib.blake2b(compression.decompress(CODEC_XZ, payload),
                                 digest_size=32).digest(): payload
                 for payload in helpers.payloads_by_codec(savedir)[CODEC_XZ]}
    entries = helpers.tree_entries(savedir, backup_id)
    big = entries[os.path.join(source, "big").lstrip("/").encode()]
    assert len(big.chunks) >= 2
    for digest, _length in big.chunks:
        assert _xz_dictionaries(by_digest[digest], tmp_path) == {"256KiB"}
    small = entries[os.path.join(source, "small", "f00").lstrip("/").encode()]
    assert _xz_dictionaries(by_digest[helpers.pack_of(small)], tmp_path) == {"1MiB"}
