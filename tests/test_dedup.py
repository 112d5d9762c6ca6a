"""The seed's three deduplication promises, measured as repository growth."""

import hashlib
import os

import helpers

MiB = 1024 * 1024


def _random_file(path, size, seed):
    # Deterministic incompressible data, made in one call (SHAKE's output
    # is as long as asked for).
    with open(path, "wb") as handle:
        handle.write(hashlib.shake_128(b"%d" % seed).digest(size))


def test_renaming_a_big_file_adds_almost_nothing(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    _random_file(src / "movie.bin", 64 * MiB, 1)
    helpers.backup(savedir, "src", cwd=str(tmp_path))
    before = helpers.du_bytes(savedir)
    os.rename(src / "movie.bin", src / "renamed-movie.bin")
    helpers.backup(savedir, "src", cwd=str(tmp_path))
    growth = helpers.du_bytes(savedir) - before
    assert growth < 0.01 * 64 * MiB, growth


def test_one_changed_byte_adds_at_most_two_chunks(tmp_path, savedir):
    src = tmp_path / "src"
    src.mkdir()
    path = src / "disk.img"
    _random_file(path, 64 * MiB, 2)
    helpers.backup(savedir, "src", cwd=str(tmp_path))
    objects_before = sum(len(files) for _, _, files in os.walk(os.path.join(savedir, "objects")))
    before = helpers.du_bytes(savedir)
    with open(path, "r+b") as handle:
        handle.seek(32 * MiB + 12345)
        byte = handle.read(1)
        handle.seek(32 * MiB + 12345)
        handle.write(bytes([byte[0] ^ 0xFF]))
    helpers.backup(savedir, "src", cwd=str(tmp_path))
    growth = helpers.du_bytes(savedir) - before
    objects_after = sum(len(files) for _, _, files in os.walk(os.path.join(savedir, "objects")))
    from backshift.chunking import DATA_PARAMS
    # New data: at most two chunks; plus a few small directory records.
    assert growth <= 2 * DATA_PARAMS.max_size, growth
    assert growth <= 2 * 2 * DATA_PARAMS.avg_size + 64 * 1024, growth
    assert objects_after - objects_before <= 2 + 3, objects_after - objects_before


def test_same_photo_on_three_hosts_is_stored_once(tmp_path, savedir):
    sizes = []
    for host in ("alpha", "beta", "gamma"):
        src = tmp_path / host / "Pictures"
        src.mkdir(parents=True)
        _random_file(src / "fambly.jpg", 16 * MiB, 3)
        helpers.backup(savedir, "Pictures", cwd=str(tmp_path / host),
                       extra=["--hostname", host])
        sizes.append(helpers.du_bytes(savedir))
    first = sizes[0]
    assert first > 16 * MiB
    assert sizes[2] - first < 0.01 * 16 * MiB, sizes
