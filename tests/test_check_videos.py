import numpy as np

from datasets.check_videos import main
from datasets.video import write_video


def test_reports_every_file_and_fails_on_a_corrupt_one(tmp_path, capsys):
    frames = np.random.default_rng(0).integers(0, 255, (12, 48, 64, 3), dtype=np.uint8)
    write_video(tmp_path / "good.mp4", frames, fps=12)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    assert main([str(tmp_path), "--frames", "8", "--size", "32"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "bad.mp4" in out
    assert "good.mp4: 64x48, 12.00 fps, 12 frames" in out and "(3, 8, 32, 32)" in out
    assert "1 of 2 videos decoded" in out


def test_all_good_exits_zero(tmp_path):
    frames = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "a.mp4", frames, fps=10)
    assert main([str(tmp_path / "a.mp4"), "--frames", "16", "--size", "32"]) == 0  # fewer frames than T
