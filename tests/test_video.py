"""Decoding: frame choice, one-pass correctness, odd sizes/rates/formats, broken files."""

import av
import numpy as np
import pytest

from datasets.decode_policy import DecodePolicy, PartialVideoError
from datasets.video import decode_clip, probe_video, sample_clip_indices, write_video


def numbered_frames(count, height, width, seed=0):
    """Random-texture frames, different from each other, so a wrong frame is caught."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def reference_decode(path):
    """Every frame, decoded the plain way (no early stop, no choice)."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def h264_clip(tmp_path_factory):
    """A 3 s, 30 fps, 96x64 H.264 mp4 (MiT-like, but tiny)."""
    path = tmp_path_factory.mktemp("h264") / "clip.mp4"
    write_video(path, numbered_frames(90, 64, 96), 30)
    return path


# ----------------------------------------------------------------- indices
def test_centre_indices_are_equispaced_segment_centres():
    assert sample_clip_indices(160, 16).tolist() == list(range(5, 160, 10))
    assert sample_clip_indices(90, 3).tolist() == [15, 45, 75]


def test_fewer_frames_than_requested_repeat_in_order():
    idx = sample_clip_indices(5, 16)
    assert len(idx) == 16 and set(idx.tolist()) == {0, 1, 2, 3, 4}
    assert np.all(np.diff(idx) >= 0)
    assert sample_clip_indices(1, 4).tolist() == [0, 0, 0, 0]


def test_jitter_stays_in_its_segment_and_is_deterministic_per_seed():
    num_total, num_frames = 100, 8
    draws = [sample_clip_indices(num_total, num_frames, np.random.default_rng([7, e, 3])) for e in range(20)]
    for idx in draws:
        for segment, i in enumerate(idx):
            assert np.floor(segment * num_total / num_frames) <= i < (segment + 1) * num_total / num_frames
    again = sample_clip_indices(num_total, num_frames, np.random.default_rng([7, 0, 3]))
    assert again.tolist() == draws[0].tolist()
    assert len({tuple(d.tolist()) for d in draws}) > 10  # epochs really differ


@pytest.mark.parametrize("bad", [0, -3])
def test_empty_clip_has_no_indices(bad):
    with pytest.raises(ValueError, match="frames"):
        sample_clip_indices(bad, 16)


# ----------------------------------------------------------------- decoding
def test_decode_h264_shape_info_and_centre_frames(h264_clip):
    frames, info = decode_clip(h264_clip, 16)
    assert frames.shape == (16, 64, 96, 3) and frames.dtype == np.uint8
    assert info["total_frames"] == 90 and info["fps"] == pytest.approx(30)
    assert (info["height"], info["width"]) == (64, 96)
    assert info["indices"] == sample_clip_indices(90, 16).tolist() and info["passes"] == 1
    reference = reference_decode(h264_clip)
    for frame, index in zip(frames, info["indices"]):
        np.testing.assert_array_equal(frame, reference[index])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_pass_with_jitter_equals_reference_decode(h264_clip, seed):
    frames, info = decode_clip(h264_clip, 16, np.random.default_rng(seed), threads=2)
    assert info["indices"] == sample_clip_indices(90, 16, np.random.default_rng(seed)).tolist()
    reference = reference_decode(h264_clip)
    np.testing.assert_array_equal(frames, np.stack([reference[i] for i in info["indices"]]))


def test_odd_size_lossless_without_frame_count(tmp_path):
    # yuv420p H.264 needs even sizes; odd sizes come from other codecs/pixel formats.
    # Matroska does not store a frame count, so this also takes the collect-then-choose path.
    source = numbered_frames(20, 61, 97)
    path = tmp_path / "odd.mkv"
    write_video(path, source, 12, codec="ffv1", pix_fmt="bgr0")
    frames, info = decode_clip(path, 16)
    assert info["declared_frames"] == 0 and info["total_frames"] == 20
    assert frames.shape == (16, 61, 97, 3)
    np.testing.assert_array_equal(frames, source[sample_clip_indices(20, 16)])


def test_png_in_mov_is_exact_and_has_count(tmp_path):
    source = numbered_frames(9, 33, 47, seed=1)
    path = tmp_path / "odd.mov"
    write_video(path, source, 10, codec="png", pix_fmt="rgb24")
    frames, info = decode_clip(path, 4)
    assert info["declared_frames"] == 9 and info["fps"] == pytest.approx(10)
    np.testing.assert_array_equal(frames, source[sample_clip_indices(9, 4)])


