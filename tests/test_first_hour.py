"""What a newcomer meets when something is off: a typo, a missing folder or checkpoint, a table
without a column -- one clear message, once, without a traceback from our code; and where an
evaluation is logged."""

import subprocess
import sys

import mlflow
import pandas as pd
import pytest
from launch_helpers import REPO, child_env, run, train

pytestmark = pytest.mark.slow


def test_a_mistyped_flag_under_torchrun_is_reported_once_with_a_suggestion():
    res = train(None, None, "--batchsize", "8", tiny=False, nproc=2, ok=False, timeout=300)
    assert (
        res.stdout.count("error: unrecognized arguments: --batchsize 8; --batchsize: did you mean --batch-size?") == 1
    )
    assert res.stdout.count("usage: train_ddp.py [options]") == 1
    assert "--prefetch-factor" not in res.stdout  # not the 50-line usage block


def test_a_missing_video_folder_is_one_line_on_rank_zero(tiny_demo, tmp_path):
    _, annotations = tiny_demo
    res = train(tmp_path / "run", (tmp_path / "nowhere", annotations), nproc=2, ok=False, timeout=300)
    assert res.stdout.count(f"error: --videos {tmp_path / 'nowhere'}: no such directory") == 1
    assert 'train_ddp.py", line' not in res.stdout  # no traceback from our code


def test_videos_at_a_folder_of_earlier_pt_clips_says_to_convert_them(tiny_demo, tmp_path):
    import torch

    _, annotations = tiny_demo
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in pd.read_csv(annotations)["video_name"]:
        torch.save(torch.zeros(3, 4, 32, 32), clips / (name.rsplit(".", 1)[0] + ".pt"))
    res = train(tmp_path / "run", (clips, annotations), ok=None)
    assert res.returncode == 1
    errors = [line for line in res.stdout.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: --videos {clips}: {clips}/"), res.stdout[-3000:]
    assert f"`python -m datasets.prepare --from-pt {clips} --annotations CSV --out CACHE_DIR`" in errors[0]
    assert 'train_ddp.py", line' not in res.stdout


def test_a_table_without_a_column_advises_the_tasks_flag(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    table = pd.read_csv(annotations).drop(columns=["joint_score"])
    table.to_csv(tmp_path / "table.csv", index=False)
    res = train(tmp_path / "run", (videos, tmp_path / "table.csv"), ok=None)
    assert res.returncode == 1
    assert "missing required column(s) ['joint_score']" in res.stdout
    assert (
        "with --tasks distance,object,expanse,facingness,communicating,valence,arousal,peoplecount,location"
        in res.stdout
    )
    assert "tasks=..." not in res.stdout and "Traceback" not in res.stdout


def test_help_texts_show_each_default_once():
    for script in ("predict.py", "evaluate.py", "train_ddp.py", "extract_features.py"):
        out = subprocess.run(
            [sys.executable, str(REPO / script), "--help"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=child_env(),
            timeout=120,
        ).stdout
        assert "(default: None)" not in out, script
        entries = out.split("\n  -")  # one option's help each
        doubled = [e.split()[0] for e in entries if e.count("default") > 1]
        assert not doubled, (script, doubled)


def test_evaluate_logs_into_the_training_runs_store_and_says_so(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    out = tmp_path / "run"
    train(out, tiny_demo, max_steps=2, batch_size=4)
    best = out / "checkpoints" / "best.pt"
    assert best.exists()  # --max-steps ended before an epoch's validation: the final validation made it
    args = [
        sys.executable,
        str(REPO / "evaluate.py"),
        "--checkpoint",
        str(best),
        "--videos",
        str(videos),
        "--annotations",
        str(annotations),
        "--split",
        "val",
        "--num-workers",
        "0",
        "--no-progress",
        "--no-plots",
    ]
    res = run([*args, "--output-dir", str(tmp_path / "eval")], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    store = f"sqlite:///{out / 'mlflow.db'}"
    assert f"to look at it: mlflow ui --backend-store-uri {store}" in res.stdout
    client = mlflow.MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    training = next(r for r in runs if r.data.tags.get("entry_point") == "train_ddp.py")
    (evaluation,) = [r for r in runs if r.data.tags.get("entry_point") == "evaluate.py"]
    assert evaluation.data.tags["training_run_id"] == training.info.run_id
    assert "val/valence/spearman" in evaluation.data.metrics
    # the training store gone: the evaluation still logs, beside its outputs, and says why
    (out / "mlflow.db").unlink()
    res = run([*args, "--output-dir", str(tmp_path / "eval2")], timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"note: the training run's MLflow store cannot be used ({out / 'mlflow.db'} does not exist)" in res.stdout
    assert (tmp_path / "eval2" / "mlflow.db").exists()


def test_a_missing_checkpoint_is_one_line_with_a_hint(tiny_demo, tmp_path):
    videos, annotations = tiny_demo
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    res = run(
        [
            sys.executable,
            str(REPO / "evaluate.py"),
            "--checkpoint",
            str(tmp_path / "checkpoints" / "best.pt"),
            "--videos",
            str(videos),
            "--annotations",
            str(annotations),
            "--output-dir",
            str(tmp_path / "e"),
        ],
        timeout=120,
    )
    assert res.returncode == 1
    assert res.stdout.strip().splitlines()[-1] == (
        f"error: --checkpoint {tmp_path / 'checkpoints' / 'best.pt'}: no such checkpoint file (its run wrote no "
        f"best.pt: no validation ran there; {tmp_path / 'checkpoints' / 'last.pt'} exists)"
    )
    assert "Traceback" not in res.stdout
