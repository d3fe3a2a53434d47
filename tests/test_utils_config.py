import json

import pytest

from utils.config import TrainConfig, build_parser, load_config_file, parse_config, parse_key_values


def test_defaults_and_flags():
    cfg, explicit = parse_config(["--batch-size", "4", "--lr", "0.01", "--no-log-model", "--amp", "bf16"])
    assert cfg.batch_size == 4 and cfg.lr == 0.01 and cfg.log_model is False and cfg.amp == "bf16"
    assert explicit == {"batch_size", "lr", "log_model", "amp"}
    assert cfg.depth == TrainConfig().depth


def test_flag_equal_to_default_still_counts_as_explicit():
    _, explicit = parse_config(["--depth", "50"])
    assert "depth" in explicit


def test_required_issue_flags_exist():
    flags = {a for action in build_parser()._actions for a in action.option_strings}
    for flag in ["--videos", "--annotations", "--output-dir", "--epochs", "--max-steps", "--batch-size",
                 "--lr", "--seed", "--depth", "--frames", "--size", "--pretrained", "--tasks", "--amp",
                 "--accum-steps", "--clip-grad", "--checkpoint-every", "--resume", "--tracking-uri",
                 "--experiment", "--run-name", "--num-workers", "--bad-video", "--config"]:
        assert flag in flags, flag


def test_yaml_file_then_flags_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("batch-size: 3\nepochs: 7\nunfreeze: {layer4: 2, layer3: 4}\nfreeze: [conv1, bn1]\n")
    cfg, explicit = parse_config(["--config", str(p), "--epochs", "9"])
    assert cfg.batch_size == 3 and cfg.epochs == 9
    assert cfg.unfreeze == "layer4:2,layer3:4" and cfg.freeze == "conv1,bn1"
    assert {"batch_size", "epochs", "unfreeze", "freeze"} <= explicit


def test_json_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"depth": 18, "compile": "true"}))
    cfg, _ = parse_config(["--config", str(p)])
    assert cfg.depth == 18 and cfg.compile is True


def test_unknown_key_in_file_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("batch_sise: 3\n")
    with pytest.raises(ValueError, match=r"c.yaml.*batch_sise"):
        load_config_file(p)


def test_bad_type_in_file_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: many\n")
    with pytest.raises(ValueError, match=r"epochs must be int"):
        load_config_file(p)


def test_parse_key_values():
    assert parse_key_values("location=0.2, peoplecount=0.5", "w") == {"location": 0.2, "peoplecount": 0.5}
    assert parse_key_values("layer4:2", "u", int, sep=":") == {"layer4": 2}
    with pytest.raises(ValueError, match="expected name=value"):
        parse_key_values("location", "w")


def test_help_renders(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    assert "--warmup-steps" in capsys.readouterr().out
