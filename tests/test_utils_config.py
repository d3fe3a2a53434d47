import json
import re
from pathlib import Path

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


def test_the_options_the_launch_scripts_pass_parse():
    """launch/common.sh builds every launch's train_ddp.py command (local, SLURM): an option it passes
    that the parser lost or renamed would fail every job at start-up, and only on a cluster."""
    repo = Path(__file__).resolve().parents[1]
    lines = [line for line in (repo / "launch" / "common.sh").read_text().splitlines() if "TRAIN_CMD+=" in line]
    passed = sorted({flag for line in lines for flag in re.findall(r"(--[a-z][a-z0-9-]*)", line)})
    assert passed == ["--device", "--output-dir", "--resume", "--run-name", "--tracking-uri"], passed
    values = {"--device": "cpu", "--resume": "auto"}  # the values the scripts use where the parser has choices
    args = [a for flag in passed for a in (flag, values.get(flag, "x"))]
    cfg, explicit = parse_config(args)
    assert explicit == {"device", "output_dir", "resume", "run_name", "tracking_uri"}
    assert (cfg.device, cfg.resume, cfg.output_dir) == ("cpu", "auto", "x")


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


def test_comm_options_parse_and_bad_choice_is_refused(capsys):
    cfg, _ = parse_config(["--grad-compression", "bf16", "--ddp-bucket-mb", "4", "--gradient-as-bucket-view"])
    assert (cfg.grad_compression, cfg.ddp_bucket_mb, cfg.gradient_as_bucket_view) == ("bf16", 4.0, True)
    assert (TrainConfig().grad_compression, TrainConfig().ddp_bucket_mb) == ("none", 25.0)  # DDP's defaults
    with pytest.raises(SystemExit):
        parse_config(["--grad-compression", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_comm_options_mismatch_names_each_changed_option():
    from utils.config import comm_options_mismatch

    saved = TrainConfig(grad_compression="bf16", ddp_bucket_mb=4.0).to_dict()
    assert comm_options_mismatch(saved, TrainConfig(grad_compression="bf16", ddp_bucket_mb=4.0)) is None
    msg = comm_options_mismatch(
        saved, TrainConfig(grad_compression="fp16", ddp_bucket_mb=4.0, gradient_as_bucket_view=True)
    )
    assert "--grad-compression bf16 -> fp16" in msg and "--gradient-as-bucket-view False -> True" in msg
    assert "--ddp-bucket-mb" not in msg
    # a checkpoint from before these options existed was trained with the defaults
    old = {
        k: v
        for k, v in TrainConfig().to_dict().items()
        if k not in ("grad_compression", "ddp_bucket_mb", "gradient_as_bucket_view")
    }
    assert comm_options_mismatch(old, TrainConfig()) is None
    assert "--grad-compression none -> bf16" in comm_options_mismatch(old, TrainConfig(grad_compression="bf16"))


def test_learning_options_mismatch_names_input_and_objective_changes():
    from utils.config import learning_options_mismatch

    saved = TrainConfig(size=48, frames=8, task_weights="joint=3").to_dict()
    # how long a run trains may change on resume; what it learns from may not
    assert learning_options_mismatch(saved, TrainConfig(size=48, frames=8, task_weights="joint=3", epochs=30)) is None
    msg = learning_options_mismatch(saved, TrainConfig(size=64, frames=8, task_weights="", demo_static=True))
    assert "--size 48 -> 64" in msg and "--task-weights joint=3 -> ''" in msg and "--demo-static False -> True" in msg
    assert "--frames" not in msg and "start a new --output-dir" in msg
    # a checkpoint from before an option existed was trained with its default
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "task_weights"}
    assert learning_options_mismatch(old, TrainConfig()) is None
    assert "--task-weights '' -> joint=3" in learning_options_mismatch(old, TrainConfig(task_weights="joint=3"))
