"""The HD rows of ``python -m benchmarks.data_throughput --hd``: decoding 720p and 1080p footage.

Web footage comes at 720p and 1080p, where one pass through a 3 s clip spends most of its time
on frames that are never kept.  For generated 3 s, 30 fps H.264 clips at each size this measures,
per core (one process, one decoder thread unless the option says otherwise, CPU seconds):

- ``prepare`` (the real command, ``--workers 0``) against seeking to each of the 16 frames (the
  earlier approach, as in the main benchmark): videos/s per core;
- the decoding options of :func:`datasets.video.decode_clip`, each on the same clips and frame
  choice, followed by ``prepare``'s resize to the stored size: every frame decoded vs
  non-reference frames that are not needed skipped by the decoder (``skip_nonref``), FFmpeg's
  frame / slice / auto threading with 2 threads, and frames kept at full size vs scaled to twice
  the stored size as they are decoded (``short_side``).  "same frames" compares each option's
  frames with the same-size option that decodes every frame in one thread.

Clips: a textured background panning under moving shapes, with sensor-like noise (libx264
defaults: B-frames, one key frame per clip), rendered by :func:`render_hd_clip`; rendering and
encoding a 1080p clip takes about half a minute here, so they are kept in ``--work-dir`` if given.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from benchmarks.data_throughput import Timer, earlier_prepare, table
from datasets.prepare import fit_clip, prepare_cache
from datasets.video import decode_clip, write_video

HD_SIZES = "1280x720,1920x1080"
# (label, decode_clip keywords); "S" stands for the cache's stored size
OPTIONS = [
    ("every frame decoded, 1 thread, full-size frames (before)", dict(skip_nonref=False, short_side=None)),
    ("non-reference frames skipped, 1 thread, full-size frames", dict(skip_nonref=True, short_side=None)),
    ("every frame decoded, 1 thread, frames scaled to 2 x S", dict(skip_nonref=False, short_side="S")),
    (
        "non-reference frames skipped, 1 thread, frames scaled to 2 x S (adopted)",
        dict(skip_nonref=True, short_side="S"),
    ),
    ("skipped + 2 frame threads, 2 x S", dict(skip_nonref=True, short_side="S", threads=2, thread_type="FRAME")),
    ("skipped + 2 slice threads, 2 x S", dict(skip_nonref=True, short_side="S", threads=2, thread_type="SLICE")),
    (
        "skipped + 2 threads auto (frame+slice), 2 x S",
        dict(skip_nonref=True, short_side="S", threads=2, thread_type="AUTO"),
    ),
]


def render_hd_clip(width: int, height: int, frames: int, seed: int) -> np.ndarray:
    """A smooth textured background panning 3 px/frame under three moving discs, plus noise.

    Cheap at any size (the background and a bank of noise frames are made once), and real work
    for a codec: motion everywhere, detail at every scale, noise that does not compress away.
    """
    rng = np.random.default_rng(seed)
    pad = 3 * frames
    coarse = rng.uniform(30, 220, ((height + pad) // 16 + 2, (width + pad) // 16 + 2, 3)).astype(np.float32)
    yy = np.linspace(0, coarse.shape[0] - 1.001, height + pad)
    xx = np.linspace(0, coarse.shape[1] - 1.001, width + pad)
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    background = (1 - fy) * ((1 - fx) * coarse[y0][:, x0] + fx * coarse[y0][:, x0 + 1]) + fy * (
        (1 - fx) * coarse[y0 + 1][:, x0] + fx * coarse[y0 + 1][:, x0 + 1]
    )
    background += 12 * np.sin(np.arange(width + pad) / 3.0)[None, :, None]  # fine detail
    background = np.clip(background, 0, 255).astype(np.int16)
    noise = rng.normal(0, 4, (4, height, width, 3)).round().astype(np.int16)
    discs = [
        (
            rng.uniform(0.1, 0.9, 2),
            rng.uniform(-0.004, 0.004, 2),
            int(rng.uniform(0.05, 0.15) * height),
            rng.uniform(30, 230, 3).astype(np.int16),
        )
        for _ in range(3)
    ]
    out = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        img = background[t : t + height, 3 * t : 3 * t + width] + noise[t % 4]
        for start, speed, radius, colour in discs:
            cy, cx = ((start + speed * t) % 1 * (height, width)).astype(int)
            top, left = max(cy - radius, 0), max(cx - radius, 0)
            yy, xx = np.ogrid[top : min(cy + radius, height), left : min(cx + radius, width)]
            box = img[top : top + yy.shape[0], left : left + xx.shape[1]]
            box[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = colour
        np.clip(img, 0, 255, out=img)
        out[t] = img
    return out


def make_hd_clips(folder: Path, sizes: list[tuple[int, int]], count: int, seconds: float, fps: int) -> dict:
    """``count`` clips per size in ``folder`` (reused if there) -> {"WxH": [paths]}."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = {}
    for width, height in sizes:
        paths = []
        for i in range(count):
            path = folder / f"hd_{width}x{height}_{i}.mp4"
            if not path.exists():
                tmp = folder / f".{path.name}.tmp.mp4"
                write_video(tmp, render_hd_clip(width, height, int(round(seconds * fps)), 100 + i), fps)
                os.replace(tmp, path)
            paths.append(str(path))
        clips[f"{width}x{height}"] = paths
    return clips


