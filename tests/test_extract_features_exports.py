"""extract_features.py's exports for other tools: thingsvision's file_names.txt and Net2Brain's
consolidated per-layer .npz files hold the arrays' ok rows, in row order, after a plain run, a
resumed one and a rerun; names the exports cannot hold are refused before any extraction; the
docs' rsatoolbox and himalaya examples run on the output (the libraries' parts only where they are
installed: they are not dependencies of the project)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from eval_fixtures import save_tiny_checkpoint
from fixture_files import texture
from scipy import stats

import extract_features
from analysis.features.exports import NET2BRAIN_DIR, check_exportable, stimulus_key
from analysis.features.store import PENDING
from datasets.video import write_video

LAYERS = ["layer1", "layer4.1", "avgpool"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Four readable clips (one in a subfolder), a corrupt one between them and a missing one."""
    root = tmp_path_factory.mktemp("exports")
    videos = root / "clips"
    (videos / "sub").mkdir(parents=True)
    for seed, name in enumerate(["a.mp4", "b.mp4", "sub/c.v2.mp4", "d.mp4"]):
        write_video(videos / name, texture(10 + 2 * seed, 40, 56, seed), 10)
    (videos / "bad.mp4").write_bytes(np.random.default_rng(3).bytes(3000))
    order = ["a.mp4", "bad.mp4", "b.mp4", "sub/c.v2.mp4", "gone.mp4", "d.mp4"]
    (root / "list.txt").write_text("".join(f"clips/{n}\n" for n in order))
    return root, save_tiny_checkpoint(root / "train")


def run(*args):
    return extract_features.main([*map(str, args), "--num-workers", "0", "--no-progress"])


def args_for(root, checkpoint, out, *more):
    return ["--checkpoint", checkpoint, root / "list.txt", "--layers", ",".join(LAYERS), "--output", out, *more]


def read_exports(out):
    """(file_names.txt lines, {layer: {key: array}} with the keys in file order, the folder's files)."""
    lines = (out / "file_names.txt").read_text().split("\n")
    assert lines[-1] == "", "every name ends with a line break"
    folder = out / NET2BRAIN_DIR
    layers = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path, allow_pickle=False) as npz:
            layers[path.name[: -len(".npz")]] = {key: npz[key] for key in npz.files}
    return lines[:-1], layers, sorted(p.name for p in folder.iterdir()) if folder.exists() else None


def assert_exports_hold_the_ok_rows(out):
    manifest = json.loads((out / "features.json").read_text())
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    ok = (index["status"] == "ok").to_numpy()
    names, layers, files = read_exports(out)
    assert names == index["video_name"][ok].tolist()
    assert files == sorted(f"{layer}.npz" for layer in manifest["layers"])  # nothing else for Net2Brain to read
    keys = [stimulus_key(n) for n in names]
    for layer, entry in manifest["layers"].items():
        array = np.load(out / entry["file"], mmap_mode="r")
        assert list(layers[layer]) == keys, layer
        for key, row in zip(keys, np.flatnonzero(ok)):
            value = layers[layer][key]
            assert value.shape == (1, *array.shape[1:]) and value.dtype == array.dtype, (layer, key)
            assert np.array_equal(value[0], array[row]), (layer, key)  # bit for bit, no NaN among them
    return names


def test_exports_hold_the_ok_rows_in_row_order_and_leave_failed_videos_out(clips, tmp_path):
    root, checkpoint = clips
    out = tmp_path / "out"
    assert run(*args_for(root, checkpoint, out, "--export", "npz", "--batch-size", "2")) == 0
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    assert index["status"].tolist() == ["ok", "error", "ok", "ok", "error", "ok"]
    names = assert_exports_hold_the_ok_rows(out)
    assert names == ["a.mp4", "b.mp4", "c.v2.mp4", "d.mp4"]  # a PATH's video_name is its file name
    _, layers, _ = read_exports(out)
    assert list(layers["avgpool"]) == ["a", "b", "c.v2", "d"] and layers["layer1"]["a"].shape == (1, 64)
    assert not (tmp_path / "plain").exists()
    assert run(*args_for(root, checkpoint, tmp_path / "plain")) == 0  # without --export: the list only
    assert (tmp_path / "plain" / "file_names.txt").read_text() == (out / "file_names.txt").read_text()
    assert not (tmp_path / "plain" / NET2BRAIN_DIR).exists()


