#!/usr/bin/env python3
"""Benchmark of backshift.chunking against a naive per-byte rolling hash.

Usage: python3 bench/bench_chunker.py [--size-mib N] [--source DIR]

Prints one row per (data set, method): throughput (from the process's CPU
time, and from wall-clock time) and chunk-size statistics.
Data sets: N MiB of random bytes, and up to N MiB of regular files under
DIR concatenated (default /usr/lib).  The naive row runs a pure-Python gear
hash, one byte at a time, on a small sample of the same data, to show what
the big-integer formulation of the chunker is being compared with.
Nothing is installed or written.
"""

import argparse
import io
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from backshift.chunking import DATA_PARAMS, METADATA_PARAMS, Chunker  # noqa: E402

MIB = 1024 * 1024


def collect_files(root, limit):
    """Concatenate regular files under root (sorted walk) up to limit bytes."""
    parts = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            try:
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as f:
                    data = f.read(limit - total)
            except OSError:
                continue
            parts.append(data)
            total += len(data)
            if total >= limit:
                return b"".join(parts)
    return b"".join(parts)


def naive_gear(data, mask_bits=20, min_size=0, max_size=8 * 1024 * 1024):
    """Per-byte gear rolling hash in plain Python (a FastCDC-like chunker)."""
    import hashlib

    gear = [
        int.from_bytes(hashlib.sha256(b"gear" + bytes([i])).digest()[:8], "little")
        for i in range(256)
    ]
    mask = ((1 << mask_bits) - 1) << (64 - mask_bits)
    full = (1 << 64) - 1
    cuts = []
    start = 0
    n = len(data)
    while start < n:
        end = min(n, start + max_size)
        h = 0
        cut = end
        for i in range(start + min_size, end):
            h = ((h << 1) + gear[data[i]]) & full
            if not h & mask:
                cut = i + 1
                break
        cuts.append(cut - start)
        start = cut
    return cuts


class Timer:
    """CPU time (user + system of this process) and wall time of a block.

    Throughput is computed from CPU time: on a shared machine with more
    runnable processes than cores the wall time also counts time spent
    waiting for a core, which says nothing about the chunker."""

    def __enter__(self):
        self.cpu = time.process_time()
        self.wall = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.cpu = time.process_time() - self.cpu
        self.wall = time.perf_counter() - self.wall


def measure_chunker(params, data, mode, repeat):
    """Best (cpu, wall) times of repeat runs, and the chunk sizes."""
    chunker = Chunker(params)
    best = None
    for _ in range(repeat):
        if mode == "chunks":
            stream = io.BytesIO(data)
            with Timer() as t:
                sizes = [len(c) for c in chunker.chunks(stream.read)]
        else:  # boundaries only
            with Timer() as t:
                sizes = [b - a for a, b in chunker.cut_ranges(data)]
        if best is None or t.cpu < best[0]:
            best = (t.cpu, t.wall)
    return best, sizes


def row(name, method, nbytes, times, sizes):
    cpu, wall = times
    full = sizes[:-1] or sizes
    avg = sum(sizes) / len(sizes) if sizes else 0
    print(
        "%-10s %-26s %6.1f %9.1f %9.1f %7d %9.0f %9.0f %9.0f"
        % (
            name,
            method,
            nbytes / MIB,
            nbytes / max(cpu, 1e-9) / 1e6,
            nbytes / max(wall, 1e-9) / 1e6,
            len(sizes),
            avg / 1024,
            min(full) / 1024 if full else 0,
            max(full) / 1024 if full else 0,
        )
    )
    sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256, help="MiB per data set")
    ap.add_argument("--source", default="/usr/lib", help="directory of real files")
    ap.add_argument("--naive-mib", type=int, default=4, help="MiB for the naive loop")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row (best is shown)")
    args = ap.parse_args(argv)

    size = args.size_mib * MIB
    print(
        "%s %s on %s; data params %s"
        % (
            platform.python_implementation(),
            platform.python_version(),
            platform.machine(),
            DATA_PARAMS,
        )
    )
    datasets = [("random", os.urandom(size))]
    real = collect_files(args.source, size)
    if real:
        datasets.append((os.path.basename(args.source.rstrip("/")) or "files", real))
    print(
        "%-10s %-26s %6s %9s %9s %7s %9s %9s %9s"
        % (
            "data",
            "method",
            "MiB",
            "MB/s cpu",
            "MB/s wall",
            "chunks",
            "avg KiB",
            "min KiB",
            "max KiB",
        )
    )
    for name, data in datasets:
        for mode in ("chunks", "cut_ranges"):
            times, sizes = measure_chunker(DATA_PARAMS, data, mode, args.repeat)
            row(name, "Chunker.%s (data)" % mode, len(data), times, sizes)
        times, sizes = measure_chunker(METADATA_PARAMS, data[: 64 * MIB], "chunks", args.repeat)
        row(name, "Chunker.chunks (metadata)", min(len(data), 64 * MIB), times, sizes)
        # The naive loop hashes every byte (min_size 0) with a 64 KiB mask so
        # that the small sample still yields several chunks: its MB/s is the
        # speed of a per-byte loop, to compare with the hashed part of the
        # chunker's work.
        sample = data[: args.naive_mib * MIB]
        with Timer() as t:
            sizes = naive_gear(sample, mask_bits=16, min_size=0, max_size=512 * 1024)
        row(name, "naive gear, per byte", len(sample), (t.cpu, t.wall), sizes)


if __name__ == "__main__":
    main()
