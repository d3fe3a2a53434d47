"""Built-in synthetic demo dataset: short H.264 clips of simple agents, with true labels.

The training job must run on a fresh machine with no data; this module renders a small
dataset whose every label is a function of what the clip shows, in the real cleaned
annotation schema (31 columns, see ``COLUMNS``), so the whole pipeline can learn something.

    python -m datasets.demo --out DIR [--num-videos 800] [--seed 0] [--force]

writes ``DIR/videos/<shard>/demo_<i>.mp4`` (libx264, yuv420p, sub-folders like Moments in
Time), ``DIR/annotations.csv`` and, last, the marker ``DIR/DEMO_COMPLETE.json``.  Everything
is drawn from ``numpy.random.default_rng([seed, i])`` per clip, so the same seed gives the
same labels, frames and (with ``X264_OPTIONS``) the same H.264 bytes: bytes that differ between
renderings change decoded frames slightly, enough to change what a small training run reaches.

What a clip shows (side view): a scene (indoor room or outdoor field) and 0-5 *agents*.
An agent is an upright figure: an elliptic body in the "mood colour" and a round head whose
front half is black and back half white (that is its visible front).  Agents bob up and
down; a white "speech bubble" can pulse above an agent's head; a magenta
box can be lying on the ground or carried by an agent.  Frames are 64-96 px high and
1.0-1.4x as wide (even sizes, as yuv420p H.264 needs), 10-15 fps, 2-3 s.  Agents stand in
the centre square of the frame (so a centre crop keeps them) and are big: 27-45 % of the
frame height, high-contrast, with black outlines.

Label rules (scores on the 0.1 grid; "bh" = agent height in pixels):
- peoplecount: number of agents n; 0, 1, 2, 3, and "many" for 4-5.
  peoplecount_certain: False when the clip is foggy (contrast reduced) or two agents
  overlap (centres < 0.55 bh apart), True otherwise and always for "many".
- distance: mean horizontal gap between neighbouring agents' centres in body heights,
  mapped linearly so 0.5 bh (touching) -> 0 and 2 bh -> 1.  NaN with fewer than 2 agents.
- facingness: for each pair of horizontal neighbours, +0.5 for each of the two whose black
  front points at the other; the mean over pairs.  0 with fewer than 2 agents.
- communicating: speech bubbles.  None -> 0; one agent's bubble pulsing on and off
  (monologue) -> 0.3; k >= 2 neighbouring agents taking turns, one bubble at a time
  (dialogue) -> 0.7 + 0.1 (k - 1), at most 1.  Any single frame shows at most one bubble,
  so monologue vs dialogue needs motion across frames.
- joint: all agents bob at the same frequency; the score says how in step neighbours move.
  Every other agent is 0, 1/6, 1/3 or 1/2 of a cycle out of step with its neighbours ->
  1.0, 0.7, 0.4, 0.1 (score = 1 - 1.8 x offset).  In step, neighbours always move the same
  way (the group bobs as one); half a cycle apart they always move opposite ways.  Every
  clip with two or more agents starts at the same point of the movement: the even-numbered
  agents halfway up and rising.  So at the start an in-step group rises together, and each agent
  that is out of step shows it in its own movement against the clip's start, as well as
  against its neighbours (version 5 started each clip at a random point and left only the
  comparison between agents, which ResNet3D-18 never learned: docs/log/demo_learning.md).
  One frame does not order the levels: feet stand at different heights, and in the first
  frame an agent 1/6 of a cycle out of step is as high as one 1/3 out, and one in step as
  high as one half a cycle out.  Motion-only.  NaN with fewer than 2 agents.
- arousal: speed of the movement: amplitude 5-15 % of the frame height and frequency
  0.3-0.7 Hz both grow linearly with arousal (slow enough that 8 frames from 2-3 s see
  each cycle at several points).  Motion-only.  0 with no agents (a still scene).
- valence: the mood colour of the agents' bodies and of the sun/lamp, from blue (0)
  through grey to warm yellow (1).
- object: no box -> 0; box lying on the ground away from agents -> 0.3; box carried in
  front of an agent (moving with it) -> 0.9.  The box (0.5 bh) always lies inside the
  centre square, and a carried box and the speech bubble are drawn over the agents, so
  what the label says is in the model's view.
- expanse: the visible area: horizon at 55 % of the height (0) up to 25 % (1) and 2-10
  perspective stripes on the floor/ground; agents also tend to be smaller in wide scenes.
- location: Indoor = ceiling band, plain wall, wood/tile floor and a hanging lamp;
  Outdoor = sky gradient, sun, grass/asphalt.  About 10 % of scenes are "patios" (sky
  above an indoor floor): location_score empty and confidence 0.3.

Missing values like the real table: each score column is emptied at random with its own
rate (``NAN_RATES``, 5-15 %) on top of the structural NaNs above; a missing score has
confidence 0 (as in the cleaned table).  Confidences are 0.3-0.95 depending on how clear
the cue is (e.g. valence near grey, slow motion for joint, crowds for facingness), minus
0.2 in fog, plus a little noise.  Explanations are short generated sentences.

``static=True`` renders every clip as its first frame repeated (same labels): the control
that shows which labels a model can only read from motion.  What ResNet3D-18 learns of each
label, with and without motion, and why: docs/log/demo_learning.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.atomic import fsync_dir, fsync_tree
from utils.cli import progress_bar

from .video import write_video

__all__ = [
    "COLUMNS",
    "DEFAULT_NUM_VIDEOS",
    "MARKER_NAME",
    "NAN_RATES",
    "demo_frame_cache_dir",
    "demo_validation_names",
    "ensure_demo_dataset",
    "ensure_demo_frame_cache",
    "generate_demo_dataset",
    "demo_annotation",
    "demo_scene",
    "render_demo_clip",
]

GENERATOR_VERSION = 9  # bump when rendering or labels change: existing demo dirs regenerate
DEFAULT_NUM_VIDEOS = 800
MARKER_NAME = "DEMO_COMPLETE.json"
FRAME_CACHE_PREFIX = "frame_cache_"  # DIR/frame_cache_<frames>x<size>: raw frame caches of DIR's clips
FRAME_CACHE_MIN_SIZE = 64  # the clips' shortest side: caches are stored at --size, but not below it
CLIPS_PER_SHARD = 100
# joint score -> phase offset between neighbours, in cycles: score = 1 - 1.8 x offset, from in
# step (neighbours always move the same way) to half a cycle apart (always opposite ways).
JOINT_LEVELS = {1.0: 0.0, 0.7: 1 / 6, 0.4: 1 / 3, 0.1: 1 / 2}
# x264 options of the demo clips.  One thread: tiny frames gain nothing from threads.  mbtree=0:
# x264's macroblock-tree rate control makes re-encoding the same frames give different bytes
# (even with one thread), so a seed would not render the same clips; with it off the bytes
# repeat (a test renders clips twice and compares them).  qcomp=1.0: with mbtree off, constant
# quality per frame keeps a static clip's frames as close to its first frame as before, at
# equal bytes.
X264_OPTIONS = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0:qcomp=1.0"}
# Sizes in body heights, chosen so the small cues stay several pixels wide at the demo's 48-64 px
# model input: a smaller box and head are barely learned, and with a box of 0.4 object stayed
# unlearned on some seeds' clips; at 0.5 the demo's settings learn it on every seed tried
# (docs/log/demo_learning.md has the runs).
BOX_SIDE = 0.5
HEAD_RADIUS = 0.25

FEATURES = ("distance", "object", "expanse", "facingness", "communicating", "joint", "valence", "arousal")
COLUMNS: tuple[str, ...] = (
    ("video_name",)
    + tuple(f"{f}_{kind}" for f in FEATURES for kind in ("score", "confidence"))
    + ("peoplecount", "peoplecount_certain", "location_score", "location_confidence")
    + tuple(f"{f}_explanation" for f in FEATURES)
    + ("location_explanation", "scene_analysis_explanation")
)
# Random missing-score rates, different per column like the real table (joint most often
# missing, object least).
NAN_RATES = {
    "distance": 0.08,
    "object": 0.05,
    "expanse": 0.10,
    "facingness": 0.12,
    "communicating": 0.12,
    "joint": 0.15,
    "valence": 0.08,
    "arousal": 0.10,
    "location": 0.05,
}

# Colours (RGB).
BLACK = (0, 0, 0)
WHITE = (250, 250, 250)
BOX = (235, 30, 200)
COLD, WARM = np.array((40, 70, 225.0)), np.array((250, 205, 30.0))
MID_GREY = np.array((145, 140, 135.0))
WALLS = ((225, 214, 188), (196, 210, 228), (232, 202, 198))
INDOOR_FLOORS = ((150, 98, 58), (165, 165, 178))
OUTDOOR_GROUNDS = ((72, 150, 70), (118, 118, 124))
CEILING = (72, 52, 42)
SKY_TOP, SKY_HORIZON = np.array((105, 165, 235.0)), np.array((195, 222, 246.0))


def _grid(x: float) -> float:
    """Round to the 0.1 grid of the real table."""
    return round(min(max(x, 0.0), 1.0) * 10) / 10


def mood_colour(valence: float) -> np.ndarray:
    """Blue (0) -> grey (0.5) -> warm yellow (1)."""
    if valence < 0.5:
        return COLD + (MID_GREY - COLD) * (valence / 0.5)
    return MID_GREY + (WARM - MID_GREY) * ((valence - 0.5) / 0.5)


@dataclass
class Scene:
    """Everything drawn for one clip (pixels, seconds)."""

    width: int
    height: int
    fps: int
    num_frames: int
    location: str  # "Indoor", "Outdoor" or "patio" (ambiguous)
    expanse: float
    horizon_y: float
    stripes: int
    floor: tuple
    wall: tuple
    fog: float
    valence: float
    arousal: float
    move_freq: float
    move_amp: float
    body_h: float
    xs: list = field(default_factory=list)
    feet_y: list = field(default_factory=list)
    headings: list = field(default_factory=list)
    phases: list = field(default_factory=list)
    joint: float = math.nan
    talk_mode: str = "none"  # none | monologue | dialogue
    talkers: list = field(default_factory=list)
    turn_s: float = 1.0
    box_mode: str = "none"  # none | idle | carried
    box_owner: int = -1
    box_x: float = 0.0

    @property
    def n(self) -> int:
        return len(self.xs)


def _sample_scene(rng: np.random.Generator) -> Scene:
    height = int(rng.integers(32, 49)) * 2
    width = min(112, int(round(height * rng.uniform(1.0, 1.4) / 2)) * 2)
    fps = int(rng.integers(10, 16))
    num_frames = int(round(fps * rng.uniform(2.0, 3.0)))
    location = str(rng.choice(["Indoor", "Outdoor", "patio"], p=[0.45, 0.45, 0.10]))
    lo, hi = {"Indoor": (0, 6), "Outdoor": (3, 10), "patio": (2, 8)}[location]
    expanse = int(rng.integers(lo, hi + 1)) / 10
    arousal = int(rng.integers(0, 11)) / 10
    scene = Scene(
        width=width,
        height=height,
        fps=fps,
        num_frames=num_frames,
        location=location,
        expanse=expanse,
        horizon_y=height * (0.55 - 0.30 * expanse),
        stripes=2 + int(round(8 * expanse)),
        floor=tuple(INDOOR_FLOORS[rng.integers(2)] if location != "Outdoor" else OUTDOOR_GROUNDS[rng.integers(2)]),
        wall=tuple(WALLS[rng.integers(3)]),
        fog=float(rng.uniform(0.35, 0.5)) if rng.random() < 0.15 else 0.0,
        valence=int(rng.integers(0, 11)) / 10,
        arousal=arousal,
        move_freq=0.3 + 0.4 * arousal,
        move_amp=height * (0.05 + 0.10 * arousal),
        body_h=0.0,
    )
    n = int(rng.choice(6, p=[0.06, 0.14, 0.40, 0.18, 0.12, 0.10]))
    _place_agents(scene, n, rng)
    _choose_talk(scene, rng)
    _choose_box(scene, rng)
    return scene


def _place_agents(scene: Scene, n: int, rng: np.random.Generator) -> None:
    side = min(scene.width, scene.height)
    scale = float(np.clip(1.0 - 0.4 * scene.expanse + rng.normal(0, 0.08), 0.6, 1.0))
    body_h = 0.45 * scene.height * scale

    def usable(bh: float) -> float:  # span available to agent centres (centre square, margins)
        return side - 2 * (0.3 * bh + 2)

    # Crowds must fit side by side without heavy overlap: shrink agents if needed.
    while n >= 2 and usable(body_h) / (n - 1) < 0.6 * body_h and body_h > 0.2 * scene.height:
        body_h *= 0.92
    scene.body_h = body_h
    if n == 0:
        return
    left_edge = (scene.width - side) / 2 + 0.3 * body_h + 2
    span = usable(body_h)
    if n == 1:
        xs = [left_edge + rng.uniform(0, span)]
    else:
        wanted_sep = body_h * (0.5 + 1.5 * rng.uniform(0, 1))
        sep = min(wanted_sep, span / (n - 1))
        start = left_edge + rng.uniform(0, max(span - sep * (n - 1), 0.0))
        # Unevenly spaced, as people stand.
        xs = [start + i * sep + rng.uniform(-0.1, 0.1) * body_h for i in range(n)]
    scene.xs = [float(x) for x in xs]
    scene.feet_y = [scene.height * rng.uniform(0.80, 0.92) for _ in range(n)]
    scene.headings = [int(rng.choice([-1, 1])) for _ in range(n)]
    alone_phase = rng.uniform(0, 2 * math.pi)  # where a lone agent's movement starts
    if n < 2:
        scene.phases = [alone_phase]
        return
    # Joint action levels (JOINT_LEVELS): every other agent is 0, 1/6, 1/3 or 1/2 of a cycle
    # ahead of its neighbours; the even-numbered ones start halfway up and rising (phase 0).
    scene.joint = float(rng.choice(list(JOINT_LEVELS)))
    scene.phases = [2 * math.pi * JOINT_LEVELS[scene.joint] * (i % 2) for i in range(n)]


def _choose_talk(scene: Scene, rng: np.random.Generator) -> None:
    n, duration = scene.n, scene.num_frames / scene.fps
    if n == 0:
        return
    modes, p = (
        (["none", "monologue", "dialogue"], [0.35, 0.25, 0.40]) if n >= 2 else (["none", "monologue"], [0.6, 0.4])
    )
    scene.talk_mode = str(rng.choice(modes, p=p))
    if scene.talk_mode == "none":
        return
    k = 1 if scene.talk_mode == "monologue" else int(rng.integers(2, min(n, 4) + 1))
    first = int(rng.integers(0, n - k + 1))
    scene.talkers = list(range(first, first + k))
    # Every talker must speak at least once per clip, and each turn must last about
    # two sampled frames even when only 8 frames are taken from the whole clip.
    turns = max(k, 2) * rng.uniform(1.0, 1.6)
    scene.turn_s = max(duration / turns, 0.3)


def _choose_box(scene: Scene, rng: np.random.Generator) -> None:
    mode = str(rng.choice(["none", "idle", "carried"], p=[0.3, 0.3, 0.4] if scene.n else [0.5, 0.5, 0.0]))
    # The model sees the centre square: a box must stay inside it, or the label would be unseen.
    side = min(scene.width, scene.height)
    half_box = 0.5 * BOX_SIDE * scene.body_h + 1
    lo, hi = (scene.width - side) / 2 + half_box + 2, (scene.width + side) / 2 - half_box - 2
    if mode == "carried":
        # Only an agent whose front has room for the box carries it.
        offset = 0.2 * scene.body_h + half_box
        room = [i for i, (x, h) in enumerate(zip(scene.xs, scene.headings)) if lo <= x + h * offset <= hi]
        if room:
            scene.box_owner = int(room[rng.integers(len(room))])
        else:
            mode = "none"
    elif mode == "idle":
        # On the ground, clear of every agent; if the crowd leaves no room, no box.
        reach = 0.2 * scene.body_h + half_box + 2  # agent half width + box half width + a gap
        free = [x for x in np.linspace(lo, hi, 24) if all(abs(x - a) > reach for a in scene.xs)]
        if not free:
            mode = "none"
        else:
            scene.box_x = float(free[rng.integers(len(free))])
    scene.box_mode = mode


# ---------------------------------------------------------------- drawing
def _ellipse(img: np.ndarray, cy: float, cx: float, ry: float, rx: float, colour, outline: float = 0.0) -> None:
    """Fill an ellipse; with ``outline`` > 0 first a black rim that many pixels wide."""
    h, w = img.shape[:2]
    for grow, col in ((outline, BLACK), (0.0, colour)) if outline else ((0.0, colour),):
        ay, ax = ry + grow, rx + grow
        y0, y1 = max(int(cy - ay), 0), min(int(cy + ay) + 2, h)
        x0, x1 = max(int(cx - ax), 0), min(int(cx + ax) + 2, w)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = (np.arange(y0, y1)[:, None] + 0.5 - cy) / ay
        xx = (np.arange(x0, x1)[None, :] + 0.5 - cx) / ax
        img[y0:y1, x0:x1][yy * yy + xx * xx <= 1.0] = col


def _head(img: np.ndarray, cy: float, cx: float, r: float, heading: int) -> None:
    """Round head: white back half, black front half (the agent's visible front)."""
    _ellipse(img, cy, cx, r, r, WHITE, outline=1.0)
    h, w = img.shape[:2]
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, h)
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, w)
    yy = np.arange(y0, y1)[:, None] + 0.5 - cy
    xx = np.arange(x0, x1)[None, :] + 0.5 - cx
    front = (yy * yy + xx * xx <= r * r) & (xx * heading > 0)
    img[y0:y1, x0:x1][front] = BLACK


