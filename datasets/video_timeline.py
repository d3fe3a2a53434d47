"""Which frames a video really holds, read from its packets before anything is decoded.

Containers state a frame count in their header, and web files lie about it (an AVI declaring
444 frames holds 68).  Reading the packets of the video stream (demuxing, no decoding: a few
milliseconds for a 3 s clip) gives what the file holds: how many frames, their presentation
timestamps, whether its end is missing.  :class:`Timeline` then chooses the frames of a clip:
by index on a constant-rate stream (exactly the indices of ``sample_clip_indices``), by time
on a variable-rate one (equal time segments).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import av
import numpy as np

from .decode_policy import VideoTooLargeError

__all__ = ["PacketScan", "scan_packets", "Timeline", "offsets_to_indices", "partial_reasons"]

# A stream counts as variable-rate when some frame interval differs from the median by more
# than this fraction (plus one tick of rounding): 29.97 fps in milliseconds (33/34 ms) is
# constant, a frame rate that changes or a dropped frame is not.
VFR_TOLERANCE = 0.1
# A stream without a frame count in its header (Matroska, WebM) is partial when its frames
# end this much before the duration the header states.
SHORT_OF_DURATION = 0.05


def offsets_to_indices(num_total: int, offsets: np.ndarray) -> np.ndarray:
    """Segment ``i`` of ``len(offsets)`` equal segments of ``num_total`` frames -> the frame at
    relative position ``offsets[i]`` inside it."""
    num_frames = len(offsets)
    positions = (np.arange(num_frames) + offsets) * (num_total / num_frames)
    return np.minimum(np.floor(positions).astype(np.int64), num_total - 1)


@dataclass
class PacketScan:
    """The video packets of a file, in decode order, and what they say about its frames."""

    packets: list = field(default_factory=list)  # to be decoded (incomplete ones left out)
    frame_pts: list = field(default_factory=list)  # pts of each packet that becomes a frame
    has_pts: bool = True  # every frame packet has a pts (AVI and raw streams may not)
    reordered: bool = False  # some pts is below an earlier packet's: they are presentation times
    frames: int = 0  # packets that become frames (not discarded by an edit list)
    read: int = 0  # packets with data read, discarded ones included
    incomplete: int = 0  # packets cut short by the end of the file
    demux_error: str | None = None  # reading stopped on this error
    last_duration: int = 0  # duration (ticks) of the last packet, 0 if unknown


def scan_packets(container: av.container.InputContainer, stream, max_seconds: float, fps: float) -> PacketScan:
    """Read every video packet of ``stream``; stop with :class:`VideoTooLargeError` once the
    timestamps (or, without them, the packet count at ``fps``) pass ``max_seconds``."""
    scan = PacketScan()
    tick = float(stream.time_base) if stream.time_base else 0.0
    first = highest = None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the end-of-stream marker, or an AVI "dropped frame" placeholder
                continue
            scan.read += 1
            if packet.is_corrupt:  # fewer bytes in the file than the packet's size: the file is cut
                scan.incomplete += 1
                continue
            scan.packets.append(packet)
            if packet.is_discard:  # decoded as a reference but never shown (edit lists)
                continue
            scan.frames += 1
            scan.last_duration = int(packet.duration or 0)
            if packet.pts is None:
                scan.has_pts = False
            else:
                scan.reordered = scan.reordered or (highest is not None and packet.pts < highest)
                scan.frame_pts.append(int(packet.pts))
                first = packet.pts if first is None else min(first, packet.pts)
                highest = packet.pts if highest is None else max(highest, packet.pts)
            seconds = (packet.pts - first) * tick if packet.pts is not None and tick else scan.frames / fps
            if seconds > max_seconds:
                raise VideoTooLargeError(
                    f"longer than {max_seconds:g} s (its frames pass {max_seconds:g} s; limit --max-video-seconds)"
                )
    except av.error.FFmpegError as exc:
        scan.demux_error = f"{type(exc).__name__}: {exc}"
    return scan


@dataclass(frozen=True)
class Timeline:
    """``count`` frames in presentation order, with their timestamps when they are known."""

    count: int
    ticks: np.ndarray | None = None  # increasing presentation timestamps, in stream ticks
    end: int | None = None  # where the last frame ends, in ticks
    tick: float = 0.0  # seconds per tick

    @classmethod
    def from_timestamps(cls, count: int, pts: list | None, last_duration: int, tick: float) -> Timeline:
        """From one timestamp per frame (any order); without usable ones (missing, repeated),
        a timeline of ``count`` frames without times."""
        if not pts or len(pts) != count or not tick:
            return cls(count)
        ticks = np.sort(np.asarray(pts, dtype=np.int64))
        if np.any(np.diff(ticks) <= 0):
            return cls(count)
        steps = np.diff(ticks)
        last = last_duration if last_duration > 0 else (int(np.median(steps)) if len(steps) else 1)
        return cls(count, ticks, int(ticks[-1]) + max(last, 1), tick)

    @property
    def variable_rate(self) -> bool:
        if self.ticks is None or self.count < 3:
            return False
        steps = np.diff(self.ticks)
        median = float(np.median(steps))
        return bool(np.any(np.abs(steps - median) > VFR_TOLERANCE * median + 1))

    @property
    def seconds(self) -> float | None:
        """Media time the frames span (first frame's start to the last one's end)."""
        return None if self.ticks is None else float((self.end - self.ticks[0]) * self.tick)

    def choose(self, offsets: np.ndarray) -> np.ndarray:
        """The frame of each of ``len(offsets)`` equal segments at relative position ``offsets``:
        segments of frames on a constant-rate stream, of time on a variable-rate one."""
        if not self.variable_rate:
            return offsets_to_indices(self.count, offsets)
        start = float(self.ticks[0])
        targets = start + (np.arange(len(offsets)) + offsets) * ((self.end - start) / len(offsets))
        chosen = np.searchsorted(self.ticks, targets, side="right") - 1
        return np.clip(chosen, 0, self.count - 1).astype(np.int64)


def partial_reasons(
    scan: PacketScan, declared: int, indexed: int, header_seconds: float | None, timeline: Timeline
) -> list[str]:
    """Why the file looks cut short (empty if it does not).

    A header count that disagrees with the packets is *not* a reason by itself (web files
    state wrong counts); missing data is: packets cut short, a read error, fewer packets than
    the container's own index lists (MP4), or, for containers that state no frame count
    (Matroska/WebM), frames ending well before the stated duration.
    """
    reasons = []
    if scan.incomplete:
        reasons.append(f"{scan.incomplete} packet(s) cut short by the end of the file")
    if scan.demux_error:
        reasons.append(f"reading stopped after {scan.read} packets: {scan.demux_error}")
    if indexed > scan.read:
        reasons.append(f"the container's index lists {indexed} packets, the file holds {scan.read}")
    if (
        declared <= 0
        and header_seconds
        and timeline.seconds is not None
        and timeline.seconds < (1 - SHORT_OF_DURATION) * header_seconds
    ):
        reasons.append(f"frames end at {timeline.seconds:.2f} s of the {header_seconds:.2f} s the header states")
    return reasons
