"""python -m datasets.prepare: failure report, resume after a kill, refusals, workers, .pt migration."""

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixture_files import texture
from web_video_files import FAULTS, write_partial_mp4

from datasets import prepare
from datasets.cache import CachedClipDataset, FrameCache
from datasets.video import decode_clip, write_video

REPO = Path(__file__).resolve().parents[1]
K, S = 6, 24


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Good clips, a too-short one, and broken files."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    for i in range(6):
        write_video(root / "sub" / f"good_{i}.mp4", texture(12 + i, 32, 48, i), 10)
    write_video(root / "short.mp4", texture(3, 32, 32, 9), 10)  # fewer frames than K: they repeat
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(1).bytes(4000))
    (root / "empty.mp4").write_bytes(b"")
    write_video(root / "whole.mp4", texture(40, 32, 48, 7), 10)
    data = (root / "whole.mp4").read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 3])  # index at the end: cut off, unreadable
    (root / "whole.mp4").unlink()
    write_partial_mp4(root / "partial.mp4", texture(40, 32, 48, 8), 10, keep=0.5)  # index first: partial
    return root


GOOD = [f"good_{i}.mp4" for i in range(6)]
BROKEN = ["corrupt.mp4", "empty.mp4", "truncated.mp4", "missing.mp4"]


def table(path, names):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["video_name", "valence_score"])
        for name in names:
            writer.writerow([name, 0.5])
    return path


def manifest(cache):
    with open(Path(cache) / "manifest.csv", newline="") as fh:
        return {row["video_name"]: row for row in csv.DictReader(fh)}


def clip_bytes(cache):
    """video_name -> its stored bytes, whatever shard/offset it landed in."""
    out = {}
    for name, row in manifest(cache).items():
        if row["status"] in ("ok", "short"):
            with open(Path(cache) / "shards" / row["shard"], "rb") as fh:
                fh.seek(int(row["offset"]))
                out[name] = fh.read(int(row["nbytes"]))
    return out


def run_prepare(*args):
    return prepare.main([*map(str, args), "--no-progress"])


def test_failure_report_for_corrupt_empty_truncated_short_partial_and_missing(videos, tmp_path, capsys):
    out = tmp_path / "cache"
    names = GOOD + ["short.mp4", "partial.mp4"] + BROKEN
    rc = run_prepare(
        "--videos",
        videos,
        "--annotations",
        table(tmp_path / "t.csv", names),
        "--out",
        out,
        "--frames",
        K,
        "--stored-size",
        S,
        "--workers",
        0,
    )
    assert rc == 0
    rows = manifest(out)
    assert set(rows) == set(names)
    assert {n for n, r in rows.items() if r["status"] == "ok"} == set(GOOD)
    good = rows["good_3.mp4"]
    assert good["source"] == str(videos / "sub" / "good_3.mp4")
    assert (good["total_frames"], good["fps"], good["height"], good["width"], good["frames_kept"]) == (
        "15",
        "10.0",
        "32",
        "48",
        str(K),
    )
    assert good["frame_indices"] == " ".join(map(str, decode_clip(videos / "sub" / "good_3.mp4", K)[1]["indices"]))
    assert rows["short.mp4"]["status"] == "short" and "only 3 frames for 6: frames repeat" in rows["short.mp4"]["error"]
    for name in ("corrupt.mp4", "empty.mp4", "truncated.mp4"):
        assert rows[name]["status"] == "failed" and rows[name]["error"] and not rows[name]["shard"], name
    assert "InvalidDataError" in rows["truncated.mp4"]["error"]
    # a download cut in half keeps the frames before the cut: stored, reported as partial
    partial = rows["partial.mp4"]
    assert partial["status"] == "partial" and partial["shard"] and partial["declared_frames"] == "40"
    assert partial["error"].startswith("partial file: ") and "cut short" in partial["error"]
    assert 10 < int(partial["total_frames"]) < 40
    assert rows["missing.mp4"]["status"] == "missing" and "no file for 'missing.mp4'" in rows["missing.mp4"]["error"]
    with open(out / "failures.csv", newline="") as fh:
        failures = {r["video_name"]: r for r in csv.DictReader(fh)}
    assert set(failures) == set(BROKEN) | {"short.mp4", "partial.mp4"}
    assert failures["corrupt.mp4"]["source"].endswith("corrupt.mp4") and failures["corrupt.mp4"]["error"]
    printed = capsys.readouterr().out
    assert "ok 6, short (frames repeated) 1, partial (used) 1, skipped 0, failed 3, missing 1" in printed
    # a short clip is usable and its frames repeat as in the video Dataset; failed ones say why
    ds = CachedClipDataset(out, ["short.mp4", "corrupt.mp4"], {}, num_frames=K, size=S)
    frames, info = decode_clip(videos / "short.mp4", K)
    assert info["indices"] == [0, 0, 1, 1, 2, 2]
    assert torch.equal(ds[0]["video"][:, 0], ds[0]["video"][:, 1])
    assert "failed" in ds[1]["error"] and "corrupt.mp4" in ds[1]["error"]