def _rect(img: np.ndarray, y0: float, y1: float, x0: float, x1: float, colour) -> None:
    h, w = img.shape[:2]
    img[max(int(y0), 0) : min(int(y1), h), max(int(x0), 0) : min(int(x1), w)] = colour


def _background(scene: Scene) -> np.ndarray:
    h, w = scene.height, scene.width
    img = np.zeros((h, w, 3), np.uint8)
    horizon = int(round(scene.horizon_y))
    light = mood_colour(scene.valence).round().astype(np.uint8)
    if scene.location == "Indoor":
        img[:horizon] = scene.wall
        img[: max(2, int(0.1 * h))] = CEILING
        lamp_x = w * 0.3
        _rect(img, 0.1 * h, 0.16 * h, lamp_x - 0.5, lamp_x + 0.5, BLACK)
        _ellipse(img, 0.16 * h + 3, lamp_x, 0.05 * h, 0.07 * h, light, outline=1.0)
    else:  # Outdoor and patio share the sky; patio gets an indoor floor
        t = np.arange(horizon)[:, None] / max(horizon - 1, 1)
        img[:horizon] = (SKY_TOP + (SKY_HORIZON - SKY_TOP) * t).round().astype(np.uint8)[:, None, :]
        _ellipse(img, 0.1 * h + 2, w * 0.8, 0.07 * h, 0.07 * h, light)
    img[horizon:] = scene.floor
    stripe = tuple(int(c * 0.7) for c in scene.floor)
    for k in range(1, scene.stripes + 1):  # perspective: stripes bunch up toward the horizon
        y = horizon + (h - horizon) * (k / (scene.stripes + 1)) ** 1.6
        img[int(y)] = stripe
    img[horizon] = BLACK if scene.location == "Indoor" else stripe
    return img


