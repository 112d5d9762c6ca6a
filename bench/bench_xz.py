#!/usr/bin/env python3
"""LZMA2 filter options side by side on the objects of a real backup.

Usage: python3 bench/bench_xz.py SAVEDIR [--every N] [--variant SPEC]...

SAVEDIR is a save directory written by a backup with the default
compression; every Nth of its objects is decompressed and, unless it is
stored raw (a raw pack of already compressed files, or data that failed the
trial), put through the cheap trial exactly as a backup does; then each
variant compresses the objects that pass it.  One row per variant: CPU seconds of
this process (one thread, so CPU = time spent), the payload bytes, and the
repository size as ``du`` would count it (16-byte header, 4 KiB blocks per
object; objects that fail the trial or do not shrink count raw).

A variant is ``default`` (the default codec as configured now, trial
included: it counts in its CPU time) or comma-separated LZMA2 options over
preset 1 (the dictionary sized to the object as compression.py does), e.g.
``mf=hc3,nice=32,depth=4`` or ``lc=4,pb=0``; ``dict=KIB`` caps the dictionary at KIB KiB; ``split=R`` applies the options only to objects whose trial ratio is above R
(the others get the plain preset); ``worth=R`` sends to zlib what the
trial leaves above R instead of compression.XZ_WORTH_RATIO; ``route=0`` gives xz also the
objects that compression.XZ_WORTH_RATIO sends to zlib; ``zlib1`` is zlib
level 1 alone; the empty variant is xz preset 1 with that routing.
Variants run interleaved, object by object, so drift in the machine's load
hits all alike.  Nothing is written.
"""

import argparse
import lzma
import os
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from backshift import compression  # noqa: E402
from backshift.objectstore import ObjectStore  # noqa: E402

MF = {"hc3": lzma.MF_HC3, "hc4": lzma.MF_HC4, "bt2": lzma.MF_BT2, "bt3": lzma.MF_BT3,
      "bt4": lzma.MF_BT4}
MODE = {"fast": lzma.MODE_FAST, "normal": lzma.MODE_NORMAL}
KEYS = {"mf": "mf", "nice": "nice_len", "depth": "depth", "mode": "mode", "lc": "lc",
        "lp": "lp", "pb": "pb", "preset": "preset"}


def make_variant(spec):
    """A function bytes -> payload bytes for one variant text."""
    if spec == "default":
        compressor = compression.Compressor(compression.CompressionSpec.parse("xz"))
        return lambda data, ratio: compressor.compress(data)[1]
    if spec == "zlib1":
        return lambda data, ratio: zlib.compress(data, 1)
    options = {"preset": 1}
    top_kib = 0
    route = True
    split = 0.0
    worth = compression.XZ_WORTH_RATIO
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "route":
            route = bool(int(value))
        elif key == "worth":
            worth = float(value)
        elif key == "split":
            split = float(value)
        elif key == "mf":
            options["mf"] = MF[value]
        elif key == "mode":
            options["mode"] = MODE[value]
        elif key == "dict":
            top_kib = int(value)
        else:
            options[KEYS[key]] = int(value)
    top = top_kib * 1024 or compression.XZ_PRESET_DICT[options["preset"]]

    def run(data, ratio):
        if route and ratio > worth:
            payload = zlib.compress(data, 1)
            if len(payload) > len(data) * worth:  # as compression.Compressor._xz_or_zlib
                return payload
        dict_size = compression.XZ_MIN_DICT
        while dict_size < len(data) and dict_size < top:
            dict_size <<= 1
        chosen = options if ratio > split else {"preset": options["preset"]}
        filters = [dict(chosen, id=lzma.FILTER_LZMA2, dict_size=dict_size)]
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE,
                             filters=filters)
    return run


def blocks(size):
    return (size + 16 + 4095) // 4096 * 4


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("savedir")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--variant", action="append")
    parser.add_argument("--all", action="store_true",
                        help="give the trial also the objects stored raw (a SAVEDIR written "
                        "with --compression none: raw packs are in the trial too)")
    args = parser.parse_args()
    variants = args.variant or ["default"]
    runs = [make_variant(spec) for spec in variants]
    store = ObjectStore(args.savedir, "bench", durable=False)
    cpu = [0.0] * len(runs)
    size = [0] * len(runs)
    kib = [0] * len(runs)
    raw_kib = raw_bytes = passed = count = 0
    for index, digest in enumerate(store.iter_digests()):
        if index % args.every:
            continue
        codec, _length, payload = store.read_raw(digest)
        data = compression.decompress(codec, payload)
        count += 1
        raw_bytes += len(data)
        ratio = compression.trial_ratio(data) if len(data) >= compression.MIN_COMPRESS_SIZE else 1
        if codec == compression.CODEC_NONE and not args.all or ratio >= compression.TRIAL_RATIO:
            raw_kib += blocks(len(data))
            continue
        passed += len(data)
        for slot, run in enumerate(runs):
            start = time.process_time()
            payload = run(data, ratio)
            cpu[slot] += time.process_time() - start
            stored = min(len(payload), len(data))
            size[slot] += stored
            kib[slot] += blocks(stored)
    print("%d objects, %.1f MB, %.1f MB pass the trial; raw rest %d KiB"
          % (count, raw_bytes / 1e6, passed / 1e6, raw_kib))
    print("%-36s %8s %9s %9s %8s" % ("variant", "CPU s", "MB/s", "payload MB", "du KiB"))
    for slot, spec in enumerate(variants):
        print("%-36s %8.2f %9.1f %9.2f %8d" % (spec, cpu[slot], passed / 1e6 / max(cpu[slot], 1e-9),
                                               size[slot] / 1e6, kib[slot] + raw_kib))


if __name__ == "__main__":
    main()
