#!/usr/bin/python3
"""Writes scikit-learn's 8x8 handwritten digits (Debian: python3-sklearn) as PNG class folders:
examples/digits/{train,val}/<digit>/<index>.png, grey 8-bit, pixel = round(v * 255 / 16).

Each class's images, in scikit-learn's order, alternate between train/ and val/ (901 / 896),
so validation is fixed and the same for every run. Deterministic: the files it writes are the
files committed. Run with Debian's interpreter (/usr/bin/python3), from anywhere:
    /usr/bin/python3 examples/make-digits.py [OUT_DIR]      (default: examples/digits)
"""
import os
import shutil
import struct
import sys
import zlib

from sklearn.datasets import load_digits


def png_grey(path, rows):
    """A minimal grey 8-bit PNG (filter 0 on every row), written with zlib only."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    h, w = len(rows), len(rows[0])
    raw = b"".join(b"\0" + bytes(r) for r in rows)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "digits")
    for split in ("train", "val"):
        shutil.rmtree(os.path.join(out, split), ignore_errors=True)
    d = load_digits()
    seen = [0] * 10
    for i, (img, label) in enumerate(zip(d.images, d.target)):
        split = "train" if seen[label] % 2 == 0 else "val"
        seen[label] += 1
        folder = os.path.join(out, split, str(label))
        os.makedirs(folder, exist_ok=True)
        rows = [[int(v * 255 / 16 + 0.5) for v in row] for row in img]
        png_grey(os.path.join(folder, "%04d.png" % i), rows)
    print("%s: %d images, %d classes" % (out, len(d.target), len(seen)))


if __name__ == "__main__":
    main()