def _render_frame(scene: Scene, background: np.ndarray, t: float) -> np.ndarray:
    img = background.copy()
    bh = scene.body_h
    body = mood_colour(scene.valence).round().astype(np.uint8)
    box_side = BOX_SIDE * bh
    if scene.box_mode == "idle":
        gy = scene.height * 0.93
        _box(img, gy - box_side / 2, scene.box_x, box_side)
    speaker = _current_speaker(scene, t)
    on_top = []  # a carried box and the speech bubble: drawn last, so a neighbour never hides them
    for i, (x, feet, heading, phase) in enumerate(zip(scene.xs, scene.feet_y, scene.headings, scene.phases)):
        wave = math.sin(2 * math.pi * scene.move_freq * t + phase)
        y = feet - scene.move_amp * (0.5 + 0.5 * wave)  # bobbing: feet - amp at the top
        _ellipse(img, y - 0.3 * bh, x, 0.3 * bh, 0.2 * bh, body, outline=1.0)
        _head(img, y - 0.78 * bh, x, HEAD_RADIUS * bh, heading)
        if scene.box_mode == "carried" and i == scene.box_owner:
            on_top.append(
                lambda x=x, y=y, heading=heading: _box(
                    img, y - 0.4 * bh, x + heading * (0.2 * bh + box_side / 2 + 1), box_side
                )
            )
        if i == speaker:
            on_top.append(
                lambda x=x, y=y, heading=heading: _ellipse(
                    img, y - 1.22 * bh, x + heading * 0.25 * bh, 0.2 * bh, 0.28 * bh, WHITE, outline=1.5
                )
            )
    for draw in on_top:
        draw()
    if scene.fog:
        img = (img * (1 - scene.fog) + 150 * scene.fog).round().astype(np.uint8)
    return img


