"""Decode videos the way training does and print what was found: ``python -m datasets.check_videos PATH...``.

For each file: its size, frame rate and frame count, then a 16-frame clip through the evaluation
transform (short side to 224, centre crop).  Exit status 1 if any file fails, naming it.  Useful
before a long run on a new video collection, and run by CI on the real clips in
``../shared/data/videos``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .transforms import ClipTransform
from .video import decode_clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="video files or folders (searched recursively for *.mp4, *.webm, *.avi, *.mkv, *.mov)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    files: list[Path] = []
    for p in map(Path, args.paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in {".mp4", ".webm", ".avi", ".mkv", ".mov"})
        else:
            files.append(p)
    if not files:
        print("no video files given or found", file=sys.stderr)
        return 1
    transform = ClipTransform(size=args.size, train=False)
    failed = 0
    for path in files:
        start = time.perf_counter()
        try:
            frames, info = decode_clip(path, args.frames)
            clip = transform(frames)
        except Exception as exc:  # report every file, then fail
            failed += 1
            print(f"FAILED {path}: {type(exc).__name__}: {exc}")
            continue
        ms = 1000 * (time.perf_counter() - start)
        print(f"ok {path}: {info['width']}x{info['height']}, {info['fps']:.2f} fps, {info['total_frames']} frames "
              f"({info['codec']}, {info['pix_fmt']}) -> clip {tuple(clip.shape)} {clip.dtype} in {ms:.0f} ms")
    print(f"{len(files) - failed} of {len(files)} videos decoded")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