@pytest.mark.parametrize("fps", [8, 25, 60])
def test_frame_rates(tmp_path, fps):
    path = tmp_path / f"r{fps}.mp4"
    write_video(path, numbered_frames(fps, 32, 48), fps)  # one second each
    frames, info = decode_clip(path, 8)
    assert frames.shape == (8, 32, 48, 3)
    assert info["fps"] == pytest.approx(fps) and info["total_frames"] == fps
    assert probe_video(path)["declared_frames"] == fps


def test_other_pixel_format_converts_to_rgb(tmp_path):
    path = tmp_path / "gray.mkv"
    write_video(path, numbered_frames(6, 40, 40), 10, codec="ffv1", pix_fmt="gray")
    frames, info = decode_clip(path, 4)
    assert info["pix_fmt"] == "gray" and frames.shape == (4, 40, 40, 3)
    # gray -> rgb24 replicates the one channel
    np.testing.assert_array_equal(frames[..., 0], frames[..., 2])


def test_short_clip_repeats_frames(tmp_path):
    source = numbered_frames(5, 32, 32)
    path = tmp_path / "short.mkv"
    write_video(path, source, 10, codec="ffv1", pix_fmt="bgr0")
    frames, info = decode_clip(path, 16)
    assert frames.shape[0] == 16 and info["total_frames"] == 5
    np.testing.assert_array_equal(frames, source[sample_clip_indices(5, 16)])


# ----------------------------------------------------------------- broken files
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        decode_clip(tmp_path / "nope.mp4", 16)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(av.error.FFmpegError):
        decode_clip(path, 16)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(av.error.FFmpegError):
        decode_clip(path, 16)


def write_mp4_with_index(path, faststart, count=30):
    """H.264 mp4; with faststart the index (and declared frame count) precedes the data."""
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        for frame in numbered_frames(count, 32, 48):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def test_truncated_file_without_its_index_cannot_be_read(tmp_path):
    # PyAV writes the index (moov) at the end unless faststart: cut in half, nothing is left to read.
    data = write_mp4_with_index(tmp_path / "whole.mp4", faststart=False)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(av.error.InvalidDataError, match="cut.mp4"):
        decode_clip(cut, 16)


def frames_by_pts(path):
    with av.open(str(path)) as container:
        return {f.pts: f.to_ndarray(format="rgb24") for f in container.decode(video=0)}


def test_truncated_file_with_its_index_first_is_partial(tmp_path):
    # With the index first (faststart), a download cut in half keeps the frames before the cut:
    # under the default policy they are used and the file is reported as partial; under
    # partial="skip" it is a counted skip.  (Before, this raised "truncated".)
    data = write_mp4_with_index(tmp_path / "whole.mp4", faststart=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with av.open(str(cut)) as container:  # the packets the cut file still holds in full
        complete = sorted(p.pts for p in container.demux(video=0) if p.size and not p.is_corrupt)
    assert 5 < len(complete) < 30
    frames, info = decode_clip(cut, 16)
    assert info["partial"] and "cut short" in info["partial"] and "index lists 30" in info["partial"]
    assert info["total_frames"] == len(complete) and info["declared_frames"] == 30
    assert info["notes"][0].startswith("partial file")
    whole = frames_by_pts(tmp_path / "whole.mp4")  # the same frames as in the complete file
    expected = [whole[complete[i]] for i in sample_clip_indices(len(complete), 16)]
    np.testing.assert_array_equal(frames, np.stack(expected))
    with pytest.raises(PartialVideoError, match="partial file .*cut short.*--partial-videos skip"):
        decode_clip(cut, 16, policy=DecodePolicy(partial="skip"))


def test_file_cut_between_packets_is_partial_by_its_index(tmp_path):
    # The last few frames missing, cut exactly between packets (no packet is damaged): the
    # header still says 30 frames and the MP4 index lists 30 packets, the file holds fewer.
    # The clip is chosen from the frames that really exist, in one pass.
    whole = tmp_path / "whole.mp4"
    data = write_mp4_with_index(whole, faststart=True)
    with av.open(str(whole)) as container:
        positions = [p.pos for p in container.demux(video=0) if p.pos is not None]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: positions[26]])
    reference = reference_decode(cut)
    assert len(reference) == 26
    frames, info = decode_clip(cut, 16, threads=1)
    assert info["declared_frames"] == 30 and info["total_frames"] == 26 and info["passes"] == 1
    assert info["partial"] == "the container's index lists 30 packets, the file holds 26"
    np.testing.assert_array_equal(frames, np.stack([reference[i] for i in sample_clip_indices(26, 16)]))


def test_file_without_frames(tmp_path):
    path = tmp_path / "noframes.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()
    with pytest.raises((av.error.FFmpegError, ValueError)):
        decode_clip(path, 16)
