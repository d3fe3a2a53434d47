import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from utils.config import (
    HELP_GROUPS,
    TrainConfig,
    build_parser,
    changed_options,
    default_output_dir,
    learning_options_mismatch,
    load_config_file,
    parse_config,
    parse_key_values,
    write_config_file,
)

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_defaults_and_flags():
    cfg, sources = parse_config(["--batch-size", "4", "--lr", "0.01", "--no-log-model", "--amp", "bf16"])
    assert cfg.batch_size == 4 and cfg.lr == 0.01 and cfg.log_model is False and cfg.amp == "bf16"
    assert sources == dict.fromkeys(("batch_size", "lr", "log_model", "amp"), "command line")
    assert cfg.depth == TrainConfig().depth and cfg.config is None


def test_flag_equal_to_default_still_counts_as_given():
    _, sources = parse_config(["--depth", "50"])
    assert sources["depth"] == "command line"


def test_the_options_the_launch_scripts_pass_parse():
    """launch/common.sh builds every launch's train_ddp.py command (local, SLURM): an option it passes
    that the parser lost or renamed would fail every job at start-up, and only on a cluster."""
    repo = Path(__file__).resolve().parents[1]
    lines = [line for line in (repo / "launch" / "common.sh").read_text().splitlines() if "TRAIN_CMD+=" in line]
    passed = sorted({flag for line in lines for flag in re.findall(r"(--[a-z][a-z0-9-]*)", line)})
    assert passed == ["--config", "--device", "--output-dir", "--resume", "--run-name", "--tracking-uri"], passed
    # the values the scripts use where the parser has choices; a sweep trial's --config is a real file
    values = {"--device": "cpu", "--resume": "auto", "--config": str(repo / "configs" / "demo.yaml")}
    args = [a for flag in passed for a in (flag, values.get(flag, "x"))]
    cfg, sources = parse_config(args)
    assert cfg.config == values["--config"]
    given = {name for name, where in sources.items() if where == "command line"}
    assert given == {"device", "output_dir", "resume", "run_name", "tracking_uri"}
    assert (cfg.device, cfg.resume, cfg.output_dir) == ("cpu", "auto", "x")