def _box(img: np.ndarray, cy: float, cx: float, side: float) -> None:
    """The magenta box with a black rim, centred at (cy, cx)."""
    _rect(img, cy - side / 2 - 1, cy + side / 2 + 1, cx - side / 2 - 1, cx + side / 2 + 1, BLACK)
    _rect(img, cy - side / 2, cy + side / 2, cx - side / 2, cx + side / 2, BOX)


def _current_speaker(scene: Scene, t: float) -> int:
    """Index of the agent whose bubble shows at time t, or -1."""
    if scene.talk_mode == "none":
        return -1
    turn = int(t // scene.turn_s)
    if scene.talk_mode == "monologue":
        return scene.talkers[0] if turn % 2 == 0 else -1  # pulses on and off
    return scene.talkers[turn % len(scene.talkers)]


def render_demo_clip(seed: int, index: int, static: bool = False) -> tuple[list[np.ndarray], int, dict[str, object]]:
    """Frames (list of (H, W, 3) uint8), fps and the annotation row of demo clip ``index``.

    ``static``: every frame is the clip's first frame (same scene, length and labels, no
    motion) -- the control that shows which labels a model reads from motion.
    """
    rng = np.random.default_rng([seed, index])
    scene = _sample_scene(rng)
    background = _background(scene)
    if static:
        frames = [_render_frame(scene, background, 0.0)] * scene.num_frames
    else:
        frames = [_render_frame(scene, background, k / scene.fps) for k in range(scene.num_frames)]
    return frames, scene.fps, _annotation_row(scene, rng)


def demo_scene(seed: int, index: int) -> Scene:
    """What demo clip ``index`` shows (agents, positions, movements...), without rendering."""
    return _sample_scene(np.random.default_rng([seed, index]))


def demo_annotation(seed: int, index: int) -> dict[str, object]:
    """The annotation row of demo clip ``index`` without rendering it (same draws)."""
    rng = np.random.default_rng([seed, index])
    return _annotation_row(_sample_scene(rng), rng)


# ---------------------------------------------------------------- labels
def _scores(scene: Scene) -> tuple[dict[str, float], dict[str, float], dict[str, str]]:
    """True scores, confidences before noise, and explanations."""
    n, bh = scene.n, scene.body_h
    s: dict[str, float] = {}
    c: dict[str, float] = {}
    e: dict[str, str] = {}
    gaps = np.diff(scene.xs) / bh if n >= 2 else np.array([])

    if n >= 2:
        mean_gap = float(gaps.mean())
        s["distance"] = _grid((mean_gap - 0.5) / 1.5)
        c["distance"] = {2: 0.9, 3: 0.8}.get(n, 0.7)
        e["distance"] = f"Neighbouring agents stand {mean_gap:.1f} body heights apart on average."
    else:
        s["distance"], c["distance"] = math.nan, 0.0
        e["distance"] = f"{n} agent(s): no distance between people to judge."

    s["object"] = {"none": 0.0, "idle": 0.3, "carried": 0.9}[scene.box_mode]
    c["object"] = {"none": 0.9, "idle": 0.7, "carried": 0.9}[scene.box_mode]
    e["object"] = {
        "none": "No object is visible.",
        "idle": "A magenta box lies on the ground; nobody handles it.",
        "carried": "An agent carries a magenta box in front of it.",
    }[scene.box_mode]

    s["expanse"], c["expanse"] = scene.expanse, 0.8
    e["expanse"] = (
        f"The horizon is at {scene.horizon_y / scene.height:.0%} of the height with "
        f"{scene.stripes} ground stripes: {'a wide' if scene.expanse >= 0.5 else 'a confined'} space."
    )

    if n >= 2:
        pair_scores = [0.5 * (scene.headings[i] == 1) + 0.5 * (scene.headings[i + 1] == -1) for i in range(n - 1)]
        s["facingness"] = _grid(float(np.mean(pair_scores)))
        c["facingness"] = {2: 0.9, 3: 0.8}.get(n, 0.6)
        e["facingness"] = f"Faces point at the neighbour in {sum(pair_scores) * 2:.0f} of {2 * (n - 1)} cases."
    else:
        s["facingness"], c["facingness"] = 0.0, 0.8
        e["facingness"] = "Nobody to face."

    if scene.talk_mode == "none":
        s["communicating"], c["communicating"] = 0.0, 0.8
        e["communicating"] = "No speech bubbles: nobody talks."
    elif scene.talk_mode == "monologue":
        s["communicating"], c["communicating"] = 0.3, 0.6
        e["communicating"] = "One agent talks on and off; nobody answers."
    else:
        k = len(scene.talkers)
        s["communicating"], c["communicating"] = _grid(0.7 + 0.1 * (k - 1)), 0.9
        e["communicating"] = f"{k} agents take turns talking."

    if n >= 2:
        s["joint"] = scene.joint
        c["joint"] = 0.5 + 0.4 * scene.arousal  # slow, small motion is hard to judge
        offset = JOINT_LEVELS[scene.joint]
        e["joint"] = f"Neighbours bob {offset:.2f} cycle apart." if offset else "All bob in step."
    else:
        s["joint"], c["joint"] = math.nan, 0.0
        e["joint"] = "No joint action possible with fewer than two agents."

    s["valence"] = scene.valence
    c["valence"] = 0.95 - 0.8 * (0.5 - abs(scene.valence - 0.5))  # grey is ambiguous
    mood = "warm" if scene.valence > 0.5 else "cold" if scene.valence < 0.5 else "neutral"
    e["valence"] = f"Mood colour {mood} ({scene.valence:.1f})."

    if n:
        s["arousal"], c["arousal"] = scene.arousal, 0.7 + 0.4 * abs(scene.arousal - 0.5)
        e["arousal"] = f"Agents move at {scene.move_freq:.2f} Hz by {scene.move_amp / scene.height:.0%} of the height."
    else:
        s["arousal"], c["arousal"] = 0.0, 0.8
        e["arousal"] = "Nothing moves."
    return s, c, e


def _annotation_row(scene: Scene, rng: np.random.Generator) -> dict[str, object]:
    scores, confs, texts = _scores(scene)
    penalty = 0.2 if scene.fog else 0.0
    row: dict[str, object] = {}
    for f in FEATURES:
        score = scores[f]
        if not math.isnan(score) and rng.random() < NAN_RATES[f]:
            score = math.nan
        if math.isnan(score):
            conf = 0.0
        else:
            conf = _grid(max(confs[f] - penalty + rng.choice([-0.1, 0.0, 0.0, 0.1]), 0.1))
        row[f"{f}_score"], row[f"{f}_confidence"] = score, conf

    n = scene.n
    row["peoplecount"] = str(n) if n <= 3 else "many"
    overlap = n >= 2 and float(np.min(np.diff(scene.xs))) < 0.55 * scene.body_h
    row["peoplecount_certain"] = n >= 4 or not (scene.fog or overlap)

    if scene.location == "patio":
        row["location_score"], row["location_confidence"] = "", 0.3
        location_text = "Sky above a floor with no walls: indoor or outdoor is unclear."
    elif rng.random() < NAN_RATES["location"]:
        row["location_score"], row["location_confidence"] = "", 0.0
        location_text = "Not rated."
    else:
        row["location_score"] = scene.location
        row["location_confidence"] = _grid(0.9 - penalty + rng.choice([-0.1, 0.0, 0.1]))
        location_text = (
            "Ceiling band, wall, floor and a hanging lamp: a room."
            if scene.location == "Indoor"
            else "Open sky with the sun over the ground: outdoors."
        )
    for f in FEATURES:
        row[f"{f}_explanation"] = texts[f]
    row["location_explanation"] = location_text
    row["scene_analysis_explanation"] = (
        f"{scene.location} scene, {n} agent(s), box {scene.box_mode}, talk {scene.talk_mode}"
        + (", foggy." if scene.fog else ".")
    )
    return row


# ---------------------------------------------------------------- files
def _format_cell(value: object) -> object:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.1f}"
    return value


