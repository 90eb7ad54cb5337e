#!/usr/bin/env python3
"""Write the deterministic pieces of the convert benchmark image.

mkimage.py DIR SCALE writes into DIR:
  random-N.bin   incompressible data (seeded PRNG)
  text.bin       compressible text-like data
  zeros.bin      explicit zero bytes (stored as data, found by zero detection)
  compress.raw   a sparse raw image holding only the ranges that the
                 script turns into zlib-compressed clusters
  layout.txt     "KIND OFFSET LENGTH [FILE]" lines describing the image
SCALE is 1 for the full 4 GiB image; the quick mode uses a 64 MiB image.
Every byte depends only on the seed, so runs and machines agree.
"""
import os
import random
import sys

MIB = 1 << 20


def text_block(length, seed):
    rnd = random.Random(seed)
    words = ["qimg", "cluster", "sector", "guest", "host", "image",
             "snapshot", "backing", "refcount", "table", "zero", "data"]
    out = bytearray()
    line = 0
    while len(out) < length:
        ws = " ".join(rnd.choice(words) for _ in range(8))
        out += b"%08d %s\n" % (line, ws.encode())
        line += 1
    return bytes(out[:length])


def main():
    out_dir, scale = sys.argv[1], sys.argv[2]
    full = scale == "1"
    # (kind, offset, length): offsets in MiB for the full image; the quick
    # image divides everything by 64 (4 GiB -> 64 MiB).
    div = 1 if full else 64
    size = 4096 * MIB // div
    plan = [
        ("random", 0, 96),
        ("random", 1024, 128),
        ("random", 3584, 96),
        ("text", 512, 128),
        ("zeros", 2560, 64),
        ("compress-text", 2048, 64),
        ("compress-random", 2112, 32),
        ("zero-clusters", 1056, 16),
    ]
    layout = []
    compress = open(os.path.join(out_dir, "compress.raw"), "wb")
    compress.truncate(size)
    for i, (kind, off, length) in enumerate(plan):
        off = off * MIB // div
        length = length * MIB // div
        seed = 1000 + i
        if kind in ("random", "compress-random"):
            data = random.Random(seed).randbytes(length)
        elif kind in ("text", "compress-text"):
            data = text_block(length, seed)
        elif kind == "zeros":
            data = bytes(length)
        else:
            layout.append("zero %d %d" % (off, length))
            continue
        if kind.startswith("compress"):
            compress.seek(off)
            compress.write(data)
            continue
        name = "%s-%d.bin" % (kind, i)
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
        layout.append("write %d %d %s" % (off, length, name))
    compress.close()
    # Small scattered writes: 4 KiB every 16 MiB (every 256 KiB quick).
    step = 16 * MIB // div
    rnd = random.Random(7)
    for off in range(step // 2, size, step):
        layout.append("small %d %d %d" % (off, 4096, rnd.randrange(1, 256)))
    with open(os.path.join(out_dir, "layout.txt"), "w") as f:
        f.write("size %d\n" % size)
        f.write("\n".join(layout) + "\n")


main()
