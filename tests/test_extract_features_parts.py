"""The pieces of extract_features.py: layer names and shapes, the hooks, pooling, the projection, the store."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from feature_helpers import expected_layer_names, explicit_layers

from analysis.features.layers import LayerTap, list_layers
from analysis.features.pooling import POOLS, average_views, pool, pooled_shape
from analysis.features.projection import CHUNK, SparseRandomProjection, layer_seed
from analysis.features.store import ERROR, OK, PENDING, FeatureStore, FeatureStoreError
from resnet3d import build_model
from resnet3d.backbone import ResNet3D

X = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5))


def randomized(model):
    """Non-trivial BN statistics, so a layer read before or after a BN differs visibly."""
    g = torch.Generator().manual_seed(2)
    for name, tensor in model.state_dict().items():
        if "running_var" in name:
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=g))
        elif "running_mean" in name or (name.endswith(".bias") and tensor.dim() == 1):
            tensor.copy_(0.2 * torch.randn(tensor.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "backbone-18": randomized(ResNet3D(depth=18)),
        "heads-18": randomized(build_model(depth=18, dropout=0.0)),
        "backbone-50": randomized(ResNet3D(depth=50)),
    }


@pytest.mark.parametrize("which", ["backbone-18", "heads-18", "backbone-50"])
def test_layer_names_and_shapes_match_the_model(models, which):
    model = models[which]
    layers = list_layers(model, frames=4, size=32)
    assert [info.name for info in layers] == expected_layer_names(model)
    reference = explicit_layers(model, X)
    assert {info.name: info.shape for info in layers} == {n: tuple(t.shape[1:]) for n, t in reference.items()}
    if which == "heads-18":
        head = layers[-1]
        assert head.name == "last_linear" and head.shape == (24,)
        assert [q for q, _ in head.parts] == [f"last_linear.{o}" for o in model.last_linear]
    if which == "backbone-50":
        assert [i.name for i in layers if i.name.startswith("layer3.")] == [f"layer3.{i}" for i in range(6)]


@pytest.mark.parametrize("mode", POOLS)
def test_hooked_layers_equal_an_explicit_forward(models, mode):
    model = models["heads-18"]
    layers = list_layers(model, frames=4, size=32)
    reference = explicit_layers(model, X)
    assert not torch.equal(reference["bn1"], reference["relu"])  # the in-place ReLU case is exercised
    with LayerTap(model, layers, reduce=lambda out: pool(out, mode)) as tap, torch.no_grad():
        got = tap(X)
    assert list(got) == [info.name for info in layers]
    for info in layers:
        expected = pool(reference[info.name], mode)
        assert tuple(got[info.name].shape[1:]) == pooled_shape(info.shape, mode), info.name
        torch.testing.assert_close(got[info.name], expected, rtol=1e-5, atol=1e-6, msg=info.name)


def test_the_pass_stops_after_the_deepest_layer_asked_for(models):
    model = models["backbone-18"]
    by_name = {info.name: info for info in list_layers(model, frames=4, size=32)}
    ran = []
    handle = model.layer2.register_forward_hook(lambda *a: ran.append("layer2"))
    try:
        with LayerTap(model, [by_name["layer1.1"], by_name["conv1"]], reduce=lambda o: pool(o, "mean")) as tap:
            got = tap(X)
        assert ran == [] and list(got) == ["layer1.1", "conv1"]
        with LayerTap(model, [by_name["layer2"]], reduce=lambda o: pool(o, "mean")) as tap:
            tap(X)
        assert ran == ["layer2"]
    finally:
        handle.remove()
    assert not model._forward_hooks and not model.conv1._forward_hooks  # the taps removed their hooks


def test_view_averaging_and_vector_outputs():
    x = torch.arange(12.0).reshape(6, 2)  # 3 videos x 2 views
    torch.testing.assert_close(average_views(x, 2), torch.tensor([[1.0, 2.0], [5.0, 6.0], [9.0, 10.0]]))
    with pytest.raises(ValueError, match="multiple of 4 views"):
        average_views(x, 4)
    for mode in POOLS:
        assert pool(x, mode).shape == (6, 2) and pooled_shape((2,), mode) == (2,)


def test_projection_is_a_fixed_sparse_linear_map():
    proj = SparseRandomProjection(300, 64, seed=3)
    dense = proj.dense()
    nonzero = dense != 0
    assert nonzero.sum(dim=1).tolist() == [4] * 300  # 4 outputs per input ...
    for block in range(4):  # ... one in each quarter of the outputs
        assert nonzero[:, block * 16 : (block + 1) * 16].sum(dim=1).tolist() == [1] * 300
    assert set(dense[nonzero].abs().tolist()) == {0.5}
    x = torch.randn(5, 300)
    torch.testing.assert_close(proj(x), x @ dense, rtol=1e-5, atol=1e-5)


def test_projection_is_seeded_and_independent_per_layer_across_chunks():
    d = CHUNK + 300  # two chunks
    a, b = SparseRandomProjection(d, 32, seed=1), SparseRandomProjection(d, 32, seed=1)
    x = torch.randn(3, d)
    assert torch.equal(a(x), b(x))
    assert not torch.equal(a(x), SparseRandomProjection(d, 32, seed=2)(x))
    assert layer_seed(0, "layer1") == layer_seed(0, "layer1") != layer_seed(0, "layer2")
    # the second chunk's inputs are mapped too, each to 4 entries of +-1/2
    basis = torch.zeros(4, d)
    picks = [0, CHUNK - 1, CHUNK, d - 1]
    basis[range(4), picks] = 1.0
    columns = a(basis)
    assert ((columns != 0).sum(dim=1) == 4).all() and set(columns[columns != 0].abs().tolist()) == {0.5}


def test_projection_keeps_pairwise_distances_within_the_jl_tolerance():
    n, d, k = 24, 100_000, 2048
    g = torch.Generator().manual_seed(11)
    shared = torch.randn(1, d, generator=g)
    # ReLU'd, correlated, partly sparse vectors, like pooled-free activations
    points = torch.relu(0.7 * shared + torch.randn(n, d, generator=g)) * (torch.rand(n, d, generator=g) < 0.6)
    projected = SparseRandomProjection(d, k, seed=0)(points)
    # JL (Dasgupta & Gupta): k >= 4 ln n / (eps^2/2 - eps^3/3) keeps every squared distance within 1 +- eps
    eps = next(e for e in np.arange(0.01, 1.0, 0.001) if k >= 4 * math.log(n) / (e**2 / 2 - e**3 / 3))
    ratios = [
        float(((projected[i] - projected[j]) ** 2).sum() / ((points[i] - points[j]) ** 2).sum())
        for i, j in itertools.combinations(range(n), 2)
    ]
    assert 1 - eps <= min(ratios) and max(ratios) <= 1 + eps, (eps, min(ratios), max(ratios))


def manifest_for(n, layers):
    return {
        "format_version": 1,
        "complete": False,
        "num_videos": n,
        "pool": "mean",
        "layers": {
            name: {"file": f"{name}.npy", "shape": [n, *shape], "dtype": "float32"} for name, shape in layers.items()
        },
    }


def inputs_for(n):
    return pd.DataFrame({"video_name": [f"v{i}.mp4" for i in range(n)], "path": [f"/d/v{i}.mp4" for i in range(n)]})


def test_a_row_counts_as_done_only_after_all_its_features_are_written(tmp_path, monkeypatch):
    layers = {"a": (3,), "b": (2, 2)}
    store = FeatureStore(tmp_path / "out", list(layers))
    assert store.prepare(manifest_for(6, layers), inputs_for(6)) == "created"
    store.write_rows([0, 1], {"a": np.ones((2, 3)), "b": np.full((2, 2, 2), 2.0)})
    store.fail_rows([5], ["v5.mp4: InvalidDataError: broken"])

    written = []
    real_write = FeatureStore._write

    def killed_after_first_layer(path, rows, value):
        if written:  # the process dies while writing the second layer of rows 2 and 3
            raise KeyboardInterrupt
        written.append(path.name)
        real_write(path, rows, value)

    monkeypatch.setattr(FeatureStore, "_write", staticmethod(killed_after_first_layer))
    with pytest.raises(KeyboardInterrupt):
        store.write_rows([2, 3], {"a": np.full((2, 3), 7.0), "b": np.full((2, 2, 2), 7.0)})
    monkeypatch.setattr(FeatureStore, "_write", staticmethod(real_write))
    assert written == ["a.npy"]
    assert np.load(tmp_path / "out" / "a.npy")[2].tolist() == [7.0, 7.0, 7.0]  # half of row 2 is on disk ...
    with open(tmp_path / "out" / ".progress" / "errors-rank0-cut.jsonl", "w") as fh:
        fh.write('{"row": 4, "err')  # ... and an error line cut short by the kill

    again = FeatureStore(tmp_path / "out", list(layers))
    assert again.prepare(manifest_for(6, layers), inputs_for(6)) == "resumed"
    assert again.status().tolist() == [OK, OK, PENDING, PENDING, PENDING, ERROR]  # ... but it is not done
    assert again.errors() == {5: "v5.mp4: InvalidDataError: broken"}
    assert np.isnan(np.load(tmp_path / "out" / "b.npy")[5]).all()
    counts = again.write_index(inputs_for(6))
    assert counts == {"pending": 3, "ok": 2, "error": 1}
    index = pd.read_csv(tmp_path / "out" / "index.csv", keep_default_na=False)
    assert list(index.columns) == ["row", "video_name", "path", "status", "error"]
    assert index["status"].tolist() == ["ok", "ok", "pending", "pending", "pending", "error"]
    assert index["error"].tolist()[5] == "v5.mp4: InvalidDataError: broken"


def test_store_refuses_other_settings_and_foreign_folders(tmp_path):
    layers = {"a": (3,)}
    store = FeatureStore(tmp_path / "out", ["a"])
    store.prepare(manifest_for(4, layers), inputs_for(4))
    other = manifest_for(4, layers) | {"pool": "max"}
    with pytest.raises(FeatureStoreError, match="pool: 'mean' then, 'max' now"):
        store.prepare(other, inputs_for(4))
    assert store.prepare(other, inputs_for(4), overwrite=True) == "created"
    assert json.loads((tmp_path / "out" / "features.json").read_text())["pool"] == "max"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FeatureStoreError, match="not empty and holds no features.json"):
        FeatureStore(tmp_path / "mine", ["a"]).prepare(manifest_for(4, layers), inputs_for(4), overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    np.lib.format.open_memmap(tmp_path / "out" / "a.npy", mode="w+", dtype=np.float32, shape=(3, 3))
    with pytest.raises(FeatureStoreError, match=r"a.npy holds \(3, 3\) float32, the manifest says \(4, 3\)"):
        store.prepare(other, inputs_for(4))


def test_store_refuses_arrays_the_disk_cannot_hold(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    store = FeatureStore(tmp_path / "out", ["a"])
    with pytest.raises(FeatureStoreError, match=r"the arrays need 0.026 MB but .* has 0.001 MB free; choose fewer"):
        store.prepare(manifest_for(100, {"a": (64,)}), inputs_for(100))  # 25,600 bytes > 1,000 free
    assert not (tmp_path / "out" / "a.npy").exists()