def test_yaml_file_then_flags_override(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("batch-size: 3\nepochs: 7\nunfreeze: {layer4: 2, layer3: 4}\nfreeze: [conv1, bn1]\n")
    cfg, sources = parse_config(["--config", str(p), "--epochs", "9"])
    assert cfg.batch_size == 3 and cfg.epochs == 9 and cfg.config == str(p)
    assert cfg.unfreeze == "layer4:2,layer3:4" and cfg.freeze == "conv1,bn1"
    assert sources == {"batch_size": str(p), "unfreeze": str(p), "freeze": str(p), "epochs": "command line"}


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
    with pytest.raises(ValueError, match=r"c.yaml.*batch_sise"):  # the demo's file too, through --config
        parse_config(["--config", str(p)], demo_config=DEMO)
    p.write_text("config: configs/demo.yaml\n")  # one file per run: a file cannot include another
    with pytest.raises(ValueError, match=r"c.yaml: unknown option\(s\) \['config'\]"):
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


def test_help_renders_in_groups_and_every_option_is_in_one(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--warmup-steps" in out and "configs/demo.yaml" in out.split("\n\n")[1]
    titles = [line[:-1] for line in out.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles == ["options", *HELP_GROUPS]
    # every option in exactly one group, so none is missing from --help's groups
    grouped = [name for names in HELP_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in fields(TrainConfig) if f.name != "config")
    # in its own group's section: --lr under optimisation, --demo-videos under demo
    sections = dict(zip(titles, re.split(r"\n(?=\S[^\n]*:\n)", out.split("\n\n", 2)[2])))
    assert "--lr LR" in sections["optimisation and schedule"] and "--demo-videos" in sections[titles[-1]]
    assert "--lr LR" not in sections["data"]


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


def test_a_run_without_data_or_config_reads_the_demo_file():
    cfg, sources = parse_config(["--epochs", "3"], demo_config=DEMO)
    assert cfg.config == str(DEMO) and sources["depth"] == str(DEMO) and sources["epochs"] == "command line"
    assert (cfg.depth, cfg.width, cfg.frames, cfg.size, cfg.output_dir) == (18, 32, 8, 48, "runs/demo")
    assert cfg.epochs == 3  # an explicit flag wins over the file
    assert "--width 32  (" + str(DEMO) + ")" in changed_options(cfg, sources)
    assert "--epochs 3  (command line)" in changed_options(cfg, sources)


@pytest.mark.parametrize("data", [["--videos", "v"], ["--cache", "c"]])
def test_a_run_given_data_does_not_read_the_demo_file(data):
    cfg, sources = parse_config([*data, "--annotations", "a.csv"], demo_config=DEMO)
    assert cfg.config is None and cfg.depth == TrainConfig().depth and cfg.output_dir is None
    assert set(sources) == {data[0][2:], "annotations"}


def test_an_edited_copy_of_the_demo_file_takes_effect_and_flags_still_win(tmp_path):
    copy = tmp_path / "my_demo.yaml"
    copy.write_text(DEMO.read_text().replace("depth: 18", "depth: 34").replace("lr: 7.0e-4", "lr: 1.0e-3"))
    cfg, sources = parse_config(["--config", str(copy), "--lr", "0.002"], demo_config=DEMO)
    assert cfg.config == str(copy) and cfg.depth == 34 and sources["depth"] == str(copy)
    assert cfg.lr == 0.002 and sources["lr"] == "command line"
    assert cfg.width == 32  # the rest of the copy as the demo has it
    assert cfg.videos is None and cfg.cache is None  # still the demo: the copy names no data


def test_the_saved_config_reads_back_as_the_same_run(tmp_path):
    cfg, _ = parse_config(
        ["--amp", "off", "--task-weights", "", "--unfreeze", "layer4:2", "--lr", "1e-5", "--no-plots"], demo_config=DEMO
    )
    cfg.output_dir = str(tmp_path / "run")
    write_config_file(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# The resolved configuration of the run in " + str(tmp_path / "run"))
    assert "output_dir" not in yaml.safe_load(text) and "config" not in yaml.safe_load(text)
    again, sources = parse_config(["--config", str(tmp_path / "config.yaml")], demo_config=DEMO)
    assert sources.keys() == set(TrainConfig().to_dict()) - {"config", "output_dir"}  # every option, from the file
    for name in sources:
        assert getattr(again, name) == getattr(cfg, name), name
    assert again.output_dir is None  # a repeat writes a new directory unless given one


def test_the_default_output_dir_of_a_real_data_run_is_new_and_named_after_the_run():
    now = 1_800_000_000.0
    stamp = default_output_dir(None, now)
    assert re.fullmatch(r"runs/\d{8}-\d{6}", stamp)
    assert default_output_dir("lr sweep/3", now) == "runs/lr_sweep_3-" + stamp[len("runs/") :]


def test_the_demo_file_holds_the_preset_it_replaced_plus_its_validation_clips():
    # the demo's settings as train_ddp.py's DEMO_PRESET set them, which old runs/demo checkpoints hold
    preset = {
        **dict(depth=18, width=32, frames=8, size=48, batch_size=16, epochs=18, lr=7e-4, weight_decay=0.01),
        **dict(dropout=0.2, num_workers=2, checkpoint_every=0, val_every=1, patience=0, warmup_steps=20),
        **dict(task_weights="joint=3,communicating=2", output_dir="runs/demo"),
    }
    # since then: validation on 500 more clips, every third epoch (docs/training.md)
    now = {**preset, "demo_val_videos": 500, "val_every": 3}
    cfg, sources = parse_config([], demo_config=DEMO)
    assert set(sources) == set(now)
    assert {**cfg.to_dict(), "config": None} == TrainConfig(**now).to_dict()
    old = {**TrainConfig(**preset).to_dict(), "demo_cache": True}  # what such a checkpoint's config holds
    del old["config"]
    # an old demo run validated on other clips: continuing it would mix two validation sets in one run
    assert "--demo-val-videos 0 -> 500" in learning_options_mismatch(old, cfg)
    assert learning_options_mismatch({**old, "demo_val_videos": 500}, cfg) is None  # val_every may change
