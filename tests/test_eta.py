"""Issue 12 item 6: the ETA on runs whose pace changes, simulated in-process.

A simulated backup (a reader with a cost per file and per byte, handing its
data to a store that compresses at its own pace through a bounded queue,
and, while it has a backlog, reports what it wrote in lumps, as worker
threads finishing big chunks together do) drives the real progress reporter: the paths are real files
(the big ones sparse) that the reporter weighs as for ``--progress-report
full``; only the clock and the store are simulated.  The ETA the status
line shows is compared with the time the simulation really took.
"""

import io
import os
import re
from typing import List, Optional, Tuple

import pytest

from backshift.estimate import Estimator, Sample, Work
from backshift.progress import ProgressReporter

MB = 1000 * 1000
ETA = re.compile(r"ETA (\d+):(\d\d):(\d\d)")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store:
    """The store pipeline as the reporter sees it (pipeline.StorePipeline's counters)."""

    def __init__(self, cores: int, max_bytes: int) -> None:
        self.handed_bytes = 0
        self.written_bytes = 0
        self.waited = 0.0
        self.store_seconds = 0.0
        self.cores = cores
        self.max_bytes = max_bytes


class Simulation:
    """A backup of files of ``sizes`` in order, stepped ``STEP`` seconds at a time."""

    STEP = 0.01

    def __init__(self, sizes: List[int], per_file: List[float], per_byte: float,
                 store_rate: float, lump: int, cores: int = 2,
                 queue: int = 64 * MB, shared: bool = False) -> None:
        self.sizes, self.per_file, self.per_byte = sizes, per_file, per_byte
        self.store_rate, self.lump = store_rate, lump
        self.shared = shared  # the reader, while it works, takes a core from the store
        self.store = Store(cores, queue)
        self.time = 0.0
        self.files = 0          # files done
        self.left = per_file[0] if sizes else 0.0  # per-file time left of the current file
        self.unread = sizes[0] if sizes else 0     # bytes left of the current file
        self.stored = 0.0       # bytes the store has processed (written in lumps)

    @property
    def finished(self) -> bool:
        return self.files == len(self.sizes) and self.store.written_bytes == \
            self.store.handed_bytes

    def step(self) -> List[Tuple[int, int]]:
        """Advance STEP seconds; the (index, size) of the files done meanwhile."""
        done = []
        budget = self.STEP
        store = self.store
        waited = store.waited
        while budget > 1e-12 and self.files < len(self.sizes):
            if self.left > 0:
                spent = min(budget, self.left)
                self.left -= spent
                budget -= spent
                continue
            room = store.max_bytes - (store.handed_bytes - store.written_bytes)
            if self.unread and room <= 0:
                store.waited += budget
                budget = 0.0
                break
            size = min(self.unread, room, int(budget / self.per_byte))
            self.unread -= size
            store.handed_bytes += size
            budget -= size * self.per_byte
            if self.unread:
                if size == 0:
                    break
                continue
            done.append((self.files, self.sizes[self.files]))
            self.files += 1
            if self.files < len(self.sizes):
                self.left = self.per_file[self.files]
                self.unread = self.sizes[self.files]
        active = self.STEP - budget - (store.waited - waited)  # the reader's own time
        cores = store.cores - active / self.STEP if self.shared else store.cores
        work = min(self.store_rate * self.STEP * cores / store.cores,
                   store.handed_bytes - self.stored)
        self.stored += work
        before = store.written_bytes
        if self.stored >= store.handed_bytes:  # caught up: each object is written as it comes
            store.written_bytes = store.handed_bytes
        else:  # a backlog: the workers finish chunks together
            store.written_bytes = max(store.written_bytes,
                                      int(self.stored // self.lump * self.lump))
        # Workers count their time when they finish, on all cores at once.
        store.store_seconds += (store.written_bytes - before) / self.store_rate * store.cores
        self.time += self.STEP
        return done


def run_simulation(sim: Simulation, paths: List[bytes],
                   tick: float = 0.5) -> Tuple[List[Tuple[float, Optional[float]]], float]:
    """(elapsed, ETA shown) at each redraw of a real reporter following ``sim``, and the
    simulated run's length."""
    clock = Clock()
    reporter = ProgressReporter(io.StringIO(), "full", clock=clock)
    reporter.finish()  # no ticker thread: the redraws come from here, on the simulated clock
    reporter.inhale(iter(paths))
    reporter.watch(sim.store)
    started = clock.now
    shown = []
    next_tick = tick
    while not sim.finished:
        for index, size in sim.step():
            reporter.file_done(paths[index], size)
        clock.now = started + sim.time
        if sim.time >= next_tick - 1e-9:
            next_tick += tick
            found = ETA.search(reporter.status_line(clock.now))
            seconds = None if found is None else \
                int(found.group(1)) * 3600 + int(found.group(2)) * 60 + int(found.group(3))
            shown.append((sim.time, seconds))
    return shown, sim.time


def make_files(top, count: int, size: int, sparse: bool = False) -> List[bytes]:
    paths = []
    for number in range(count):
        path = os.path.join(str(top), "f%05d" % number)
        with open(path, "wb") as handle:
            if sparse:
                handle.truncate(size)
            else:
                handle.write(b"x" * size)
        paths.append(os.fsencode(path))
    return paths


def eta_at(shown, share: float, ended: float) -> Tuple[float, Optional[float]]:
    """(elapsed, ETA shown) of the last redraw at or before ``share`` of the run."""
    return [item for item in shown if item[0] <= share * ended][-1]


def assert_close(shown, ended: float, shares, within: float) -> None:
    for share in shares:
        when, eta = eta_at(shown, share, ended)
        truth = ended - when
        assert eta is not None and abs(eta - truth) <= within * truth + 1, \
            (share, when, eta, truth)


def test_eta_of_tiny_files_first_and_big_ones_last(tmp_path):
    # 2,000 tiny files at 5 ms each (a slow disk: 10 s for 1 MB), then
    # 200 MB of big files at the store's 10 MB/s (20 s).  Bytes per second
    # over the tiny files would make the big ones take 200 s; files per
    # second, no time at all.
    (tmp_path / "tiny").mkdir()
    (tmp_path / "big").mkdir()
    tiny = make_files(tmp_path / "tiny", 2000, 500)
    big = make_files(tmp_path / "big", 8, 25 * MB, sparse=True)
    sim = Simulation([500] * 2000 + [25 * MB] * 8, [0.005] * 2000 + [0.001] * 8,
                     per_byte=5e-9, store_rate=10 * MB, lump=8 * MB)
    shown, ended = run_simulation(sim, tiny + big)
    assert 29 < ended < 32
    assert_close(shown, ended, (0.25, 0.5, 0.75, 0.9), within=0.15)


def test_eta_of_big_files_first_and_small_ones_last(tmp_path):
    # The reverse: the store is the slower stage first, while the reader
    # runs a queue ahead; then 3,000 files of 4 KB keep the reader busy
    # (3 ms each, found from sizes that differ: some files are 1 KB).
    (tmp_path / "big").mkdir()
    (tmp_path / "small").mkdir()
    sizes = [25 * MB] * 6 + [1000 if number % 3 else 4000 for number in range(3000)]
    paths = make_files(tmp_path / "big", 6, 25 * MB, sparse=True)
    for number, size in enumerate(sizes[6:]):
        path = tmp_path / "small" / ("s%05d" % number)
        path.write_bytes(b"y" * size)
        paths.append(os.fsencode(str(path)))
    sim = Simulation(sizes, [0.001] * 6 + [0.003] * 3000, per_byte=5e-9,
                     store_rate=10 * MB, lump=8 * MB)
    shown, ended = run_simulation(sim, paths)
    assert_close(shown, ended, (0.5, 0.75, 0.9), within=0.15)


def test_eta_of_the_queue_left_when_the_reader_is_done(tmp_path):
    # The reader takes a core from the store while it reads (two cores):
    # the store keeps 6.7 MB/s while the reader runs, 10 MB/s once it is
    # done, so the 64 MB queued at the end drain in 6.4 s, not 9.6 s.
    paths = make_files(tmp_path, 10, 25 * MB, sparse=True)
    sim = Simulation([25 * MB] * 10, [0.001] * 10, per_byte=1e-7, store_rate=10 * MB,
                     lump=4 * MB, shared=True)
    shown, ended = run_simulation(sim, paths)
    assert 35 < ended < 40
    assert_close(shown, ended, (0.5, 0.75, 0.9), within=0.15)


def _samples(per_file: float, per_byte: float, sizes: List[int]) -> List[Sample]:
    """Samples every 0.5 s of a reader that never waits, reading files of ``sizes``."""
    samples, time, files, read, since = [], 0.0, 0, 0, 0.0
    samples.append(Sample(0.0, 0, 0, 0, 0, 0.0, 0.0))
    for size in sizes:
        cost = per_file + per_byte * size
        time += cost
        since += cost
        files += 1
        read += size
        if since >= 0.5:
            samples.append(Sample(time, files, read, read, 0, 0.0, read * 1e-8))
            since = 0.0
    return samples


@pytest.mark.parametrize("per_file, per_byte", [(0.002, 2e-8), (0.0002, 5e-8)])
def test_reader_costs_are_told_apart_when_sizes_differ(per_file, per_byte):
    # Directories of files of one kind each: icons, then documents, then...
    sizes = [(number * 7919) % 2000 + 30000 * (number // 300 % 5) for number in range(20000)]
    estimator = Estimator(Work(len(sizes)))
    for sample in _samples(per_file, per_byte, sizes):
        estimator.add(sample)
    fitted_file, fitted_byte = estimator.reader_costs()
    assert fitted_file == pytest.approx(per_file, rel=0.1)
    assert fitted_byte == pytest.approx(per_byte, rel=0.1)
