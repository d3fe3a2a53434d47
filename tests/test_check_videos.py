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


def test_web_faults_are_reported_as_ok_partial_or_skipped(web_faults, capsys):
    assert main([str(web_faults), "--frames", "8", "--size", "32"]) == 0  # skips are not failures
    lines = {
        line.split()[1].rsplit("/", 1)[-1].rstrip(":"): line
        for line in capsys.readouterr().out.splitlines()
        if line.split()[0] in ("ok", "partial", "SKIPPED", "FAILED")
    }
    assert lines["over_count.avi"].startswith("ok ") and "30 frames" in lines["over_count.avi"]
    assert lines["over_count.avi"].endswith("[header declares 444 frames, the file holds 30]")
    assert lines["under_count.avi"].endswith("[header declares 12 frames, the file holds 30]")
    assert lines["partial.mp4"].startswith("partial ") and "[partial file (" in lines["partial.mp4"]
    assert ": 32x48, " in lines["portrait.mp4"] and "[turned upright (90 degrees" in lines["portrait.mp4"]
    assert lines["vfr.mp4"].endswith("[variable frame rate: frames chosen by time]")
    assert lines["long.mp4"].startswith("SKIPPED ") and "longer than 30 s" in lines["long.mp4"]
    assert lines["huge.mp4"].startswith("SKIPPED ") and "3840x2160" in lines["huge.mp4"]


def test_policy_flags_change_what_is_skipped(web_faults, capsys):
    args = [str(web_faults / n) for n in ("partial.mp4", "long.mp4", "over_count.avi")]
    assert main([*args, "--frames", "4", "--size", "32", "--partial-videos", "skip", "--max-video-seconds", "60"]) == 0
    out = capsys.readouterr().out
    assert "SKIPPED" in out and "partial.mp4: partial file" in out and "ok " + args[1] in out
    assert "2 of 3 videos decoded (0 partial, used); 1 skipped; 0 failed" in out