def test_rerun_with_other_parameters_is_refused(videos, tmp_path, capsys):
    out = tmp_path / "cache"
    t = table(tmp_path / "t.csv", GOOD[:2])
    assert (
        run_prepare(
            "--videos", videos, "--annotations", t, "--out", out, "--frames", K, "--stored-size", S, "--workers", 0
        )
        == 0
    )
    before = clip_bytes(out)
    for extra, what in (
        (["--frames", K + 2, "--stored-size", S], "frames: cache has 6, asked for 8"),
        (["--frames", K, "--stored-size", S + 8], "stored_size: cache has 24, asked for 32"),
    ):
        capsys.readouterr()
        assert run_prepare("--videos", videos, "--annotations", t, "--out", out, "--workers", 0, *extra) == 2
        err = capsys.readouterr().err
        assert what in err and "Use another --out directory" in err
    assert clip_bytes(out) == before  # nothing was touched


def wait_for_lock_release(cache, timeout=30.0):
    import fcntl

    deadline = time.time() + timeout
    with open(Path(cache) / ".prepare.lock", "a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
                return
            except BlockingIOError:
                assert time.time() < deadline, "the killed prepare still holds its lock"
                time.sleep(0.05)


def test_resume_after_a_kill_mid_run(videos, tmp_path):
    """SIGKILL the command (main process and worker) while it is inside a shard, then rerun."""
    out = tmp_path / "cache"
    t = table(tmp_path / "t.csv", GOOD)
    # The 4th video hangs (decoding patched to sleep), so the kill lands deterministically after
    # three committed one-video shards and inside the fourth.
    script = textwrap.dedent(f"""
        import sys, time
        from datasets import prepare
        real = prepare.decode_for_cache
        def slow(path, params, *policy):
            if path.endswith("good_3.mp4"):
                time.sleep(120)
            return real(path, params, *policy)
        prepare.decode_for_cache = slow
        sys.exit(prepare.main(["--videos", {str(videos)!r}, "--annotations", {str(t)!r}, "--out", {str(out)!r},
                               "--frames", "{K}", "--stored-size", "{S}", "--workers", "1", "--shard-size", "1",
                               "--no-progress"]))
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not (out / "shards" / "shard-000002.json").exists() or not list((out / "shards").glob(".shard-000003*")):
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "prepare did not reach the 4th video"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_for_lock_release(out)  # the killed worker shares the lock until the kernel closes its files
    # the interrupted run left a half-written shard under a temporary name, no index for it, no manifest
    assert not (out / "shards" / "shard-000003.json").exists() and not (out / "manifest.csv").exists()
    with pytest.raises(FileNotFoundError, match="has not finished"):
        FrameCache(out)
    done = {
        r["video_name"]
        for i in range(3)
        for r in json.loads((out / "shards" / f"shard-00000{i}.json").read_text())["records"]
    }
    assert done == {"good_0.mp4", "good_1.mp4", "good_2.mp4"}

    summary = prepare.prepare_cache(
        out, GOOD, str(videos), frames=K, stored_size=S, workers=0, progress=False, log=lambda m: None
    )
    assert summary["skipped"] == 3 and summary["processed"] == 3
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")]  # debris removed
    fresh = tmp_path / "fresh"
    prepare.prepare_cache(
        fresh, GOOD, str(videos), frames=K, stored_size=S, workers=0, progress=False, log=lambda m: None
    )
    assert clip_bytes(out) == clip_bytes(fresh)
    assert len(FrameCache(out)) == 6


def test_resume_ignores_leftovers_and_damaged_shards(videos, tmp_path):
    out = tmp_path / "cache"
    kwargs = dict(frames=K, stored_size=S, workers=0, progress=False, log=lambda m: None, shard_size=2)
    prepare.prepare_cache(out, GOOD[:4], str(videos), **kwargs)  # shards 0 and 1, two videos each
    shards = out / "shards"
    # debris of interrupted runs: a temporary data file, a data file whose index was never
    # written, and a committed shard cut short afterwards (its index no longer matches)
    (shards / ".shard-000002.bin.tmp-999").write_bytes(b"x" * 100)
    (shards / "shard-000003.bin").write_bytes(b"y" * 100)
    cut = shards / "shard-000001.bin"
    cut.write_bytes(cut.read_bytes()[:-10])
    logs = []
    summary = prepare.prepare_cache(out, GOOD, str(videos), **{**kwargs, "log": logs.append})
    assert any("damaged shard" in m and "shard-000001.json" in m for m in logs)
    assert any("removed 4 leftover file(s)" in m for m in logs)
    assert summary["skipped"] == 2 and summary["processed"] == 4  # shard 1's two videos are redone
    # shard 0 kept; the damaged one's number is reused by the redo
    assert {p.name for p in shards.iterdir()} == {f"shard-00000{i}.{e}" for i in (0, 1, 2) for e in ("bin", "json")}
    fresh = tmp_path / "fresh"
    prepare.prepare_cache(fresh, GOOD, str(videos), **kwargs)
    assert clip_bytes(out) == clip_bytes(fresh)


def test_worker_pool_writes_the_same_clips_and_resumes_failures(videos, tmp_path):
    names = GOOD + ["corrupt.mp4"]
    inline, pooled = tmp_path / "inline", tmp_path / "pooled"
    prepare.prepare_cache(
        inline, names, str(videos), frames=K, stored_size=S, workers=0, progress=False, log=lambda m: None
    )
    summary = prepare.prepare_cache(
        pooled, names, str(videos), frames=K, stored_size=S, workers=2, shard_size=2, progress=True, log=lambda m: None
    )
    assert summary["counts"] == {"ok": 6, "short": 0, "partial": 0, "skipped": 0, "failed": 1, "missing": 0}
    assert len(list((pooled / "shards").glob("*.json"))) == 4
    assert clip_bytes(inline) == clip_bytes(pooled)
    # a rerun skips what is stored and tries the failed video again
    again = prepare.prepare_cache(
        pooled, names, str(videos), frames=K, stored_size=S, workers=2, progress=False, log=lambda m: None
    )
    assert again["skipped"] == 6 and again["processed"] == 1 and again["counts"]["failed"] == 1


def test_a_second_prepare_on_the_same_cache_is_refused(videos, tmp_path):
    import fcntl

    out = tmp_path / "cache"
    out.mkdir()
    with open(out / ".prepare.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(SystemExit, match="another `datasets.prepare` is writing"):
            prepare.prepare_cache(
                out, GOOD[:1], str(videos), frames=K, stored_size=S, workers=0, progress=False, log=lambda m: None
            )


# ------------------------------------------------------------------------------------------------
# migration of the earlier Lightning version's float32 .pt clips
# ------------------------------------------------------------------------------------------------
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1, 1)


def legacy_clip(seed, t=4, size=16):
    """A uint8 clip and its earlier-version .pt form: float32 [3, T, H, W], /255, ImageNet-normalized."""
    u8 = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, t, size, size), dtype=np.uint8))
    return u8, ((u8.float() / 255 - MEAN) / STD).float()


def test_pt_migration_recovers_the_uint8_frames(tmp_path, capsys):
    pt_dir = tmp_path / "pt"
    (pt_dir / "deep").mkdir(parents=True)
    originals = {}
    for i in range(3):
        u8, normalized = legacy_clip(i)
        originals[f"clip_{i}.mp4"] = u8
        torch.save(normalized, pt_dir / ("deep" if i else "") / f"clip_{i}.pt")
    torch.save(torch.rand(3, 4, 16, 16) * 40, pt_dir / "not_imagenet.pt")  # other normalization
    torch.save(legacy_clip(5, t=2)[1], pt_dir / "other_shape.pt")
    names = list(originals) + ["not_imagenet.mp4", "other_shape.mp4", "absent.mp4"]
    out = tmp_path / "cache"
    rc = run_prepare(
        "--from-pt", pt_dir, "--annotations", table(tmp_path / "t.csv", names), "--out", out, "--workers", 0
    )
    assert rc == 0
    cache = FrameCache(out)
    assert (cache.params.frames, cache.params.stored_size, cache.params.sampling) == (4, 16, "legacy-pt")
    for name, u8 in originals.items():
        stored = cache.read_raw(cache.row(name), range(4))
        assert torch.equal(stored.permute(1, 0, 2, 3), u8), name
    rows = manifest(out)
    assert (
        rows["not_imagenet.mp4"]["status"] == "failed"
        and "not an ImageNet-normalized clip" in rows["not_imagenet.mp4"]["error"]
    )
    assert rows["other_shape.mp4"]["status"] == "failed" and "clip is 2x16x16" in rows["other_shape.mp4"]["error"]
    assert rows["absent.mp4"]["status"] == "missing"
    # trains like any cache; evaluation at the stored size returns the original frames
    ds = CachedClipDataset(out, list(originals), {}, num_frames=4, size=16)
    assert torch.equal(ds[1]["video"], originals["clip_1.mp4"])
    # --videos at the .pt folder: one line that says to use --from-pt
    with pytest.raises(SystemExit) as caught:
        run_prepare("--videos", pt_dir, "--annotations", tmp_path / "t.csv", "--out", tmp_path / "c1", "--workers", 0)
    assert f"--videos {pt_dir}: no video for the table, only .pt clips" in str(caught.value)
    assert f"python -m datasets.prepare --from-pt {pt_dir}" in str(caught.value) and "\n" not in str(caught.value)
    # frames and size come from the clips
    with pytest.raises(SystemExit, match="--stored-size 32: the .pt clips have 16"):
        run_prepare(
            "--from-pt",
            pt_dir,
            "--annotations",
            tmp_path / "t.csv",
            "--out",
            tmp_path / "c2",
            "--stored-size",
            32,
            "--workers",
            0,
        )


def test_command_line_entry_point(videos, tmp_path):
    """The documented command, as a process (covers `python -m` wiring and the progress bar)."""
    out = tmp_path / "cache"
    t = table(tmp_path / "t.csv", GOOD[:2])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "datasets.prepare",
            "--videos",
            str(videos),
            "--annotations",
            str(t),
            "--out",
            str(out),
            "--frames",
            str(K),
            "--stored-size",
            str(S),
            "--workers",
            "2",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "done: 2 processed" in res.stdout and "2/2" in res.stderr  # tqdm writes to stderr
    assert (FrameCache(out).params.frames, FrameCache(out).params.stored_size) == (K, S)


def test_web_faults_stored_noted_or_skipped(web_faults, tmp_path, capsys):
    """Files whose header count lies, variable-rate and rotated ones are stored with a note;
    a partial download is stored as partial; too long or too large ones are counted skips that
    a rerun with higher limits stores.  ``--partial-videos skip`` turns the partial one away."""
    t = table(tmp_path / "t.csv", FAULTS)
    out = tmp_path / "cache"
    assert (
        run_prepare(
            "--videos", web_faults, "--annotations", t, "--out", out, "--frames", K, "--stored-size", S, "--workers", 0
        )
        == 0
    )
    rows = manifest(out)
    status = {n: r["status"] for n, r in rows.items()}
    assert status == {
        "over_count.avi": "ok",
        "under_count.avi": "ok",
        "vfr.mp4": "ok",
        "portrait.mp4": "ok",
        "partial.mp4": "partial",
        "long.mp4": "skipped",
        "huge.mp4": "skipped",
    }
    assert (rows["over_count.avi"]["declared_frames"], rows["over_count.avi"]["total_frames"]) == ("444", "30")
    assert rows["over_count.avi"]["note"] == "header declares 444 frames, the file holds 30"
    assert rows["under_count.avi"]["note"] == "header declares 12 frames, the file holds 30"
    assert rows["vfr.mp4"]["note"] == "variable frame rate: frames chosen by time"
    assert rows["portrait.mp4"]["note"].startswith("turned upright (90 degrees")
    assert (rows["portrait.mp4"]["height"], rows["portrait.mp4"]["width"]) == ("48", "32")
    assert "longer than 30 s" in rows["long.mp4"]["error"] and not rows["long.mp4"]["shard"]
    assert "3840x2160 exceed the limit" in rows["huge.mp4"]["error"]
    assert "partial (used) 1, skipped 2, failed 0" in capsys.readouterr().out
    # the stored clips are the frames decode_clip chose, upright, fitted to S x S
    cache = CachedClipDataset(out, ["portrait.mp4", "vfr.mp4"], {}, num_frames=K, size=S)
    frames, info = decode_clip(web_faults / "portrait.mp4", K, short_side=S)
    assert torch.equal(cache[0]["video"].permute(1, 0, 2, 3), torch.from_numpy(prepare.fit_clip(frames, S)))
    assert rows["vfr.mp4"]["frame_indices"] == " ".join(map(str, decode_clip(web_faults / "vfr.mp4", K)[1]["indices"]))
    # a rerun with higher limits stores the skipped ones
    assert (
        run_prepare(
            "--videos",
            web_faults,
            "--annotations",
            t,
            "--out",
            out,
            "--frames",
            K,
            "--stored-size",
            S,
            "--workers",
            0,
            "--max-video-seconds",
            60,
            "--max-video-pixels",
            3840 * 2160,
        )
        == 0
    )
    assert {n: manifest(out)[n]["status"] for n in ("long.mp4", "huge.mp4")} == {"long.mp4": "ok", "huge.mp4": "short"}
    # --partial-videos skip: the partial download is a counted skip
    strict = tmp_path / "strict"
    assert (
        run_prepare(
            "--videos",
            web_faults,
            "--annotations",
            t,
            "--out",
            strict,
            "--frames",
            K,
            "--stored-size",
            S,
            "--workers",
            0,
            "--partial-videos",
            "skip",
        )
        == 0
    )
    assert manifest(strict)["partial.mp4"]["status"] == "skipped"
    assert "PartialVideoError: partial file" in manifest(strict)["partial.mp4"]["error"]
