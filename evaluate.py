"""Evaluate a checkpoint on a split of an annotation table; optionally compare with human ratings.

    python evaluate.py --checkpoint runs/x/checkpoints/best.pt --videos DIR --annotations CSV \\
        --split test --output-dir runs/x/eval [--views 4x3] [--human-ratings ratings.csv] [--run-id checkpoint]
    torchrun --nproc_per_node=8 evaluate.py ...     # same numbers, faster
    python evaluate.py ... --cache CACHE_DIR        # clips from the frame cache instead of --videos

With ``--cache`` the clips come from a frame cache (``python -m datasets.prepare``) like the
training loop's own validation on it: N temporal views (``--views Nx1``, N x T <= the K stored
frames); spatial views need the videos, since the cache keeps only the centre square.

Every video of the split is predicted exactly once whatever the number of processes (each
rank takes every W-th video, predictions are gathered, metrics are computed once on the
whole set), so 1, 2 or 3 ranks write identical metrics.  Multi-view testing (``--views NxM``:
N temporal clips x M spatial crops) averages each video's views in probability space.

Outputs in --output-dir (SPLIT = the --split value):
    predictions_SPLIT.csv   one row per video: video_name, predictions in the annotation
                            table's schema (utils/evaluation.py), error, then the annotated
                            values as annotated_<column>
    metrics_SPLIT.json      per-task metrics (and the human comparison) and the tolerance
                            within which ratings tie in the Spearman correlations; only
                            numbers that do not depend on how the run was launched
    info_SPLIT.json         what was evaluated how: checkpoint, clip shape, views, world
                            size, run time, MLflow run, failed videos
    human_SPLIT.csv         with --human-ratings: one row per feature
    plots_SPLIT/*.png       predicted vs annotated per task, metric bars, human comparison,
                            training curves (when the run's metrics.jsonl or MLflow run is found)
All of them are logged to MLflow: by default a new run in --experiment of the training run's own
store (recorded in the checkpoint; tagged with the training run's id), or the run given by
--run-id (``--run-id checkpoint`` = the training run that wrote the checkpoint), whose status is
left alone.  MLflow being unreachable costs a warning, never the evaluation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.human_ratings import load_human_ratings, video_key
from analysis.reliability import compare_with_humans
from datasets import (
    MultiViewClipDataset,
    PtClipsError,
    add_decode_arguments,
    build_targets,
    decode_policy_from_args,
    load_annotation_table,
    parse_views,
    scan_video_root,
)
from datasets.splits import select_split
from inference import (
    CHECKPOINT_ERRORS,
    add_inference_arguments,
    infer_dataset,
    load_inference_model,
    open_cached_views,
)
from utils.cli import CommandLineParser, run_entry_point
from utils.distributed import destroy_distributed, init_distributed
from utils.eval_logging import EvalLogger
from utils.evaluation import (
    flatten_metrics,
    format_metrics_table,
    per_video_values,
    prediction_columns_for_csv,
    prediction_frame,
    write_csv,
    write_json,
)
from utils.metrics import TIE_TOLERANCE, evaluation_metrics
from utils.tracking import default_tracking_uri, store_unreachable, ui_command

SPLITS = ("train", "val", "test", "all")
TARGET_PREFIX = "annotated_"


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(description="Evaluate a checkpoint: metrics, per-video predictions, human comparison.")
    p.add_argument("--checkpoint", required=True, help="this project's checkpoint, or an earlier Lightning one")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", help="video root (searched recursively for the table's video_name)")
    src.add_argument("--cache", help="frame cache directory (python -m datasets.prepare) instead of the videos")
    p.add_argument("--annotations", required=True, help="annotation CSV (cleaned or raw)")
    p.add_argument("--split", default="test", choices=SPLITS, help="which videos of the table to evaluate")
    p.add_argument(
        "--split-method",
        default=None,
        choices=("auto", "hash", "column", "random42"),
        help="how the table is split (default: what the checkpoint was trained with, else auto)",
    )
    p.add_argument("--val-fraction", type=float, default=None, help="default: the checkpoint's")
    p.add_argument("--test-fraction", type=float, default=None, help="default: the checkpoint's")
    p.add_argument(
        "--output-dir",
        default="runs/eval",
        help="where the predictions, metrics, info and plots are written (and the fallback MLflow store)",
    )
    p.add_argument("--views", default="1x1", help="N temporal clips x M spatial crops per video, e.g. 4x3")
    add_inference_arguments(p, amp_note="probabilities are float32 either way")
    p.add_argument("--depth", type=int, default=None, help="only for checkpoints that do not record it")
    p.add_argument("--tasks", default=None, help="only for checkpoints that do not record them")
    p.add_argument("--frames", type=int, default=None, help="clip length (default: as trained, else 16)")
    p.add_argument("--size", type=int, default=None, help="clip size (default: as trained, else 224)")
    g = p.add_argument_group("comparison with human ratings")
    g.add_argument(
        "--human-ratings",
        default=None,
        help="long (subjectID, video_name, question_name, "
        "likert_response) or wide (video_name + one column per feature) CSV",
    )
    g.add_argument("--human-form", default="auto", choices=("auto", "long", "wide"))
    g.add_argument(
        "--human-scale",
        default="auto",
        choices=("auto", "likert", "unit"),
        help="wide form: Likert 1-5 means or values already in [0, 1]",
    )
    g.add_argument(
        "--human-invert",
        default="",
        help="comma list of human features whose scale runs the other way (compared as 1 - rating)",
    )
    g.add_argument("--ceiling-splits", type=int, default=100, help="random split-halves for the noise ceiling")
    g.add_argument("--min-videos", type=int, default=3, help="fewest videos a correlation is computed over")
    g.add_argument("--seed", type=int, default=0, help="seed of the split-halves")
    t = p.add_argument_group("MLflow")
    t.add_argument(
        "--tracking-uri",
        default=None,
        help="default: $MLFLOW_TRACKING_URI, else the store of the "
        "training run that wrote the checkpoint, else (unreachable, or none recorded) sqlite under "
        "--output-dir",
    )
    t.add_argument(
        "--experiment", default="social-vision-eval", help="experiment of a new run (tagged with the training run's id)"
    )
    t.add_argument(
        "--run-id",
        default=None,
        help="log into this existing run instead of a new one; "
        "'checkpoint' = the training run that wrote the checkpoint",
    )
    t.add_argument("--run-name", default=None)
    t.add_argument("--no-mlflow", action="store_true", help="write the files only")
    p.add_argument(
        "--train-metrics",
        default=None,
        help="a training run's metrics.jsonl for the curves plot (default: the one next to the checkpoint, if any)",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--dist-timeout", type=float, default=1800.0, help="seconds a collective may wait")
    add_decode_arguments(p)  # used with --videos
    return p


def log0(info, *msg) -> None:
    if info.is_main:
        print(*msg, flush=True)


def choose_split(table: pd.DataFrame, args, config: dict) -> tuple[np.ndarray, pd.Series, dict]:
    """Rows of the requested split, the split labels, and how they were made."""
    return select_split(
        table,
        args.split,
        method=args.split_method,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        trained_with=config,
        source=args.annotations,
    )


def tracking_uri_for(args, spec, ckpt_path: Path, out_dir: Path) -> tuple[str, str | None]:
    """(the MLflow store to log into, a note to print).  By default the store of the training run
    that wrote the checkpoint (the store ``mlflow ui`` already shows for it); when it cannot be
    reached, or the checkpoint names none, a sqlite store under --output-dir."""
    if args.tracking_uri:
        return args.tracking_uri, None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"], None
    beside = ckpt_path.resolve().parent.parent / "mlflow.db"  # checkpoints that predate recording it
    candidates = [
        spec.tracking_uri,
        spec.config.get("tracking_uri"),
        f"sqlite:///{beside}" if beside.exists() else None,
    ]
    fallback = default_tracking_uri(out_dir)
    note = None
    for uri in dict.fromkeys(c for c in candidates if c):
        why = store_unreachable(uri)
        if why is None:
            return uri, None
        note = f"the training run's MLflow store cannot be used ({why}); logging into {fallback} instead"
    return fallback, note


def human_comparison(args, human, names, probs, targets, tasks, labels_of_rows) -> tuple[dict, pd.DataFrame]:
    """Model (and GPT annotation) agreement with people, per human feature."""
    keys = [video_key(n) for n in names]
    model = per_video_values(keys, probs, tasks)
    gpt = per_video_values(keys, targets, tasks)  # the annotation table's values (location: 1 = Outdoor)
    report = compare_with_humans(
        human.ratings,
        human.form == "long",
        model.dropna(how="all"),
        gpt,
        n_splits=args.ceiling_splits,
        seed=args.seed,
        min_videos=args.min_videos,
    )
    rated = set(human.ratings["video_key"])
    evaluated = set(model.index[model.notna().any(axis=1)])
    summary = {
        "source": human.source,
        "form": human.form,
        "human_rated_videos": len(rated),
        "compared_videos": len(rated & evaluated),
        "human_rated_not_evaluated": len(rated - evaluated),
        "raters": int(human.ratings["subject"].nunique()) if human.form == "long" else None,
        "no_model_output": human.unmatched,
        "unknown_features": human.unknown,
        "inverted": human.inverted,
        "empty_responses_skipped": human.skipped_empty,
        "repeated_ratings_averaged": human.repeated_averaged,
    }
    if summary["human_rated_not_evaluated"]:
        summary["note"] = (
            f"{summary['human_rated_not_evaluated']} human-rated videos are not among the evaluated "
            f"ones (split {args.split!r}, or not in the annotation table / unreadable)"
        )
    if args.split in ("all", "train"):
        in_train = {video_key(n) for n, lab in zip(names, labels_of_rows) if lab == "train"} & rated & evaluated
        summary["compared_videos_in_training_split"] = len(in_train)
    rows = []
    for task, entry in report.items():
        rows.append({"feature": task, **{k: v for k, v in entry.items() if not isinstance(v, (dict, list))}})
    return {"summary": summary, "features": report}, pd.DataFrame(rows)


def print_human_table(report: dict) -> None:
    print("comparison with human ratings (Spearman):")
    print(
        f"  {'feature':<14} {'videos':>6} {'model':>7} {'gpt':>7} {'ceiling':>8} {'model/ceil':>10} "
        f"{'gpt/ceil':>9} {'model-indiv':>11} {'human-human':>11}"
    )
    for task, e in report["features"].items():

        def f(key):
            v = e.get(key)  # noqa: B023 (called at once, in this iteration)
            return "n/a" if v is None or not np.isfinite(v) else f"{v:.3f}"

        print(
            f"  {task:<14} {e.get('n_videos', 0):>6} {f('model_vs_mean_human'):>7} {f('gpt_vs_mean_human'):>7} "
            f"{f('noise_ceiling'):>8} {f('model_fraction_of_ceiling'):>10} {f('gpt_fraction_of_ceiling'):>9} "
            f"{f('model_to_individual'):>11} {f('human_pairwise'):>11}"
        )
    notes = {e["noise_ceiling_note"] for e in report["features"].values() if "noise_ceiling_note" in e}
    for note in notes:
        print(f"  noise ceiling, per-person numbers: {note}")
    s = report["summary"]
    for key in ("no_model_output", "unknown_features"):
        if s.get(key):
            print(f"  {key.replace('_', ' ')}: {', '.join(s[key])}")
    if s.get("note"):
        print(f"  note: {s['note']}")


def make_plots(args, out_dir: Path, probs, targets, tasks, metrics, human, spec, logger) -> list[Path]:
    from utils import plots

    history = None
    jsonl = (
        Path(args.train_metrics) if args.train_metrics else Path(spec.path).resolve().parent.parent / "metrics.jsonl"
    )
    if jsonl.exists():
        history = plots.read_metrics_jsonl(jsonl)
    elif logger.enabled and not logger.new_run:
        history = logger._call("metric history", lambda: plots.mlflow_history(logger.client, logger.run_id))
    return plots.plot_evaluation(
        probs,
        targets,
        tasks,
        out_dir / f"plots_{args.split}",
        title=f"{args.split} split, step {spec.step}" if spec.step is not None else args.split,
        report=metrics,
        history=history,
        human=human["features"] if human else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        temporal, spatial = parse_views(args.views)
    except ValueError as exc:
        parser.error(f"--views: {exc}")
    info = init_distributed(args.device, args.dist_timeout)
    try:
        # Everything that can fail on bad input happens on every rank before the long part, so a
        # mistake stops all ranks at once instead of leaving some waiting in a collective.
        try:
            model, spec = load_inference_model(
                args.checkpoint, depth=args.depth, tasks=args.tasks, frames=args.frames, size=args.size
            )
        except CHECKPOINT_ERRORS as exc:
            raise SystemExit(f"--checkpoint {exc}") from exc
        tasks = spec.tasks
        for note in spec.notes:
            log0(info, f"note: {note}")
        human = None
        if args.human_ratings:
            human = load_human_ratings(
                args.human_ratings,
                form=args.human_form,
                scale=args.human_scale,
                invert=[s.strip() for s in args.human_invert.split(",") if s.strip()],
            )
        table, table_report = load_annotation_table(args.annotations, tasks=tasks)
        rows, labels, split_how = choose_split(table, args, spec.config)
        if len(rows) == 0:
            raise SystemExit(
                f"split {args.split!r} of {args.annotations} is empty (split method "
                f"{split_how['method']}); choose another --split or --split-method"
            )
        if not split_how["from_checkpoint"] and args.split != "all":
            log0(
                info,
                f"note: {args.checkpoint} does not record its train/val/test split; using "
                f"--split-method {split_how['method']} (the earlier Lightning version used random42)",
            )
        all_targets = build_targets(table, tasks)
        targets = {k: v[rows] for k, v in all_targets.items()}
        names = table["video_name"].to_numpy()[rows].tolist()
        if args.cache:
            dataset = open_cached_views(args.cache, names, spec, temporal, spatial)
            if dataset.missing:
                log0(
                    info,
                    f"note: {len(dataset.missing)} of {len(names)} {args.split} videos have no clip in "
                    f"the cache (failed in prepare, or not in its table): listed as failed",
                )
        else:
            try:
                dataset = MultiViewClipDataset(
                    names,
                    {},
                    args.videos,
                    num_frames=spec.frames,
                    size=spec.size,
                    temporal_views=temporal,
                    spatial_views=spatial,
                    index=scan_video_root(args.videos),
                    decode_policy=decode_policy_from_args(args),
                )
            except PtClipsError as exc:
                raise SystemExit(f"--videos {args.videos}: {exc}") from exc
        log0(
            info,
            f"evaluating {spec.path} ({spec.network}, {spec.frames}x{spec.size}px, "
            f"{temporal}x{spatial} views) on {len(rows)} {args.split} videos with {info.world_size} "
            f"process(es) on {info.device}",
        )

        probs, errors = infer_dataset(
            model,
            dataset,
            info,
            tasks,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            amp=args.amp,
            progress=not args.no_progress,
            desc=f"evaluating {args.split}",
        )
        if not info.is_main:
            return 0
        return write_outputs(
            args,
            info,
            spec,
            tasks,
            table,
            rows,
            labels,
            names,
            targets,
            probs,
            errors,
            human,
            split_how,
            temporal,
            spatial,
            t0,
        )
    finally:
        destroy_distributed()


def write_outputs(
    args, info, spec, tasks, table, rows, labels, names, targets, probs, errors, human, split_how, temporal, spatial, t0
) -> int:
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = [(names[i], e) for i, e in enumerate(errors) if e is not None]
    metrics = evaluation_metrics(probs, targets, tasks)
    print(
        f"{args.split}: {len(names) - len(failed)} of {len(names)} videos predicted"
        + (f", {len(failed)} could not be read (listed in info_{args.split}.json)" if failed else "")
    )
    print(format_metrics_table(metrics, tasks))
    print(
        f"  mean Spearman {metrics['overall']['mean_spearman']:.4f}  (confidence-weighted "
        f"{metrics['overall']['mean_weighted_spearman']:.4f})"
    )

    frame = prediction_frame({"video_name": names}, probs, tasks, errors)
    for column in prediction_columns_for_csv(tasks):
        if column in table.columns:  # the annotation beside the prediction, for analysis
            frame[TARGET_PREFIX + column] = table[column].to_numpy()[rows]
    frame["split"] = labels.to_numpy()[rows]
    paths = {"predictions": write_csv(frame, out_dir / f"predictions_{args.split}.csv")}

    result = {
        "split": args.split,
        "n_videos": len(names),
        "n_failed": len(failed),
        "tasks": list(tasks),
        "views": {"temporal": temporal, "spatial": spatial},
        "tie_tolerance": TIE_TOLERANCE,  # ratings this close share one rank in every Spearman
        "metrics": metrics,
    }
    human_report = None
    if human is not None:
        human_report, human_table = human_comparison(args, human, names, probs, targets, tasks, labels.to_numpy()[rows])
        result["human"] = human_report
        paths["human"] = write_csv(human_table, out_dir / f"human_{args.split}.csv")
        print_human_table(human_report)
    paths["metrics"] = write_json(result, out_dir / f"metrics_{args.split}.json")

    # MLflow (rank 0 only; never fatal)
    run_id = spec.run_id if args.run_id == "checkpoint" else args.run_id
    if args.run_id == "checkpoint" and not run_id:
        print(f"note: {spec.path} names no training run; logging into a new run instead")
    uri, note = tracking_uri_for(args, spec, Path(spec.path), out_dir)
    if note and not args.no_mlflow:
        print(f"note: {note}")
    # With the default store under --output-dir, keep the artifacts there too (MLflow's default
    # would be ./mlruns in whatever directory the command was started from).
    local_store = uri == default_tracking_uri(out_dir) and not os.environ.get("MLFLOW_TRACKING_URI")
    logger = EvalLogger(
        not args.no_mlflow,
        uri,
        args.experiment,
        run_id=run_id,
        run_name=args.run_name,
        artifact_location=(out_dir / "mlartifacts").resolve().as_uri() if local_store else None,
    )
    # the training run already holds val/... from training: an evaluation of val goes elsewhere
    prefix = "eval_val" if (args.split == "val" and not logger.new_run) else args.split
    logger.start(
        {"entry_point": "evaluate.py", f"eval.{prefix}.checkpoint": spec.path, "training_run_id": spec.run_id or ""}
    )
    plot_paths = (
        [] if args.no_plots else make_plots(args, out_dir, probs, targets, tasks, metrics, human_report, spec, logger)
    )
    info_doc = {
        **spec.as_dict(),
        "annotations": args.annotations,
        "videos": args.videos,
        "cache": args.cache,
        "split": args.split,
        "split_method": split_how,
        "views": f"{temporal}x{spatial}",
        "world_size": info.world_size,
        "device": str(info.device),
        "amp": args.amp,
        "batch_size": args.batch_size,
        "human_ratings": args.human_ratings,
        "runtime_s": round(time.perf_counter() - t0, 2),
        "mlflow": {"tracking_uri": uri, "run_id": logger.run_id, "metric_prefix": prefix} if logger.enabled else None,
        "failed": [{"video_name": n, "error": e} for n, e in failed],
        "outputs": {k: str(v) for k, v in paths.items()} | {"plots": [str(p) for p in plot_paths]},
    }
    paths["info"] = write_json(info_doc, out_dir / f"info_{args.split}.json")

    logger.log_params(
        {
            "checkpoint": spec.path,
            "split": args.split,
            "views": f"{temporal}x{spatial}",
            "tasks": ",".join(tasks),
            "depth": spec.depth,
            "frames": spec.frames,
            "size": spec.size,
            "annotations": args.annotations,
            "videos": args.videos or "",
            "cache": args.cache or "",
            "human_ratings": args.human_ratings or "",
        }
    )
    flat = flatten_metrics(metrics, prefix)
    if human_report is not None:
        flat.update(flatten_metrics(human_report["features"], f"{prefix}/human"))
    flat[f"{prefix}/n_failed"] = float(len(failed))
    logger.log_metrics(flat, step=int(spec.step or 0))
    for path in paths.values():
        logger.log_artifact(path, f"eval/{prefix}")
    for path in plot_paths:
        logger.log_artifact(path, f"eval/{prefix}/plots")
    status = "FINISHED" if len(failed) < len(names) else "FAILED"
    logger.end(status)
    if logger.enabled:
        print(f"MLflow: run {logger.run_id} at {uri} (metrics under {prefix}/...); to look at it: {ui_command(uri)}")
    print(
        f"wrote {', '.join(str(p) for p in paths.values())}" + (f" and {len(plot_paths)} plots" if plot_paths else "")
    )
    if len(failed) == len(names):
        print("error: no video could be read; see the errors in " + str(paths["info"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
