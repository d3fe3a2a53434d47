"""Decode videos the way training does and print what was found: ``python -m datasets.check_videos PATH...``.

For each file: its size, frame rate and frame count, then a 16-frame clip through the evaluation
transform (short side to 224, centre crop), decoded with the same policy flags as training
(``--partial-videos``, ``--max-video-seconds``, ``--max-video-pixels``).  Each file is reported as
``ok``, ``partial`` (the file ends early; its frames are used), ``SKIPPED`` (over a limit, or
partial under ``--partial-videos skip``) or ``FAILED``, with what sets it apart (a header frame
count that is wrong, a variable frame rate, a display rotation, decoding at a reduced size).
Exit status 1 if any file fails, naming it; skipped files are reported, not failures.  Useful
before a long run on a new video collection, and run by CI on the real clips in
``../shared/data/videos``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from utils.cli import CommandLineParser

from .augment import ClipTransform
from .decode_policy import VideoSkipped, add_decode_arguments, decode_policy_from_args
from .video import decode_clip

VIDEO_SUFFIXES = {".mp4", ".webm", ".avi", ".mkv", ".mov"}


def main(argv: list[str] | None = None) -> int:
    parser = CommandLineParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "paths", nargs="+", help="video files or folders (searched recursively for *.mp4, *.webm, *.avi, *.mkv, *.mov)"
    )
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    add_decode_arguments(parser)
    args = parser.parse_args(argv)
    policy = decode_policy_from_args(args)
    files: list[Path] = []
    for p in map(Path, args.paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES)
        else:
            files.append(p)
    if not files:
        print("no video files given or found", file=sys.stderr)
        return 1
    transform = ClipTransform(size=args.size, train=False)
    counts = {"ok": 0, "partial": 0, "SKIPPED": 0, "FAILED": 0}
    for path in files:
        start = time.perf_counter()
        try:
            frames, info = decode_clip(path, args.frames, short_side=args.size, policy=policy)
            clip = transform(frames)
        except VideoSkipped as exc:
            counts["SKIPPED"] += 1
            print(f"SKIPPED {path}: {exc}")
            continue
        except Exception as exc:  # report every file, then fail
            counts["FAILED"] += 1
            print(f"FAILED {path}: {type(exc).__name__}: {exc}")
            continue
        ms = 1000 * (time.perf_counter() - start)
        status = "partial" if info["partial"] else "ok"
        counts[status] += 1
        notes = f" [{'; '.join(info['notes'])}]" if info["notes"] else ""
        print(
            f"{status} {path}: {info['source_width']}x{info['source_height']}, {info['fps']:.2f} fps, "
            f"{info['total_frames']} frames ({info['codec']}, {info['pix_fmt']}) -> clip {tuple(clip.shape)} "
            f"{clip.dtype} in {ms:.0f} ms{notes}"
        )
    decoded = counts["ok"] + counts["partial"]
    print(
        f"{decoded} of {len(files)} videos decoded ({counts['partial']} partial, used); "
        f"{counts['SKIPPED']} skipped; {counts['FAILED']} failed"
    )
    return 1 if counts["FAILED"] else 0


if __name__ == "__main__":
    sys.exit(main())
