"""The shipped config files (configs/*.yaml) load through the real parser, each checked against
what it is for: the demo's file is what a run without data uses, the fine-tuning recipes start
from a MiT checkpoint at depth 50, and the earlier Lightning version's recipe is what its paragraph in
docs/training.md says."""

from pathlib import Path

import pytest

import train_ddp
from resnet3d import build_model, freeze
from resnet3d.freeze import parameters_by_prefix
from utils.config import TrainConfig, parse_config, parse_key_values

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
DEMO = "demo.yaml"
RECIPES = [p for p in CONFIGS if p.name != DEMO]  # fine-tuning recipes for real data


def test_there_are_recipes_and_what_they_freeze_or_unfreeze_is_in_their_model():
    """A mistyped layer in --freeze fails at start-up, in --unfreeze only at its epoch on the cluster."""
    assert {p.name for p in CONFIGS} >= {"earlier_version.yaml", "finetune_8gpu.yaml", DEMO}
    named = 0
    for path in RECIPES:
        cfg, _ = parse_config(["--config", str(path)])
        prefixes = [p.strip() for p in cfg.freeze.split(",") if p.strip()] if cfg.freeze else []
        prefixes += list(parse_key_values(cfg.unfreeze, "--unfreeze", int, sep=":"))
        # raises naming any prefix that covers no parameter of the recipe's model
        covered = parameters_by_prefix(build_model(depth=cfg.depth, width=cfg.width), prefixes)
        assert all(covered.values()), (path.name, covered.keys())
        named += len(prefixes)
    assert named >= 4  # the recipes do freeze and unfreeze (earlier: layer4.2 and the head trained)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads_and_fine_tunes_a_mit_checkpoint_at_depth_50(path):
    cfg, sources = parse_config(["--config", str(path), "--videos", "v", "--annotations", "a.csv"])
    assert isinstance(cfg, TrainConfig) and len(sources) > 10
    assert cfg.pretrained.endswith("_resnet3d50_segment16.pth.tar") and cfg.depth == 50
    assert cfg.output_dir is None  # a recipe runs on data of yours: its output dir is yours too


def test_the_demo_file_is_what_a_run_without_data_uses_and_needs_no_download():
    path = CONFIGS[0].with_name(DEMO)
    assert train_ddp.DEMO_CONFIG == path
    cfg, sources = parse_config([], demo_config=path)
    assert cfg.config == str(path) and len(sources) > 10
    assert cfg.videos is None and cfg.cache is None and cfg.annotations is None  # the built-in clips
    assert cfg.pretrained is None  # trains from scratch, offline
    assert cfg.depth == 18 and cfg.width < TrainConfig().width  # small enough for CPUs
    assert cfg.output_dir == "runs/demo"  # where the README's `mlflow ui` command looks


def test_the_earlier_recipe_trains_only_layer4_2_and_the_head():
    cfg, _ = parse_config(["--config", str(CONFIGS[0].with_name("earlier_version.yaml"))])
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.weight_decay) == ("adam", 5e-6, 24, 0.0)
    assert (cfg.schedule, cfg.restart_epochs, cfg.restart_mult, cfg.min_lr_ratio) == ("restarts", 10, 2, 0.0)
    assert (cfg.patience, cfg.split, cfg.frames, cfg.size, cfg.dropout) == (4, "random42", 16, 224, 0.5)
    model = build_model(depth=50, dropout=cfg.dropout)
    freeze(model, cfg.freeze.split(","))
    trainable = {
        name.split(".")[0] + "." + name.split(".")[1] for name, p in model.named_parameters() if p.requires_grad
    }
    assert trainable == {"layer4.2"} | {n for n in trainable if n.startswith("last_linear.")}
    assert any(n.startswith("last_linear.") for n in trainable)