def test_a_resumed_extraction_and_a_rerun_export_the_same_files(clips, tmp_path):
    root, checkpoint = clips
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run(*args_for(root, checkpoint, full, "--export", "npz")) == 0
    assert run(*args_for(root, checkpoint, resumed, "--export", "npz")) == 0
    # Interrupt it after the fact: two rows (one ok, one failed) back to pending, the exports gone,
    # as a run killed before its end leaves them.
    status = np.load(resumed / ".progress" / "status.npy", mmap_mode="r+")
    status[[1, 3]] = PENDING
    status.flush()
    del status
    manifest = json.loads((resumed / "features.json").read_text())
    manifest["complete"] = False
    (resumed / "features.json").write_text(json.dumps(manifest))
    (resumed / "file_names.txt").unlink()
    for path in (resumed / NET2BRAIN_DIR).iterdir():
        path.unlink()
    assert run(*args_for(root, checkpoint, resumed, "--export", "npz")) == 0
    assert assert_exports_hold_the_ok_rows(resumed) == assert_exports_hold_the_ok_rows(full)
    expected, got = read_exports(full)[1], read_exports(resumed)[1]
    for layer in LAYERS:
        for key, value in expected[layer].items():
            np.testing.assert_allclose(got[layer][key], value, rtol=1e-5, atol=1e-6, err_msg=f"{layer} {key}")

    # A rerun of the complete extraction with --export added writes what was not asked for before;
    # --overwrite removes the exports with the rest.
    plain = tmp_path / "plain"
    assert run(*args_for(root, checkpoint, plain)) == 0
    assert not (plain / NET2BRAIN_DIR).exists()
    assert run(*args_for(root, checkpoint, plain, "--export", "npz")) == 0
    assert_exports_hold_the_ok_rows(plain)
    assert run(*args_for(root, checkpoint, plain, "--pool", "max", "--overwrite")) == 0
    assert not (plain / NET2BRAIN_DIR).exists() and (plain / "file_names.txt").exists()


def test_names_the_exports_cannot_hold_are_refused_before_extracting(clips, tmp_path):
    root, checkpoint = clips
    check_exportable(["x/a.mp4", "y/a.mp4"], npz=False)  # file_names.txt lists them as they are
    with pytest.raises(ValueError, match=r"rows 0 \(x/a.mp4\) and 2 \(z/a.avi\): 'a'"):
        check_exportable(["x/a.mp4", "b.mp4", "z/a.avi"], npz=True)
    with pytest.raises(ValueError, match="video 1 .*line break"):
        check_exportable(["a.mp4", "b\n.mp4"], npz=False)
    (root / "twice.txt").write_text("clips/a.mp4\nclips/b.mp4\nclips/a.mp4\n")
    out = tmp_path / "out"
    common = ["--checkpoint", checkpoint, root / "twice.txt", "--layers", "layer1", "--output", out]
    with pytest.raises(SystemExit, match=r"--export npz keys each video by its file stem.*rows 0 \(a.mp4\) and 2"):
        run(*common, "--export", "npz")
    assert not out.exists()  # refused before the folder was made
    assert run(*common) == 0
    assert (out / "file_names.txt").read_text() == "a.mp4\nb.mp4\na.mp4\n"


def test_the_export_memory_benchmark_runs_and_checks_its_rows():
    repo = Path(extract_features.__file__).parent
    command = [sys.executable, "-m", "benchmarks.feature_export", "--rows", "30,60", "--dim", "1000"]
    res = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 2 and all("'last_row_equal': True" in line for line in lines), res.stdout


def docs_blocks(heading):
    """The ```python blocks of a docs/features.md section."""
    text = (Path(extract_features.__file__).parent / "docs" / "features.md").read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ", 1)] if "\n## " in section[1:] else section
    section = section[: section.index("\n### ", 1)] if "\n### " in section[1:] else section
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_block(code, out, namespace):
    """A docs block run on ``out``: its output folder and responses.csv are the test's."""
    assert 'out = "feats"' in code or "out" in namespace
    code = code.replace('out = "feats"', f"out = {str(out)!r}")
    code = code.replace('"responses.csv"', repr(str(out.parent / "responses.csv")))
    exec(compile(code, "docs/features.md", "exec"), namespace)
    return namespace


