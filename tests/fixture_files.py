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


def prepare_demo_cache(tiny_demo, out, frames, stored_size=40):
    """The tiny demo set decoded into a raw frame cache at ``out`` (quietly, in this process)."""
    from datasets import prepare

    videos, annotations = tiny_demo
    prepare.prepare_cache(
        out,
        prepare.read_video_names(annotations),
        str(videos),
        frames=frames,
        stored_size=stored_size,
        workers=0,
        progress=False,
        log=lambda m: None,
    )
    return out
