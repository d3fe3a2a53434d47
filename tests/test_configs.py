"""The shipped recipes (configs/*.yaml) load through the real parser, and the earlier version's
recipe is what its paragraph in docs/training.md says."""

from pathlib import Path

import pytest

from resnet3d import build_model, freeze
from resnet3d.freeze import parameters_by_prefix
from utils.config import TrainConfig, parse_config, parse_key_values

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_recipes_and_what_they_freeze_or_unfreeze_is_in_their_model():
    """A mistyped layer in --freeze fails at start-up, in --unfreeze only at its epoch on the cluster."""
    assert {p.name for p in CONFIGS} >= {"earlier_version.yaml", "finetune_8gpu.yaml"}
    named = 0
    for path in CONFIGS:
        cfg, _ = parse_config(["--config", str(path)])
        prefixes = [p.strip() for p in cfg.freeze.split(",") if p.strip()] if cfg.freeze else []
        prefixes += list(parse_key_values(cfg.unfreeze, "--unfreeze", int, sep=":"))
        # raises naming any prefix that covers no parameter of the recipe's model
        covered = parameters_by_prefix(build_model(depth=cfg.depth, width=cfg.width), prefixes)
        assert all(covered.values()), (path.name, covered.keys())
        named += len(prefixes)
    assert named >= 4  # the recipes do freeze and unfreeze (earlier: layer4.2 and the head trained)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_sets_only_known_options(path):
    cfg, explicit = parse_config(["--config", str(path), "--videos", "v", "--annotations", "a.csv"])
    assert isinstance(cfg, TrainConfig) and len(explicit) > 10
    assert cfg.pretrained.endswith("_resnet3d50_segment16.pth.tar") and cfg.depth == 50


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