def decode_rates(paths: list[str], frames: int, stored: int, options: dict[str, dict], min_time: float) -> dict:
    """{option: clips per CPU-second (all threads) and per wall-second} of what ``prepare`` does
    with a clip before storing it: ``decode_clip(**kw)``, then the resize to ``stored`` x ``stored``.

    The options take turns, one pass over ``paths`` each per round, until each has run
    ``min_time`` CPU seconds: on a shared machine a load that changes over the run then weighs on
    every option alike, which measuring them one after the other would not do.
    """

    def one_pass(kw):
        for path in paths:
            fit_clip(decode_clip(path, frames, **kw)[0], stored)

    for kw in options.values():  # warm-up: page cache, codec initialisation
        one_pass(kw)
    cpu = dict.fromkeys(options, 0.0)
    wall = dict.fromkeys(options, 0.0)
    rounds = 0
    while rounds == 0 or min(cpu.values()) < min_time:
        for name, kw in options.items():
            with Timer() as t:
                one_pass(kw)
            cpu[name] += t.cpu
            wall[name] += t.wall
        rounds += 1
    clips = rounds * len(paths)
    return {
        name: {"clips_per_cpu_s": clips / max(cpu[name], 1e-9), "clips_per_s": clips / wall[name], "clips": clips}
        for name in options
    }


def same_frames(paths: list[str], frames: int, options: dict, reference: dict) -> bool:
    return all(
        np.array_equal(decode_clip(p, frames, **options)[0], decode_clip(p, frames, **reference)[0]) for p in paths
    )


def run_hd(
    work: Path,
    frames: int,
    stored: int,
    size: int,
    sizes: str,
    count: int,
    min_time: float,
    seconds: float = 3.0,
    fps: int = 30,
) -> tuple[dict, str]:
    """Measure every size; returns (figures, the report's HD section)."""
    parsed = [tuple(int(v) for v in s.lower().split("x")) for s in sizes.split(",") if s.strip()]
    clips = make_hd_clips(work / "hd-videos", parsed, count, seconds, fps)
    figures, prep_rows, option_rows = {}, [], []
    for label, paths in clips.items():
        names = [Path(p).name for p in paths]
        out, pt_dir = work / f"hd-cache-{label}", work / f"hd-pt-{label}"
        for path in (out, pt_dir):
            shutil.rmtree(path, ignore_errors=True)
        pt_dir.mkdir(parents=True)
        with Timer() as prep:
            prepare_cache(
                out,
                names,
                str(work / "hd-videos"),
                frames=frames,
                stored_size=stored,
                workers=0,
                progress=False,
                log=lambda m: None,
            )
        with Timer() as seek:
            for path in paths:
                earlier_prepare(path, pt_dir / (Path(path).stem + ".pt"), frames, size)
        rates = {"prepare": len(paths) / prep.cpu, "seek": len(paths) / seek.cpu}
        prep_rows += [
            [
                label,
                f"`prepare` ({frames} frames, one pass, {stored}x{stored} uint8)",
                f"{rates['prepare']:.2f}",
                f"{rates['prepare'] / rates['seek']:.1f}x",
            ],
            [
                label,
                f"earlier: seek to each of {frames} frames, {size}x{size} float32 .pt",
                f"{rates['seek']:.2f}",
                "1.0x",
            ],
        ]
        settings = {name: {k: (stored if v == "S" else v) for k, v in kw.items()} for name, kw in OPTIONS}
        options = decode_rates(paths, frames, stored, settings, min_time)
        for name, kw in settings.items():
            reference = {"skip_nonref": False, "short_side": kw.get("short_side")}
            options[name]["same_frames"] = same_frames(paths, frames, kw, reference)
        base = options[OPTIONS[0][0]]["clips_per_cpu_s"]
        for name, r in options.items():
            option_rows.append(
                [
                    label,
                    name,
                    "yes" if r["same_frames"] else "NO",
                    f"{r['clips_per_cpu_s']:.2f}",
                    f"{r['clips_per_s']:.2f}",
                    f"{r['clips_per_cpu_s'] / base:.2f}x",
                ]
            )
        figures[label] = {"prepare_videos_per_core_s": rates, "options": options, "clips": len(paths)}
    report = "\n\n".join(
        [
            f"HD footage ({count} generated {seconds:g} s {fps} fps H.264 clip(s) per size; {frames} frames, "
            f"cache stored at {stored}x{stored}). Preparation, per core:\n\n"
            + table(["clips", "method", "videos/s per core", "vs seek"], prep_rows),
            f"Decoding options (decode_clip with the same frame choice, then the resize to {stored}x{stored} as in "
            "`prepare`; 'same frames' = identical to decoding every frame in one thread at the same conversion "
            "size; clips/s per core = CPU time of all threads; the options take turns):\n\n"
            + table(["clips", "option", "same frames", "clips/s per core", "clips/s (wall)", "vs before"], option_rows),
        ]
    )
    return figures, report
