"""extract_features.py in one process: features equal an explicit forward, the output format, bad
videos, checkpoint kinds, the table / cache inputs, --list-layers, reruns, the projection."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from eval_fixtures import DEPTH, FRAMES, SIZE, save_tiny_checkpoint
from feature_helpers import expected_layer_names, reference_features
from fixture_files import prepare_demo_cache, texture

import extract_features
from analysis.features.projection import SparseRandomProjection, layer_seed
from datasets import MultiViewCachedDataset, MultiViewClipDataset, VideoIndex, normalize
from datasets.video import write_video
from inference import clips_to_model_input, load_inference_model
from resnet3d import build_model
from resnet3d.backbone import ResNet3D

GOOD = ["a.mp4", "b.mp4", "c_portrait.mp4", "d.mp4", "e.mp4"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    videos = root / "clips"
    videos.mkdir()
    for seed, name in enumerate(GOOD):
        height, width = (56, 40) if "portrait" in name else (40, 56)
        write_video(videos / name, texture(10 + 2 * seed, height, width, seed), 10)
    (videos / "corrupt.mp4").write_bytes(np.random.default_rng(3).bytes(3000))
    return root, videos, save_tiny_checkpoint(root / "train")


def run(*args):
    return extract_features.main([*map(str, args), "--num-workers", "0", "--no-progress"])


def load_outputs(out):
    manifest = json.loads((out / "features.json").read_text())
    index = pd.read_csv(out / "index.csv", keep_default_na=False)
    arrays = {name: np.load(out / entry["file"], mmap_mode="r") for name, entry in manifest["layers"].items()}
    return manifest, index, arrays


def video_views(paths, temporal, spatial):
    dataset = MultiViewClipDataset(
        [str(p) for p in paths],
        {},
        os.sep,
        num_frames=FRAMES,
        size=SIZE,
        temporal_views=temporal,
        spatial_views=spatial,
        index=VideoIndex(root=os.sep),
    )
    return [normalize(dataset[i]["video"]) for i in range(len(dataset))]


LAYERS = ["conv1", "bn1", "layer2.1", "layer4", "avgpool", "last_linear"]


def test_features_equal_an_explicit_forward_and_keep_the_contract(clips, tmp_path):
    root, videos, checkpoint = clips
    out = tmp_path / "out"
    assert (
        run(
            "--checkpoint",
            checkpoint,
            videos,
            root / "gone.mp4",
            "--layers",
            ",".join(LAYERS),
            "--views",
            "2x3",
            "--batch-size",
            "2",
            "--output",
            out,
        )
        == 0
    )
    manifest, index, arrays = load_outputs(out)

    order = [
        videos / "a.mp4",
        videos / "b.mp4",
        videos / "c_portrait.mp4",
        videos / "corrupt.mp4",
        videos / "d.mp4",
        videos / "e.mp4",
        root / "gone.mp4",
    ]
    assert list(index.columns) == ["row", "video_name", "path", "status", "error"]
    assert index["row"].tolist() == list(range(7)) and index["path"].tolist() == [str(p) for p in order]
    assert index["video_name"].tolist() == [p.name for p in order]
    assert index["status"].tolist() == ["ok", "ok", "ok", "error", "ok", "ok", "error"]
    assert "InvalidDataError" in index["error"][3] and "FileNotFoundError" in index["error"][6]
    assert (index["error"][index["status"] == "ok"] == "").all()

    assert manifest["format_version"] == 1 and manifest["complete"] is True and manifest["num_videos"] == 7
    assert list(manifest["layers"]) == LAYERS
    assert (manifest["pool"], manifest["frames"], manifest["size"], manifest["views"]) == ("mean", FRAMES, SIZE, "2x3")
    assert manifest["project_dim"] is None and manifest["checkpoint"]["kind"] == "training"
    assert manifest["checkpoint"]["path"] == str(checkpoint) and len(manifest["checkpoint"]["sha256"]) == 64
    assert {"torch", "numpy", "python"} <= set(manifest["versions"])
    assert manifest["counts"] == {"ok": 5, "error": 2, "pending": 0}

    model, _ = load_inference_model(str(checkpoint))
    good = [i for i, s in enumerate(index["status"]) if s == "ok"]
    for row, views in zip(good, video_views([order[i] for i in good], 2, 3)):
        expected = reference_features(model, views, LAYERS, "mean")
        for name in LAYERS:
            entry = manifest["layers"][name]
            assert entry["file"] == f"{name}.npy" and entry["dtype"] == "float32"
            assert arrays[name].shape == tuple(entry["shape"]) == (7, expected[name].shape[0])
            np.testing.assert_allclose(
                arrays[name][row], expected[name].numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{name}, row {row}"
            )
    for name in LAYERS:
        assert np.isnan(arrays[name][[3, 6]]).all() and not np.isnan(arrays[name][good]).any()
    assert manifest["layers"]["last_linear"]["columns"][:2] == ["distance_score", "distance_confidence"]
    assert len(manifest["layers"]["last_linear"]["columns"]) == 24


def test_time_and_unpooled_layers_stored_as_float16(clips, tmp_path):
    root, videos, checkpoint = clips
    paths = [videos / "a.mp4", videos / "d.mp4"]
    model, _ = load_inference_model(str(checkpoint))
    views = video_views(paths, 1, 1)
    for mode, shapes in (
        ("time", {"maxpool": (64, 2), "layer3": (256, 1)}),
        ("none", {"maxpool": (64, 2, 8, 8), "layer3": (256, 1, 2, 2)}),
    ):
        out = tmp_path / mode
        assert (
            run(
                "--checkpoint",
                checkpoint,
                *paths,
                "--layers",
                "maxpool,layer3",
                "--pool",
                mode,
                "--dtype",
                "float16",
                "--output",
                out,
            )
            == 0
        )
        manifest, _, arrays = load_outputs(out)
        for name, shape in shapes.items():
            assert arrays[name].dtype == np.float16 and arrays[name].shape == (2, *shape)
            assert manifest["layers"][name]["axes"] == ["video", "channel", "time", "height", "width"][: len(shape) + 1]
            for row, clip in enumerate(views):
                expected = reference_features(model, clip, [name], mode)[name].numpy()
                np.testing.assert_allclose(arrays[name][row].astype(np.float32), expected, rtol=2e-3, atol=2e-3)


def test_list_layers_prints_the_models_names_and_shapes(clips, capsys):
    _, _, checkpoint = clips
    assert run("--checkpoint", checkpoint, "--list-layers", "--pool", "time") == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    model = build_model(depth=DEPTH, dropout=0.0).eval()
    assert [line[0] for line in lines] == expected_layer_names(model)
    with torch.no_grad():
        x = torch.zeros(1, 3, FRAMES, SIZE, SIZE)
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        l1 = model.layer1(stem)
        l4 = model.layer4(model.layer3(model.layer2(l1)))
    listed = {line[0]: (line[1], line[3]) for line in lines}
    assert listed["layer1"] == ("x".join(map(str, l1.shape[1:])), f"{l1.shape[1]}x{l1.shape[2]}")
    assert listed["layer4"] == ("x".join(map(str, l4.shape[1:])), f"{l4.shape[1]}x{l4.shape[2]}")
    assert listed["last_linear"] == ("24", "24")


def mit_checkpoint(path, model):
    """The official MiT layout: module.<name>, with a 305-class classifier."""
    state = {f"module.{n}": t for n, t in model.state_dict().items()}
    state["module.last_linear.weight"] = torch.randn(305, 2048 if model.depth == 50 else 512)
    state["module.last_linear.bias"] = torch.randn(305)
    torch.save({"epoch": 30, "arch": f"resnet3d{model.depth}", "state_dict": state}, path)
    return path


def test_mit_weights_give_backbone_layers_and_no_head(clips, tmp_path, capsys):
    root, videos, _ = clips
    torch.manual_seed(4)
    source = ResNet3D(depth=DEPTH).eval()
    mit = mit_checkpoint(tmp_path / "moments_resnet3d18.pth.tar", source)
    with pytest.raises(SystemExit, match="official Moments in Time weights, whose classifier is dropped"):
        run("--checkpoint", mit, videos / "a.mp4", "--layers", "avgpool,last_linear", "--output", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    assert run("--checkpoint", mit, "--list-layers", "--frames", FRAMES, "--size", SIZE) == 0
    printed = capsys.readouterr().out
    assert "  avgpool " in printed and "last_linear is not offered" in printed
    out = tmp_path / "mit"
    assert (
        run(
            "--checkpoint",
            mit,
            videos / "a.mp4",
            "--layers",
            "avgpool",
            "--frames",
            FRAMES,
            "--size",
            SIZE,
            "--output",
            out,
        )
        == 0
    )
    manifest, _, arrays = load_outputs(out)
    assert manifest["checkpoint"]["kind"] == "mit"
    expected = reference_features(source, video_views([videos / "a.mp4"], 1, 1)[0], ["avgpool"], "mean")
    np.testing.assert_allclose(arrays["avgpool"][0], expected["avgpool"].numpy(), rtol=1e-4, atol=1e-5)


def test_random_init_is_a_seeded_control_without_a_head(clips, tmp_path):
    _, videos, _ = clips
    common = [
        "--random-init",
        "--depth",
        "18",
        "--frames",
        FRAMES,
        "--size",
        SIZE,
        videos / "a.mp4",
        videos / "b.mp4",
        "--layers",
        "layer3",
    ]
    with pytest.raises(SystemExit, match="a --random-init network has no trained head"):
        run(*common[:-1], "last_linear", "--output", tmp_path / "x")
    for name, seed in (("s0", 0), ("s0_again", 0), ("s1", 1)):
        assert run(*common, "--seed", seed, "--output", tmp_path / name) == 0
    arrays = {name: load_outputs(tmp_path / name)[2]["layer3"] for name in ("s0", "s0_again", "s1")}
    assert np.array_equal(arrays["s0"], arrays["s0_again"])
    assert not np.allclose(arrays["s0"], arrays["s1"])
    manifest = load_outputs(tmp_path / "s1")[0]
    assert manifest["checkpoint"] == {
        "path": None,
        "kind": "random_init",
        "depth": 18,
        "sha256": None,
        "step": None,
        "training_run_id": None,
        "tasks": [],
        "seed": 1,
    }


def test_annotation_split_from_videos_and_from_the_frame_cache(clips, tmp_path):
    root, videos, checkpoint = clips
    table = tmp_path / "stimuli.csv"
    splits = ["test", "train", "test", "test", "val", "test"]
    pd.DataFrame({"video_name": [*GOOD, "ghost.mp4"], "split": splits}).to_csv(table, index=False)
    out = tmp_path / "from_videos"
    assert (
        run(
            "--checkpoint",
            checkpoint,
            "--annotations",
            table,
            "--split",
            "test",
            "--videos",
            videos,
            "--split-method",
            "column",
            "--layers",
            "layer1",
            "--output",
            out,
        )
        == 0
    )
    manifest, index, _ = load_outputs(out)
    assert index["video_name"].tolist() == ["a.mp4", "c_portrait.mp4", "d.mp4", "ghost.mp4"]
    assert index["status"].tolist() == ["ok", "ok", "ok", "error"] and "no 'ghost.mp4'" in index["error"][3]
    assert manifest["source"]["split"] == "test" and manifest["source"]["kind"] == "videos"

    cache = tmp_path / "cache"
    listed = tmp_path / "cached.csv"
    pd.DataFrame({"video_name": GOOD[:3]}).to_csv(listed, index=False)
    prepare_demo_cache((videos, listed), cache, frames=2 * FRAMES)
    out = tmp_path / "from_cache"
    assert (
        run(
            "--checkpoint",
            checkpoint,
            "--annotations",
            table,
            "--split",
            "all",
            "--cache",
            cache,
            "--views",
            "2x1",
            "--layers",
            "layer1,avgpool",
            "--output",
            out,
        )
        == 0
    )
    manifest, index, arrays = load_outputs(out)
    assert index["status"].tolist() == ["ok", "ok", "ok", "error", "error", "error"]
    assert "no clip in frame cache" in index["error"][3] and manifest["source"]["kind"] == "cache"
    model, _ = load_inference_model(str(checkpoint))
    dataset = MultiViewCachedDataset(cache, GOOD[:3], num_frames=FRAMES, size=SIZE, temporal_views=2)
    for row in range(3):
        x = clips_to_model_input(dataset[row]["video"][None], torch.device("cpu"), size=SIZE)
        expected = reference_features(model, x, ["layer1", "avgpool"], "mean")
        for name in ("layer1", "avgpool"):
            np.testing.assert_allclose(arrays[name][row], expected[name].numpy(), rtol=1e-4, atol=1e-5)


def test_a_rerun_does_nothing_when_complete_and_refuses_other_settings(clips, tmp_path, capsys):
    _, videos, checkpoint = clips
    out = tmp_path / "out"
    args = ["--checkpoint", checkpoint, videos / "a.mp4", "--layers", "layer1", "--output", out]
    assert run(*args) == 0
    before = (out / "layer1.npy").stat().st_mtime_ns, (out / "features.json").read_text()
    capsys.readouterr()
    assert run(*args) == 0
    assert "already holds this extraction, complete" in capsys.readouterr().out
    assert ((out / "layer1.npy").stat().st_mtime_ns, (out / "features.json").read_text()) == before
    with pytest.raises(SystemExit, match="other settings .*pool: 'mean' then, 'max' now"):
        run(*args, "--pool", "max")
    assert run(*args, "--pool", "max", "--overwrite") == 0
    assert load_outputs(out)[0]["pool"] == "max"


def test_projection_of_unpooled_layers_is_seeded_and_the_documented_map(clips, tmp_path):
    _, videos, checkpoint = clips
    paths = [videos / "a.mp4", videos / "corrupt.mp4", videos / "e.mp4"]
    common = ["--checkpoint", checkpoint, *paths, "--layers", "layer1,last_linear", "--pool", "none", "--views", "2x1"]
    assert run(*common, "--output", tmp_path / "full") == 0
    for name in ("p", "p_again"):
        assert run(*common, "--project-dim", 100, "--seed", 7, "--output", tmp_path / name) == 0
    assert run(*common, "--project-dim", 100, "--seed", 8, "--output", tmp_path / "p_other") == 0
    full = load_outputs(tmp_path / "full")[2]
    manifest, index, projected = load_outputs(tmp_path / "p")
    assert manifest["project_dim"] == 100 and manifest["projection"]["seed"] == 7
    assert manifest["layers"]["layer1"]["shape"] == [3, 100] and manifest["layers"]["layer1"]["projected"]
    assert manifest["layers"]["last_linear"]["shape"] == [3, 24] and not manifest["layers"]["last_linear"]["projected"]
    assert np.array_equal(projected["layer1"], load_outputs(tmp_path / "p_again")[2]["layer1"], equal_nan=True)
    assert not np.allclose(projected["layer1"][0], load_outputs(tmp_path / "p_other")[2]["layer1"][0])
    ok = [0, 2]
    flat = torch.from_numpy(np.array(full["layer1"][ok])).flatten(1)
    expected = SparseRandomProjection(flat.shape[1], 100, layer_seed(7, "layer1"))(flat)
    np.testing.assert_allclose(projected["layer1"][ok], expected.numpy(), rtol=1e-4, atol=1e-4)
    assert np.isnan(projected["layer1"][1]).all() and index["status"][1] == "error"


def test_the_documented_example_loads_the_outputs_and_correlates_two_layers_rdms(clips, tmp_path, capsys):
    _, videos, checkpoint = clips
    out = tmp_path / "feats"
    assert run("--checkpoint", checkpoint, videos, "--output", out) == 0  # default layers: layer1..layer4
    text = (Path(extract_features.__file__).parent / "docs" / "features.md").read_text()
    section = text[text.index("## Feature extraction") :]
    code = section[section.index("```python\n") + 10 :]
    code = code[: code.index("```")]
    assert 'out = "feats"' in code
    capsys.readouterr()
    exec(compile(code.replace('out = "feats"', f"out = {str(out)!r}"), "docs/features.md example", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("RDMs of layer2 and layer4 over 5 videos: Spearman ")
    assert -1.0 <= float(printed.rsplit(" ", 1)[1]) <= 1.0
