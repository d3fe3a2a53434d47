"""Generated files with the faults of real web footage: a header frame count that lies, a cut
download, a variable frame rate, a display matrix, frames too large, a stream too long.

Each writer makes a tiny file with PyAV (libx264 unless said otherwise) and, where PyAV cannot
write the fault, patches the container's bytes.  Frames are random textures, so a wrong frame is
always caught by an exact comparison.
"""

import struct
from fractions import Fraction

import av
import numpy as np
from fixture_files import texture

from datasets.video import write_video


def reference_frames(path):
    """Every frame the file holds, decoded the plain way (all of them, in order, as RGB)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def write_avi_declaring(path, frames, fps, declared):
    """An AVI of ``frames`` whose header states ``declared`` frames (avih, strh and the OpenDML
    dmlh count are all patched, as a wrong count in a real file would be)."""
    write_video(path, frames, fps)
    data = bytearray(path.read_bytes())
    for tag, offset in ((b"avih", 16), (b"strh", 32), (b"dmlh", 0)):
        at = data.find(tag)
        assert at >= 0, f"{tag} not in {path}"
        struct.pack_into("<I", data, at + 8 + offset, declared)
    path.write_bytes(bytes(data))
    return path


def write_partial_mp4(path, frames, fps, keep=0.5):
    """A download that stopped part-way: an mp4 with its index first (faststart), its data cut
    at ``keep`` of the bytes (in the middle of a packet)."""
    whole = path.with_name(path.stem + "-whole.mp4")
    with av.open(str(whole), "w", options={"movflags": "faststart"}) as container:
        _encode(container, frames, fps)
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_vfr(path, frames, times_ms):
    """Frame ``i`` shown from ``times_ms[i]`` milliseconds on (a variable frame rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1000 // int(np.min(np.diff(times_ms))))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for t, image in zip(times_ms, frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = int(t), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_rotated(path, frames, fps, degrees, hflip=False):
    """Frames stored as given, with a display matrix saying: turn ``degrees`` counter-clockwise
    (then mirror left-right with ``hflip``) to show them (as phones record portrait video)."""
    with av.open(str(path), "w") as container:
        _encode(container, frames, fps, rotation=(degrees, hflip))
    return path


def write_flat(path, count, height, width, fps):
    """Plain grey frames: cheap to encode at any size or length."""
    write_video(path, np.full((count, height, width, 3), 128, np.uint8), fps)
    return path


def _encode(container, frames, fps, rotation=None):
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    if rotation is not None:
        stream.set_display_rotation(rotation[0], hflip=rotation[1])
    for image in frames:
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def web_faults(root):
    """One file of each fault under ``root`` (names as in ``FAULTS``)."""
    root.mkdir(parents=True, exist_ok=True)
    write_avi_declaring(root / "over_count.avi", texture(30, 32, 48, 20), 10, declared=444)
    write_avi_declaring(root / "under_count.avi", texture(30, 32, 48, 21), 10, declared=12)
    write_partial_mp4(root / "partial.mp4", texture(30, 32, 48, 22), 10)
    write_vfr(root / "vfr.mp4", texture(55, 32, 48, 23), VFR_TIMES_MS)
    write_rotated(root / "portrait.mp4", texture(12, 32, 48, 24), 10, 90)
    write_flat(root / "long.mp4", 40, 32, 32, 1)  # 40 s at 1 fps: over the 30 s limit
    write_flat(root / "huge.mp4", 2, 2160, 3840, 10)  # 4K: over the 1920 x 1088 pixel limit
    return root


# 1.5 s at 10 fps, then 1 s at 40 fps
VFR_TIMES_MS = [i * 100 for i in range(15)] + [1500 + i * 25 for i in range(40)]

FAULTS = ["over_count.avi", "under_count.avi", "partial.mp4", "vfr.mp4", "portrait.mp4", "long.mp4", "huge.mp4"]
