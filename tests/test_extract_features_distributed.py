"""extract_features.py as real processes: 1, 2 and 3 ranks write the same files; a run killed
with SIGKILL resumes to the files of an uninterrupted one; memory stays flat however large the layer."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from eval_fixtures import save_tiny_checkpoint
from fixture_files import texture
from launch_helpers import REPO, child_env, free_port, run

from datasets.video import write_video

pytestmark = pytest.mark.slow

DISTINCT = 13  # neither 2 nor 3 divides the row count: a padded sampler would do some rows twice
REPEATS = 4
LAYERS = "layer1,layer3.1,last_linear"


def command(args, nproc):
    if nproc == 1:
        return [sys.executable, str(REPO / "extract_features.py"), *map(str, args)]  # no process group at all
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        f"--master_port={free_port()}",
        str(REPO / "extract_features.py"),
        *map(str, args),
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A list of 13 clips, each 4 times, plus a corrupt and a missing video: 54 rows."""
    root = tmp_path_factory.mktemp("extract_dist")
    clips = root / "clips"
    clips.mkdir()
    for i in range(DISTINCT):
        write_video(clips / f"v{i:02d}.mp4", texture(8 + i % 5, 40, 48, i), 10)
    (clips / "corrupt.mp4").write_bytes(np.random.default_rng(3).bytes(3000))
    lines = [f"clips/v{i:02d}.mp4" for _ in range(REPEATS) for i in range(DISTINCT)]
    lines[7:7] = ["clips/corrupt.mp4"]
    lines.append("clips/missing.mp4")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root, save_tiny_checkpoint(root / "train")


def extraction_args(root, checkpoint, out, batch_size):
    return [
        "--checkpoint",
        checkpoint,
        root / "list.txt",
        "--layers",
        LAYERS,
        "--pool",
        "time",
        "--views",
        "2x1",
        "--project-dim",
        200,
        "--output",
        out,
        "--batch-size",
        batch_size,
        "--num-workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    ]


def outputs(out):
    manifest = json.loads((out / "features.json").read_text())
    arrays = {name: np.array(np.load(out / e["file"], mmap_mode="r")) for name, e in manifest["layers"].items()}
    return manifest, (out / "index.csv").read_text(), arrays, (out / "file_names.txt").read_text()


@pytest.fixture(scope="module")
def reference(inputs):
    """One process without a process group, run in this one (the code path of `python extract_features.py`)."""
    import extract_features

    root, checkpoint = inputs
    out = root / "one_process"
    assert extract_features.main(list(map(str, extraction_args(root, checkpoint, out, 2)))) == 0
    return outputs(out)


def assert_same_files(got, expected):
    (manifest, index, arrays, names), (manifest0, index0, arrays0, names0) = got, expected
    assert index == index0  # same rows in the same order, same statuses and errors
    assert names == names0 and names.count("\n") == DISTINCT * REPEATS  # the ok rows, exported once all are final
    assert manifest["layers"] == manifest0["layers"] and manifest["complete"] and manifest["num_videos"] == 54
    for name, values in arrays0.items():
        np.testing.assert_allclose(arrays[name], values, rtol=1e-4, atol=1e-5, err_msg=name)  # NaN rows too


def test_one_two_and_three_ranks_write_the_same_files(inputs, reference):
    root, checkpoint = inputs
    manifest, index, arrays, _ = reference
    frame = pd.read_csv(root / "one_process" / "index.csv", keep_default_na=False)
    assert frame["status"].value_counts().to_dict() == {"ok": DISTINCT * REPEATS, "error": 2}
    assert frame.loc[7, "video_name"] == "corrupt.mp4" and frame.loc[53, "video_name"] == "missing.mp4"
    assert arrays["layer1"].shape == (54, 64, 2) and arrays["layer3.1"].shape == (54, 200)  # projected
    np.testing.assert_allclose(arrays["layer1"][0], arrays["layer1"][DISTINCT + 1], rtol=1e-5)  # v00 twice
    for nproc in (2, 3):
        out = root / f"ranks_{nproc}"
        res = run(command(extraction_args(root, checkpoint, out, 2), nproc), timeout=300)
        assert res.returncode == 0, res.stdout[-4000:]
        got = outputs(out)
        assert_same_files(got, reference)
        assert got[0]["attempts"][-1]["world_size"] == nproc


def status_counts(out):
    try:
        status = np.load(out / ".progress" / "status.npy", mmap_mode="r")
    except (OSError, ValueError):
        return 0, None
    return int(np.sum(status == 1)), int(np.sum(status == 0))


def test_a_killed_extraction_resumes_to_the_files_of_an_uninterrupted_one(inputs, reference, capsys):
    root, checkpoint = inputs
    out = root / "killed"
    proc = subprocess.Popen(
        command(extraction_args(root, checkpoint, out, 1), 1),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while status_counts(out)[0] < 10 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        log = proc.communicate()[0]
    done, pending = status_counts(out)
    assert done >= 10 and pending, f"the run was not caught midway ({done} done, {pending} pending):\n{log[-3000:]}"
    manifest = json.loads((out / "features.json").read_text())
    assert manifest["complete"] is False and len(manifest["attempts"]) == 1
    assert "extraction_s" not in manifest["attempts"][0]  # killed: no results on record

    import extract_features  # resumed in this process (saves a start-up; the ranks test covers torchrun)

    assert extract_features.main(list(map(str, extraction_args(root, checkpoint, out, 2)))) == 0
    assert f"of {pending} of 54 videos (continuing)" in capsys.readouterr().out
    got = outputs(out)
    assert_same_files(got, reference)
    assert len(got[0]["attempts"]) == 2 and got[0]["attempts"][1]["videos"] == pending


# Runs the extraction twice in one process, small then large, and prints the peak RSS after each;
# the peak only rises, so the difference is what the 24 extra videos added at most.
PEAKS_DRIVER = """
import json, resource, sys
import extract_features
peaks = []
for args in json.loads(sys.argv[1]):
    if extract_features.main(args) != 0:
        sys.exit(3)
    peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print("PEAKS", json.dumps(peaks))
"""


def test_memory_does_not_grow_with_the_rows_written(inputs, tmp_path):
    """The unpooled conv1 of 13 videos at the default 16 x 224 px is 637 MiB of float32: written
    through short-lived memory maps it must not stay in the process's memory (a map kept open
    for the whole run grew the peak by 408 MiB for 8 more videos when this was written)."""
    root, _ = inputs
    bound_mib = 150
    runs = []
    for videos in (2, 13):
        listed = tmp_path / f"list{videos}.txt"
        listed.write_text("\n".join(str(root / "clips" / f"v{i:02d}.mp4") for i in range(videos)) + "\n")
        runs.append(
            [
                "--random-init",
                "--depth",
                "18",
                str(listed),
                "--layers",
                "conv1",
                "--pool",
                "none",
                "--output",
                str(tmp_path / f"out{videos}"),
                "--batch-size",
                "1",
                "--num-workers",
                "0",
                "--no-progress",
            ]
        )
    res = run([sys.executable, "-c", PEAKS_DRIVER, json.dumps(runs)], timeout=300)
    assert res.returncode == 0, res.stdout[-4000:]
    small, large = json.loads(res.stdout.split("PEAKS", 1)[1])
    layer_mib = (tmp_path / "out13" / "conv1.npy").stat().st_size / 2**20
    assert layer_mib >= 4 * bound_mib
    assert large - small <= bound_mib, (
        f"11 more videos ({layer_mib:.0f} MiB layer in all) raised the peak RSS from {small:.0f} to {large:.0f} MiB"
    )
