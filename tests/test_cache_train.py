"""train_ddp.py --cache: a tiny run trains from a prepared cache (read by the frame-cache loader's
threads); videos the cache lacks are counted and reported; a cache built for other clips is refused."""

import shutil

import pandas as pd
import pytest
from fixture_files import prepare_demo_cache
from launch_helpers import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_cache(tiny_demo, tmp_path_factory):
    # 6 stored frames for the run's 4 (temporal jitter), 40 px stored for 32 px crops
    out = prepare_demo_cache(tiny_demo, tmp_path_factory.mktemp("cache") / "demo", frames=6, stored_size=40)
    return out, tiny_demo[1]


def test_train_from_cache(demo_cache, tmp_path):
    cache, annotations = demo_cache
    out = tmp_path / "run"
    # TINY = 4 frames of 32 px; one worker process exercises the Dataset's pickling and collate in a worker
    # --videos as well (e.g. left in a launch script): not read, and the log says so
    gone = tmp_path / "no-such-videos"
    res = train(out, (gone, annotations), cache=cache, num_workers=1, epochs=1, max_steps=3, batch_size=4)
    assert f"frame cache {cache}: frames=6, stored_size=40, uint8" in res.stdout
    assert f"(--videos {gone} is not read: training uses the cache)" in res.stdout
    state = res.checkpoint()  # it trained from the cache: 3 steps, none skipped for want of clips
    assert state["step"] == 3 and state["counters"]["bad_videos"] == 0 and state["counters"]["empty_steps"] == 0


def test_cache_for_other_clips_is_refused(demo_cache, tmp_path):
    cache, annotations = demo_cache
    res = train(tmp_path, None, ok=False, timeout=300, cache=cache, annotations=annotations, frames=8)
    assert "it keeps 6 frames per clip but the run uses --frames 8" in res.stdout
    assert "Traceback" not in res.stdout  # a clear message, not a crash


def test_a_jpeg_cache_of_an_earlier_version_is_refused_in_one_line(demo_cache, tmp_path):
    import json

    cache, annotations = demo_cache
    old = tmp_path / "jpeg-cache"
    shutil.copytree(cache, old)
    doc = json.loads((old / "cache.json").read_text())
    doc["params"].update(storage="jpeg", jpeg_quality=90)  # what those versions wrote for --format jpeg
    (old / "cache.json").write_text(json.dumps(doc))
    res = train(tmp_path / "run", None, "--annotations", str(annotations), cache=old, ok=None, timeout=300)
    assert res.returncode == 1
    errors = [line for line in res.stdout.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: --cache: frame cache {old} stores jpeg frames, which this version no longer reads; rebuild it "
        "as raw uint8 with `python -m datasets.prepare --frames 6 --stored-size 40 ... --out NEW_DIR` "
        "(docs/data.md says how much disk it takes)"
    ], res.stdout[-3000:]


def test_videos_the_cache_lacks_are_counted_and_reported(demo_cache, tmp_path):
    cache, annotations = demo_cache
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    manifest = pd.read_csv(damaged / "manifest.csv", dtype=str, keep_default_na=False)
    gone, failed = manifest["video_name"][0], manifest["video_name"][1]
    manifest.loc[1, ["status", "error"]] = ["failed", "decode error (made up by the test)"]
    manifest.drop(index=0).to_csv(damaged / "manifest.csv", index=False)
    out = tmp_path / "run"
    whole = dict(val_fraction=0, test_fraction=0)
    res = train(out, None, cache=damaged, annotations=annotations, num_workers=2, epochs=1, batch_size=4, **whole)
    assert f"2 table videos are not in the cache {damaged}" in res.stdout
    rows = [line.split("\t") for line in (out / "bad_videos.tsv").read_text().splitlines()]
    errors = {video: error for _, video, error in rows}
    assert errors.keys() == {gone, failed}  # all 48 videos train, so both were drawn, once each
    assert "not in the cache" in errors[gone] and "failed: decode error (made up by the test)" in errors[failed]
    assert res.checkpoint()["counters"]["bad_videos"] == len(rows) == 2