MANY = [f"m{i:02d}.mp4" for i in range(11)]


@pytest.fixture(scope="module")
def documented_output(clips, tmp_path_factory):
    """Eleven readable clips and a corrupt one (enough for himalaya's 5 folds), and responses.csv
    with two targets for them in another order, plus a video the extraction does not have."""
    root, checkpoint = clips
    folder = tmp_path_factory.mktemp("documented")
    for seed, name in enumerate(MANY):
        write_video(folder / name, texture(10 + seed % 4, 40, 48, 20 + seed), 10)
    (folder / "bad.mp4").write_bytes(np.random.default_rng(4).bytes(3000))
    listed = [*MANY[:3], "bad.mp4", *MANY[3:]]
    (folder / "list.txt").write_text("".join(f"{n}\n" for n in listed))
    out = folder / "feats"
    assert run("--checkpoint", checkpoint, folder / "list.txt", "--layers", "layer4,avgpool", "--output", out) == 0
    rng = np.random.default_rng(0)
    responses = pd.DataFrame({"video_name": [*MANY[::-1], "other.mp4"], "t1": rng.normal(size=12)})
    responses["t2"] = rng.normal(size=12)
    responses.to_csv(folder / "responses.csv", index=False)
    return out


@pytest.mark.parametrize(
    "heading, library",
    [("### Example: RSA with rsatoolbox", "rsatoolbox"), ("### Example: encoding models with himalaya", "himalaya")],
)
def test_the_documented_loading_step_gives_the_ok_rows_with_their_names(documented_output, heading, library):
    """The first block of each example loads our output with numpy and pandas only: tested always."""
    blocks = docs_blocks(heading)
    assert len(blocks) == 2, f"{heading}: a loading block and a {library} block"
    assert library not in blocks[0] and f"import {library}" in blocks[1]
    ns = run_block(blocks[0], documented_output, {})
    index = pd.read_csv(documented_output / "index.csv", keep_default_na=False)
    ok = (index["status"] == "ok").to_numpy()
    assert ns["names"] == MANY and ok.sum() == len(MANY) and not ok[3]
    features = np.load(documented_output / "layer4.npy")[ok]
    np.testing.assert_array_equal(ns["X"], features.reshape(len(features), -1))
    if library == "himalaya":
        responses = pd.read_csv(documented_output.parent / "responses.csv").set_index("video_name")
        expected = np.array([[responses.loc[n, "t1"], responses.loc[n, "t2"]] for n in MANY], dtype=np.float32)
        np.testing.assert_array_equal(ns["Y"], expected)


@pytest.mark.parametrize(
    "heading, library",
    [("### Example: RSA with rsatoolbox", "rsatoolbox"), ("### Example: encoding models with himalaya", "himalaya")],
)
def test_the_documented_library_step_runs_where_the_library_is_installed(documented_output, heading, library, capsys):
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed (not a dependency of the project: `pip install {library}`)")
    blocks = docs_blocks(heading)
    ns = run_block(blocks[1], documented_output, run_block(blocks[0], documented_output, {}))
    printed = capsys.readouterr().out
    if library == "rsatoolbox":
        rdm = ns["rdms"]
        order = list(rdm.pattern_descriptors["video"])
        assert rdm.n_cond == len(MANY) and sorted(order) == sorted(ns["names"])
        X = ns["X"].astype(np.float64)[[ns["names"].index(v) for v in order]]
        np.testing.assert_allclose(rdm.get_matrices()[0], 1 - np.corrcoef(X), rtol=1e-5, atol=1e-5)
        assert re.fullmatch(r"layer4 vs avgpool over 11 videos: Spearman -?\d\.\d{3}\n", printed), printed
        a, b = rdm.dissimilarities[0], ns["other"].dissimilarities[0]  # upper triangles, same order
        assert list(ns["other"].pattern_descriptors["video"]) == order
        assert ns["rho"] == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-9)
    else:
        assert ns["model"].best_alphas_.shape == (2,)  # one alpha per target
        assert ns["scores"].shape == (2,) and ns["test"].sum() == 3
        assert printed.startswith("2 targets, held-out R^2 from ")