def clip_name(index: int) -> str:
    return f"demo_{index:05d}.mp4"


def demo_validation_names(num_videos: int, val_videos: int) -> list[str]:
    """Names of the ``val_videos`` clips rendered after the first ``num_videos`` (in a dataset of
    ``num_videos + val_videos`` clips) that a demo run validates on only: clips of the same seed and
    distribution, so adding them leaves the first ``num_videos`` (and their split) as they were."""
    return [clip_name(i) for i in range(num_videos, num_videos + val_videos)]


def generate_demo_dataset(
    out_dir: str | os.PathLike,
    num_videos: int = DEFAULT_NUM_VIDEOS,
    seed: int = 0,
    static: bool = False,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Render the dataset into ``out_dir`` (created; not atomic — see ensure_demo_dataset);
    ``static``: see render_demo_clip; ``progress``: a progress bar on stderr.

    Returns (videos_dir, annotations_csv).  The marker file is written last.
    """
    if num_videos <= 0:
        raise ValueError(f"num_videos must be positive, got {num_videos}")
    out = Path(out_dir)
    videos = out / "videos"
    rows = []
    bar = progress_bar(total=num_videos, unit="clip", desc="rendering demo clips", disable=not progress)
    for index in range(num_videos):
        bar.update()
        frames, fps, row = render_demo_clip(seed, index, static)
        shard = videos / f"{index // CLIPS_PER_SHARD:03d}"
        shard.mkdir(parents=True, exist_ok=True)
        write_video(shard / clip_name(index), frames, fps, options=X264_OPTIONS, container_format="mp4")
        rows.append({"video_name": clip_name(index), **row})
    bar.close()
    csv_path = out / "annotations.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _format_cell(row[k]) for k in COLUMNS})
    (out / MARKER_NAME).write_text(json.dumps(_marker(num_videos, seed, static), indent=1) + "\n")
    return videos, csv_path


def _marker(num_videos: int, seed: int, static: bool) -> dict[str, object]:
    return {
        "generator": "datasets.demo",
        "version": GENERATOR_VERSION,
        "num_videos": num_videos,
        "seed": seed,
        "static": static,
    }


def _is_complete(out: Path, num_videos: int, seed: int, static: bool) -> bool:
    try:
        marker = json.loads((out / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (
        marker == _marker(num_videos, seed, static)
        and (out / "annotations.csv").is_file()
        and (out / "videos").is_dir()
    )


def _is_demo_dir(out: Path) -> bool:
    """True if ``out`` holds only what the generator and ``ensure_demo_frame_cache`` write (safe
    to replace)."""
    own = {"videos", "annotations.csv", MARKER_NAME}
    return all(name in own or name.startswith(FRAME_CACHE_PREFIX) for name in os.listdir(out))


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits while another process generates
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_demo_dataset(
    out_dir: str | os.PathLike,
    num_videos: int = DEFAULT_NUM_VIDEOS,
    seed: int = 0,
    *,
    force: bool = False,
    static: bool = False,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Return (videos_dir, annotations_csv) of a complete demo dataset in ``out_dir``.

    Reuses an existing one whose marker records the same parameters (and generator
    version); otherwise renders into a temporary sibling folder and renames it into place,
    so a reader never sees a half-written dataset.  Concurrent callers (e.g. two ranks on
    one machine) serialize on a lock file next to ``out_dir``: one generates, the others
    wait and then reuse it.  A non-empty ``out_dir`` that is not a demo dataset is never
    deleted (error instead).  ``static``, ``progress``: see generate_demo_dataset.
    """
    out = Path(out_dir).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    result = (out / "videos", out / "annotations.csv")
    with _exclusive_lock(out.parent / f".{out.name}.lock"):
        if not force and _is_complete(out, num_videos, seed, static):
            return result
        if out.exists() and not _is_demo_dir(out):
            raise FileExistsError(
                f"{out} exists and is not a demo dataset (found {sorted(os.listdir(out))[:5]}); "
                "choose another --out directory"
            )
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            generate_demo_dataset(tmp, num_videos, seed, static, progress)
            fsync_tree(tmp)  # every clip on disk before the folder (and its completion marker) appears
            if out.exists():
                stale = out.parent / f".{out.name}.stale-{uuid.uuid4().hex}"
                os.rename(out, stale)
                shutil.rmtree(stale)
            os.rename(tmp, out)
            fsync_dir(out.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return result


def demo_frame_cache_dir(out_dir: str | os.PathLike, frames: int, size: int) -> Path:
    """Where ``ensure_demo_frame_cache`` keeps the cache that serves ``frames`` x ``size`` training:
    inside the demo folder, so it goes with the clips whenever they are re-rendered.  Stored at
    ``size`` but at least ``FRAME_CACHE_MIN_SIZE``."""
    return Path(out_dir).absolute() / f"{FRAME_CACHE_PREFIX}{frames}x{max(size, FRAME_CACHE_MIN_SIZE)}"


def ensure_demo_frame_cache(out_dir: str | os.PathLike, frames: int, size: int) -> Path:
    """A raw frame cache (:func:`datasets.prepare.prepare_cache`) of the complete demo dataset in
    ``out_dir``, built once and reused after; its path.

    Training from it spares decoding the same small clips every epoch
    (``benchmarks/demo_throughput.py`` compares the two).  It stores ``frames`` frames per clip
    (the centre frame of each segment, so training draws no temporal jitter) at
    ``demo_frame_cache_dir``'s size.  Holds the demo's lock, so a concurrent re-render cannot
    swap the clips under it; a clip that does not go into the cache is an error, not a skip."""
    from .prepare import prepare_cache, read_video_names  # the cache needs torch; the generator does not

    out = Path(out_dir).absolute()
    root = demo_frame_cache_dir(out, frames, size)
    with _exclusive_lock(out.parent / f".{out.name}.lock"):
        if not (out / MARKER_NAME).is_file():
            raise FileNotFoundError(f"{out} is not a complete demo dataset (no {MARKER_NAME}); render it first")
        summary = prepare_cache(
            root,
            read_video_names(out / "annotations.csv"),
            str(out / "videos"),
            frames=frames,
            stored_size=max(size, FRAME_CACHE_MIN_SIZE),
            workers=0,  # in this process: 600 small clips take seconds
            progress=False,
            log=lambda message: None,
            provenance={"demo": json.loads((out / MARKER_NAME).read_text())},
        )
    lost = sum(summary["counts"][status] for status in ("skipped", "failed", "missing"))  # "short" is stored
    if lost:
        raise RuntimeError(f"{root}: {lost} demo clip(s) did not go into the frame cache; see {summary['failures']}")
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the synthetic demo dataset (mp4 clips + annotations.csv).")
    parser.add_argument("--out", required=True, help="output folder (created; replaced only if it is a demo dataset)")
    parser.add_argument("--num-videos", type=int, default=DEFAULT_NUM_VIDEOS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even if a matching dataset exists")
    parser.add_argument(
        "--static",
        action="store_true",
        help="every clip shows its first frame throughout (same labels): the no-motion control",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    videos, csv_path = ensure_demo_dataset(
        args.out, args.num_videos, args.seed, force=args.force, static=args.static, progress=True
    )
    elapsed = time.perf_counter() - start
    kind = ", static" if args.static else ""
    print(f"demo dataset: {videos} and {csv_path} ({args.num_videos} clips, seed {args.seed}{kind}, {elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
