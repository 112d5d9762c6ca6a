"""The worker-thread pipelines: order, bounded memory, durability, errors, touch."""

import os
import random
import threading
import time

import pytest

import helpers
from backshift.pathinput import NulPaths
from backshift.compression import CompressionSpec, Compressor
from backshift.objectstore import ObjectError, ObjectStore, digest_of
from backshift.pipeline import WAIT_TICK, Prefetcher, RecordCache, StorePipeline, _Turns
from backshift.readahead import ReadAhead


def _store(tmp_path) -> ObjectStore:
    ObjectStore.create_layout(str(tmp_path))
    return ObjectStore(str(tmp_path), "testhost", durable=True)


def _chunks(count: int, size: int, seed: int = 1):
    rng = random.Random(seed)
    # Half text-like (compressible), half random: both codec paths run.
    out = []
    for index in range(count):
        if index % 2:
            out.append(rng.randbytes(size))
        else:
            out.append((b"line %d of some text\n" % index) * (size // 20))
    return out


def test_store_pipeline_keeps_order_and_writes_everything(tmp_path):
    objects = _store(tmp_path)
    pipeline = StorePipeline(objects, workers=3, max_bytes=1 << 20)
    compressor = Compressor(CompressionSpec.parse("xz"))
    chunks = _chunks(40, 100_000)
    try:
        digests = [pipeline.put(chunk, compressor) for chunk in chunks]
        pipeline.sync()
        assert pipeline.in_flight == 0
    finally:
        pipeline.close()
    assert digests == [digest_of(chunk) for chunk in chunks]
    for digest, chunk in zip(digests, chunks):
        assert objects.get(digest) == chunk
    # Never more than the budget in flight (one chunk may exceed it alone).
    assert 0 < pipeline.peak_bytes <= 1 << 20
    assert objects.objects_written == len(set(digests))


def test_store_pipeline_is_asynchronous_until_sync(tmp_path):
    objects = _store(tmp_path)
    pipeline = StorePipeline(objects, workers=2, max_bytes=64 << 20)
    compressor = Compressor(CompressionSpec.parse("xz:6"))
    chunks = _chunks(8, 1 << 20, seed=2)
    try:
        digests = [pipeline.put(chunk, compressor) for chunk in chunks]
        # xz -6 on 8 MiB takes far longer than handing it over.
        assert pipeline.in_flight > 0
        pipeline.sync()
        assert all(os.path.exists(objects.path_of(digest)) for digest in digests)
    finally:
        pipeline.close()


def test_store_pipeline_touches_objects_already_present(tmp_path):
    objects = _store(tmp_path)
    compressor = Compressor(CompressionSpec.parse("zlib"))
    data = b"already here\n" * 1000
    digest = objects.put(data, compressor)
    old = time.time() - 10 * 86400
    os.utime(objects.path_of(digest), (old, old))
    fresh = ObjectStore(str(tmp_path), "testhost")  # knows nothing yet
    pipeline = StorePipeline(fresh, workers=2)
    try:
        assert pipeline.put(data, compressor) == digest
        pipeline.sync()
    finally:
        pipeline.close()
    assert os.stat(objects.path_of(digest)).st_mtime > old + 86400
    assert fresh.objects_written == 0


def test_store_pipeline_raises_worker_errors(tmp_path):
    objects = ObjectStore(str(tmp_path / "missing"), "testhost")  # no objects/ directory
    pipeline = StorePipeline(objects, workers=2)
    compressor = Compressor(CompressionSpec.parse("none"))
    try:
        pipeline.put(b"some data", compressor)
        with pytest.raises(OSError):
            pipeline.drain()
    finally:
        pipeline.close()


def test_compressions_take_turns_oldest_first():
    # One slot, held; three more ask for it out of order: they get it in order.
    turns = _Turns(1)
    release = threading.Event()
    order = []

    def take(number: int) -> None:
        with turns.turn(number):
            order.append(number)
            if number == 0:
                release.wait()

    threads = []
    for waiting, number in enumerate((0, 3, 1, 2)):
        threads.append(threading.Thread(target=take, args=(number,)))
        threads[-1].start()
        # Each asks only once the one before holds the slot or waits for it.
        helpers.wait_until(lambda: len(turns._waiting) == waiting and order == [0],
                           what="turn %d to wait" % number)
    release.set()
    for thread in threads:
        thread.join()
    assert order == [0, 1, 2, 3]


def test_at_once_stores_before_returning_ahead_of_the_queue(tmp_path):
    objects = _store(tmp_path)
    pipeline = StorePipeline(objects, workers=2, max_bytes=64 << 20)
    compressor = Compressor(CompressionSpec.parse("xz:6"))
    try:
        queued = [pipeline.put(chunk, compressor) for chunk in _chunks(8, 1 << 20, seed=4)]
        with pipeline.at_once():
            urgent = pipeline.put(b"a checkpoint's record\n" * 100, compressor)
        assert os.path.exists(objects.path_of(urgent))
        assert pipeline.submitted == len(queued)  # not one of the queue
        assert pipeline.written_through < len(queued)  # which is still being written
        pipeline.sync()
    finally:
        pipeline.close()


def test_prefetcher_returns_in_order_bounded_and_skips(tmp_path):
    objects = _store(tmp_path)
    compressor = Compressor(CompressionSpec.parse("xz:0"))
    chunks = _chunks(30, 50_000, seed=3)
    refs = [(objects.put(chunk, compressor), len(chunk)) for chunk in chunks]
    fetcher = Prefetcher(objects, workers=2, max_bytes=200_000)
    try:
        fetcher.want(refs)
        assert fetcher.running_bytes <= 200_000
        got = [fetcher.get(digest) for digest, _ in refs[:10]]
        assert got == chunks[:10]
        # A reader that stops early (a truncated entry) skips announced chunks.
        assert fetcher.get(refs[20][0]) == chunks[20]
        assert fetcher.get(refs[21][0]) == chunks[21]
        # Unannounced objects are still fetched.
        assert fetcher.get(refs[0][0]) == chunks[0]
        missing = b"\x01" * 32
        fetcher.want([(missing, 10)])
        with pytest.raises(ObjectError):
            fetcher.get(missing)
    finally:
        fetcher.close()


def test_record_cache_reads_ahead_within_budget(tmp_path):
    objects = _store(tmp_path)
    compressor = Compressor(CompressionSpec.parse("xz"))
    chunks = _chunks(12, 30_000, seed=4)
    refs = [(objects.put(chunk, compressor), len(chunk)) for chunk in chunks]
    cache = RecordCache(objects, workers=2, max_bytes=100_000)
    try:
        cache.prefetch(refs)  # only the newest three fit; older ones are dropped
        # Any order; dropped and never announced objects are read directly.
        for index in (11, 0, 10, 5, 9):
            assert cache.get(refs[index][0]) == chunks[index]
        assert cache.hits == 3
        cache.prefetch([(b"\x02" * 32, 10)])
        with pytest.raises(ObjectError):
            cache.get(b"\x02" * 32)
    finally:
        cache.close()


class _Held:
    """An object reader that holds the reading of one object until released."""

    def __init__(self, objects: ObjectStore, held: bytes) -> None:
        self.objects = objects
        self.held = held
        self.reached = threading.Event()
        self.release = threading.Event()

    def get(self, digest: bytes, verify: bool = True) -> bytes:
        if digest == self.held:
            self.reached.set()
            self.release.wait()
        return self.objects.get(digest, verify)


def test_record_cache_reads_itself_what_waits_behind_an_unfinished_prefetch(tmp_path):
    # A walk entering a subdirectory must not wait for the records of its
    # parent's other subdirectories, queued before its own.
    objects = _store(tmp_path)
    compressor = Compressor(CompressionSpec.parse("xz"))
    chunks = _chunks(2, 1000, seed=5)
    refs = [(objects.put(chunk, compressor), len(chunk)) for chunk in chunks]
    reader = _Held(objects, refs[0][0])
    cache = RecordCache(reader, workers=1)
    timer = threading.Timer(60, reader.release.set)  # without it, a hang would be the failure
    timer.start()
    try:
        cache.prefetch(refs)
        assert reader.reached.wait(60)  # the only worker is held on the first
        assert cache.get(refs[1][0]) == chunks[1]
        assert not reader.release.is_set()  # got while the first was still being read
    finally:
        reader.release.set()
        timer.cancel()
        cache.close()


def test_read_ahead_passes_paths_through_and_skips_what_is_not_a_file(tmp_path):
    top = tmp_path / "tree"
    top.mkdir()
    names = []
    for index in range(300):
        path = top / ("f%03d" % index)
        path.write_bytes(b"x" * (index % 7))  # some empty: nothing to read ahead
        names.append(os.fsencode(str(path)))
    fifo = top / "fifo"
    os.mkfifo(str(fifo))  # opening it for reading would block: never opened
    (top / "link").symlink_to(str(top / "f001"))
    extra = [os.fsencode(str(fifo)), os.fsencode(str(top / "link")),
             os.fsencode(str(top / "missing")), os.fsencode(str(top))]
    reader = ReadAhead(depth=16)
    paths = names[:150] + extra + names[150:]
    assert list(reader.paths(iter(paths))) == paths
    for thread in reader._threads:
        thread.join(timeout=30)
        assert not thread.is_alive()
    # Only non-empty regular files are advised, and never more than exist.
    assert reader.advised <= sum(1 for index in range(300) if index % 7)


def test_read_ahead_does_not_delay_paths_and_passes_input_errors():
    more = threading.Event()

    def slow():
        yield b"first"
        assert more.wait(60), "the first path was held back for the lookahead"
        yield b"second"
    reader = ReadAhead(depth=16)
    paths = reader.paths(slow())
    assert next(paths) == b"first"  # while the input still holds back the next
    more.set()
    assert list(paths) == [b"second"]

    def broken():
        yield b"one"
        raise OSError("input went away")
    with pytest.raises(OSError, match="input went away"):
        list(ReadAhead().paths(broken()))


def test_nul_paths_batches_follow_the_reads_of_a_pipe():
    """Each batch is what one read of the pipe completed: nothing waits for more input."""
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as reader:
        batches = NulPaths(reader).batches()
        os.write(write_end, b"a\0b")
        assert next(batches) == [b"a"]           # b's end is not known yet
        os.write(write_end, b"\0c\0d/e\0")
        assert next(batches) == [b"b", b"c", b"d/e"]
        os.write(write_end, b"\0\0f")            # empty names are skipped
        os.close(write_end)
        assert list(batches) == [[b"f"]]         # the last path needs no NUL
    read_end, write_end = os.pipe()
    os.write(write_end, b"x\0y\0z")
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        paths = list(ReadAhead().paths(NulPaths(reader)))
    assert paths == [b"x", b"y", b"z"]


def test_on_wait_is_called_every_tick_while_objects_finish_one_after_another(tmp_path):
    # A backup's checkpoints run from on_wait while it drains the queue.
    # Objects that each finish within a tick of the one before never let a
    # wait time out: on_wait must still come every tick, not only on a
    # timeout (checkpoints of a big file once stopped for 3 s that way).
    objects = _store(tmp_path)
    compressor = Compressor(CompressionSpec.parse("xz:6"))
    rng = random.Random(5)
    piece = helpers.costly_text(rng, 64 * 1024)
    started = time.process_time()
    compressor.compress(piece)
    each = max(time.process_time() - started, 1e-3)
    assert each < WAIT_TICK  # the premise: each object finishes within a tick
    pipeline = StorePipeline(objects, workers=2, max_bytes=1 << 30)
    calls = []
    pipeline.on_wait = lambda: calls.append(time.monotonic())
    # About 2 s of work on each of two workers.
    for _ in range(int(4.0 / each)):
        pipeline.put(helpers.costly_text(rng, 64 * 1024), compressor)
    began = time.monotonic()
    pipeline.drain()
    ended = time.monotonic()
    moments = [began] + calls + [ended]
    assert ended - began > 4 * WAIT_TICK
    assert max(later - earlier for earlier, later in zip(moments, moments[1:])) \
        <= 3 * WAIT_TICK, (ended - began, len(calls))
    pipeline.close()
