"""Small file fixtures shared by several test modules: random video frames, CSV tables."""

import csv

import numpy as np


def texture(count, height, width, seed):
    """``count`` random uint8 RGB frames (T, H, W, 3): compresses badly, so decoding errors show."""
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)
