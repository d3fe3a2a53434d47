"""Which layer predicts each human rating: cross-validated encoding and RSA from extracted features.

    python align_features.py --features FEATURES_DIR --human-ratings ratings.csv --output runs/align
    python align_features.py --features FEATURES_DIR --annotations annotations.csv --output runs/align \\
        [--tracking-uri URI] [--run-id RUN]

FEATURES_DIR is an ``extract_features.py`` output (``analysis/extracted_features.py``). Targets
are human ratings in the forms ``evaluate.py`` reads (each video's mean rating per feature;
every feature is kept, also those the model has no head for) or the annotation table's values
(``<f>_score``, location 1 = Outdoor, people count as 0, 1, 2, 3, 4 = many).  Videos are joined
by file stem; only rows with status ``ok`` are used; the rest is counted and reported.

Per layer and feature: k-fold cross-validated ridge regression (folds by video, seeded; the
standardisation and α fitted on the training folds only, α by leave-one-out: ``analysis/ridge_cv.py``)
-> the held-out predictions' Pearson and Spearman with the targets; with individual ratings
(long form) the split-half noise ceiling and the fraction of it reached, computed by the same
code as ``evaluate.py`` (``analysis.reliability.compare_feature``).  Per layer an RDM (1 - Pearson
between videos' features) and its RSA with each feature's rating RDM (|y_i - y_j|), Spearman over
the upper triangle.  Targets, and differences of them, that are equal up to float round-off
(within ``utils.metrics.TIE_TOLERANCE``, recorded in alignment.json) share one rank.

Outputs in --output:
    alignment.csv      layer, feature, pearson, spearman, ceiling, fraction, n
    rsa.csv            layer, feature, rsa, n
    predictions.csv    held-out predictions: video_name, video_key, feature, fold, target, one column per layer
    alignment.json     settings, counts, α per fold, per-feature human agreement, provenance of the features
    alignment.png      layers x features heat maps: held-out Spearman (fraction of ceiling), RSA
    rdms/<layer>.npy   float32 RDM over the analysed videos, in the order of rdms/videos.csv
With --tracking-uri or --run-id the tables, JSON and plot are logged to MLflow (a new run in
--experiment, or the given run, whose status is left alone) with metrics align/<layer>/<feature>/<name>.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.extracted_features import FeatureDir, FeatureDirError, open_feature_dir
from analysis.gram import accumulate_grams
from analysis.human_ratings import HumanRatingsError, load_human_ratings, video_key
from analysis.reliability import compare_feature, fraction_of_ceiling, rating_matrix
from analysis.ridge_cv import DEFAULT_ALPHAS, assign_folds, cross_validated_ridge, fold_mean_correlation
from analysis.rsa import correlation_rdm, rating_rdm, rsa_spearman
from datasets.annotations import AnnotationError, build_targets, load_annotation_table
from utils.cli import CommandLineParser, run_entry_point
from utils.eval_logging import EvalLogger
from utils.evaluation import write_csv, write_json
from utils.metrics import TIE_TOLERANCE, merge_ties, pearson, spearman
from utils.tasks import SCORE_FEATURES, parse_tasks
from utils.tracking import local_artifact_location


def build_parser() -> argparse.ArgumentParser:
    p = CommandLineParser(
        description="Cross-validated encoding and RSA of extracted layer features against human ratings or annotations."
    )
    p.add_argument("--features", required=True, help="extract_features.py output directory")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--human-ratings",
        help="long (subjectID, video_name, question_name, likert_response) or "
        "wide (video_name + one column per feature) CSV, as evaluate.py reads",
    )
    src.add_argument("--annotations", help="annotation CSV (cleaned or raw): its scores are the targets")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--human-form", default="auto", choices=("auto", "long", "wide"))
    p.add_argument("--human-scale", default="auto", choices=("auto", "likert", "unit"))
    p.add_argument("--human-invert", default="", help="comma list of human features compared as 1 - rating")
    p.add_argument("--tasks", default="all", help="--annotations: which tasks' columns are targets")
    p.add_argument("--layers", default=None, help="comma list of layers (default: all in features.json)")
    p.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="analyse the ok rows of an extraction that is not complete (features.json complete=false)",
    )
    g = p.add_argument_group("cross-validation")
    g.add_argument("--folds", type=int, default=5, help="k of the k-fold split of the videos")
    g.add_argument("--seed", type=int, default=0, help="seed of the fold assignment and the split-halves")
    g.add_argument(
        "--alphas",
        default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
        help="ridge α grid, relative to trace(K)/m (≈ the number of standardised columns)",
    )
    g.add_argument("--ceiling-splits", type=int, default=100, help="random split-halves for the noise ceiling")
    g.add_argument(
        "--min-videos",
        type=int,
        default=3,
        help="fewest videos a correlation is computed over (per "
        "fold for the encoding scores; per split-half and rater pair for the ceiling)",
    )
    r = p.add_argument_group("resources")
    r.add_argument(
        "--device",
        default="auto",
        choices=("auto", "cpu", "cuda"),
        help="where the Gram matrices are accumulated (auto: cuda if available)",
    )
    r.add_argument("--chunk-mb", type=float, default=64.0, help="float64 size of one column chunk of a layer")
    r.add_argument(
        "--max-gram-gb",
        type=float,
        default=16.0,
        help="refuse when the (folds + 1) N x N float64 matrices would exceed this",
    )
    t = p.add_argument_group("MLflow (only with --tracking-uri or --run-id)")
    t.add_argument("--tracking-uri", default=None, help="default with --run-id: $MLFLOW_TRACKING_URI")
    t.add_argument("--run-id", default=None, help="log into this existing run instead of a new one")
    t.add_argument("--experiment", default="social-vision-align", help="experiment of a new run")
    t.add_argument("--run-name", default=None)
    p.add_argument("--no-plots", action="store_true")
    return p


# --------------------------------------------------------------------------- targets


@dataclass
class Targets:
    """Per video (index: video key) one value per feature (columns; NaN = none)."""

    source: str
    kind: str
    values: pd.DataFrame
    matrices: dict[str, pd.DataFrame] = field(default_factory=dict)  # feature -> videos x raters (long form)
    lines: list[str] = field(default_factory=list)

    @property
    def individual(self) -> bool:
        return bool(self.matrices)


def human_targets(args) -> Targets:
    invert = [s.strip() for s in args.human_invert.split(",") if s.strip()]
    human = load_human_ratings(
        args.human_ratings, form=args.human_form, scale=args.human_scale, invert=invert, all_features=True
    )
    columns, matrices = {}, {}
    for task in human.tasks:
        matrix = rating_matrix(human.ratings, task)
        label = human.question_for(task)
        columns[label] = matrix.mean(axis=1)  # the mean rating, as compare_feature computes it
        if human.form == "long":
            matrices[label] = matrix
    values = pd.DataFrame(columns)
    values.index.name = "video_key"
    return Targets(human.source, f"human ratings ({human.form} form)", values, matrices, human.summary_lines())


def annotation_targets(args) -> Targets:
    tasks = parse_tasks(args.tasks)
    table, _ = load_annotation_table(args.annotations, tasks=tasks)
    arrays = build_targets(table, tasks)
    columns = {}
    for task in tasks:
        if task in SCORE_FEATURES:
            columns[task] = arrays[f"{task}_score"].astype(np.float64)
        elif task == "location":
            columns[task] = arrays["location_score"].astype(np.float64)  # 1 = Outdoor
        else:  # peoplecount: the class index is ordinal (0, 1, 2, 3, many)
            counts = arrays["peoplecount"].astype(np.float64)
            counts[counts < 0] = np.nan
            columns[task] = counts
    keys = table["video_name"].map(video_key)
    repeated = keys.duplicated(keep=False)
    if repeated.any():
        names = table["video_name"][repeated].tolist()[:4]
        raise AnnotationError(
            f"{args.annotations}: videos {names} share a file stem; videos are joined with the "
            "features by file stem, so it must be unique"
        )
    values = pd.DataFrame(columns, index=pd.Index(keys, name="video_key"))
    return Targets(
        args.annotations,
        "annotations",
        values,
        lines=[f"annotations {args.annotations}: {len(table)} videos, targets {', '.join(values.columns)}"],
    )


# --------------------------------------------------------------------------- joining


@dataclass
class Joined:
    rows: np.ndarray  # feature-array rows of the analysed videos
    keys: list[str]  # their video keys
    names: list[str]  # their video_name as in index.csv
    targets: np.ndarray  # (N, features), NaN = none
    features: list[str]
    counts: dict[str, int]


def join(features: FeatureDir, targets: Targets) -> Joined:
    index = features.index
    ok = features.ok_rows
    keys = index["video_name"].iloc[ok].map(video_key)
    repeated = keys.duplicated(keep=False)
    if repeated.any():
        rows = ok[repeated.to_numpy()].tolist()[:4]
        raise FeatureDirError(
            f"{features.root / 'index.csv'}: rows {rows} are the same video {keys[repeated].iloc[0]!r}"
            " (joined by file stem); keep one"
        )
    rated = targets.values.index[targets.values.notna().any(axis=1)]
    has_target = keys.isin(rated).to_numpy()
    all_keys = set(index["video_name"].map(video_key))
    not_ok = set(index["video_name"].iloc[np.setdiff1d(np.arange(len(index)), ok)].map(video_key))
    with_features = set(keys)
    lacking = [k for k in dict.fromkeys(rated) if k not in with_features]
    counts = {
        **{f"rows_{s}": n for s, n in features.status_counts().items()},
        "analysed_videos": int(has_target.sum()),
        "ok_videos_without_targets": int((~has_target).sum()),
        "targets_without_features": len(lacking),
        "targets_without_features_failed_or_pending": sum(k in not_ok for k in lacking),
        "targets_not_in_index": sum(k not in all_keys for k in lacking),
    }
    chosen = keys[has_target]
    return Joined(
        rows=ok[has_target],
        keys=chosen.tolist(),
        names=index["video_name"].iloc[ok[has_target]].tolist(),
        # ratings equal up to round-off tie in every Spearman below (held-out scores, RSA)
        targets=np.column_stack(
            [merge_ties(c) for c in targets.values.reindex(chosen.tolist()).to_numpy(dtype=np.float64).T]
        ),
        features=list(targets.values.columns),
        counts=counts,
    )


def report_counts(c: dict[str, int]) -> None:
    print(f"features: {c['rows_ok']} ok rows, {c['rows_error']} error and {c['rows_pending']} pending rows not used")
    print(
        f"analysed: {c['analysed_videos']} videos with features and targets; {c['ok_videos_without_targets']} ok "
        f"videos have no target; {c['targets_without_features']} videos with targets have no features "
        f"({c['targets_without_features_failed_or_pending']} failed or pending in the extraction, "
        f"{c['targets_not_in_index']} not in it)"
    )


# --------------------------------------------------------------------------- analysis


def analyse_layer(
    features: FeatureDir,
    layer: str,
    joined: Joined,
    folds: np.ndarray,
    alphas,
    device,
    chunk_bytes: int,
    min_videos: int,
) -> dict:
    chunks = features.column_chunks(layer, joined.rows, chunk_bytes)
    grams = accumulate_grams(chunks, folds, device)
    predictions, chosen = cross_validated_ridge(grams.fold_kernels, folds, joined.targets, alphas)
    rdm = correlation_rdm(grams.raw, grams.row_sums, grams.num_columns)
    scores = {}
    for j, feature in enumerate(joined.features):
        y, pred = joined.targets[:, j], predictions[:, j]
        rated = np.isfinite(y)
        r_pearson, pearson_per_fold = fold_mean_correlation(pred, y, folds, pearson, min_videos)
        r_spearman, spearman_per_fold = fold_mean_correlation(pred, y, folds, spearman, min_videos)
        scores[feature] = {
            "pearson": r_pearson,
            "spearman": r_spearman,
            "n": int((rated & np.isfinite(pred)).sum()),
            "pearson_per_fold": pearson_per_fold,
            "spearman_per_fold": spearman_per_fold,
            "alpha_per_fold": chosen[:, j].tolist(),
            "rsa": rsa_spearman(rdm[np.ix_(rated, rated)], rating_rdm(y[rated])),
            "rsa_n": int(rated.sum()),
        }
    return {
        "predictions": predictions,
        "rdm": rdm,
        "scores": scores,
        "num_columns": grams.num_columns,
        "kept_columns_per_fold": grams.kept_columns.tolist(),
    }


def human_agreement(targets: Targets, joined: Joined, args) -> dict[str, dict]:
    """Per feature, on the analysed videos: the noise ceiling and human-to-human agreement, by
    ``compare_feature`` (the code evaluate.py reports them with)."""
    out = {}
    for j, feature in enumerate(joined.features):
        rated = np.isfinite(joined.targets[:, j])
        keys = pd.Index(np.asarray(joined.keys, dtype=object)[rated], name="video_key")
        matrix = targets.matrices[feature]
        matrix = matrix.loc[matrix.index.intersection(keys)]  # as compare_with_humans restricts it
        out[feature] = compare_feature(
            matrix, True, {}, n_splits=args.ceiling_splits, seed=args.seed, min_videos=args.min_videos
        )
    return out


def alignment_tables(
    layers, joined: Joined, results: dict, agreement: dict | None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, rsa_rows = [], []
    for layer in layers:
        for feature in joined.features:
            s = results[layer]["scores"][feature]
            ceiling = agreement[feature]["noise_ceiling"] if agreement is not None else math.nan
            fraction = fraction_of_ceiling(s["spearman"], ceiling)
            rows.append(
                {
                    "layer": layer,
                    "feature": feature,
                    "pearson": s["pearson"],
                    "spearman": s["spearman"],
                    "ceiling": ceiling,
                    "fraction": fraction,
                    "n": s["n"],
                }
            )
            rsa_rows.append({"layer": layer, "feature": feature, "rsa": s["rsa"], "n": s["rsa_n"]})
    return pd.DataFrame(rows), pd.DataFrame(rsa_rows)


def predictions_table(layers, joined: Joined, folds: np.ndarray, results: dict) -> pd.DataFrame:
    parts = []
    for j, feature in enumerate(joined.features):
        rated = np.isfinite(joined.targets[:, j])
        part = pd.DataFrame(
            {
                "video_name": np.asarray(joined.names, dtype=object)[rated],
                "video_key": np.asarray(joined.keys, dtype=object)[rated],
                "feature": feature,
                "fold": folds[rated],
                "target": joined.targets[rated, j],
            }
        )
        for layer in layers:
            part[layer] = results[layer]["predictions"][rated, j]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- outputs


def print_table(alignment: pd.DataFrame, rsa: pd.DataFrame) -> None:
    def f(v):
        return "  n/a" if not np.isfinite(v) else f"{v:.3f}"

    print(
        f"  {'layer':<18} {'feature':<16} {'n':>5} {'pearson':>8} {'spearman':>8} {'ceiling':>8} "
        f"{'fraction':>8} {'rsa':>7}"
    )
    for a, r in zip(alignment.itertuples(), rsa.itertuples()):
        print(
            f"  {a.layer:<18} {a.feature:<16} {a.n:>5} {f(a.pearson):>8} {f(a.spearman):>8} {f(a.ceiling):>8} "
            f"{f(a.fraction):>8} {f(r.rsa):>7}"
        )


def plot(alignment: pd.DataFrame, rsa: pd.DataFrame, layers, features, path: Path) -> Path:
    from utils.plots import plot_alignment_heatmaps

    def grid(frame, column):
        return (
            frame.pivot(index="layer", columns="feature", values=column)
            .reindex(index=layers, columns=features)
            .to_numpy()
        )

    title = "held-out Spearman (fraction of ceiling)"
    return plot_alignment_heatmaps(
        {title: grid(alignment, "spearman"), "RSA (Spearman of RDMs)": grid(rsa, "rsa")},
        layers,
        features,
        path,
        notes={title: grid(alignment, "fraction")},
    )


def metric_name(*parts: str) -> str:
    """MLflow allows letters, digits, _ - . / and spaces in names; anything else becomes _."""
    return "/".join(re.sub(r"[^\w\-. ]", "_", p) for p in parts)


def log_to_mlflow(args, alignment, rsa, paths: dict[str, Path], counts: dict) -> str | None:
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    # a new experiment in a sqlite store keeps its artifacts beside the database, not in ./mlruns
    logger = EvalLogger(
        True,
        uri,
        args.experiment,
        run_id=args.run_id,
        run_name=args.run_name,
        artifact_location=local_artifact_location(uri),
    )
    logger.start({"entry_point": "align_features.py", "align.features": args.features})
    logger.log_params(
        {
            "features": args.features,
            "targets": args.human_ratings or args.annotations,
            "folds": args.folds,
            "seed": args.seed,
            "alphas": args.alphas,
        }
    )
    metrics = {}
    for a, r in zip(alignment.itertuples(), rsa.itertuples()):
        for name, value in (
            ("pearson", a.pearson),
            ("spearman", a.spearman),
            ("ceiling", a.ceiling),
            ("fraction", a.fraction),
            ("n", a.n),
            ("rsa", r.rsa),
        ):
            if np.isfinite(value):
                metrics[metric_name("align", a.layer, a.feature, name)] = float(value)
    metrics.update({metric_name("align", "counts", k): float(v) for k, v in counts.items()})
    logger.log_metrics(metrics)
    for path in paths.values():
        logger.log_artifact(path, "align")
    logger.end("FINISHED")
    return logger.run_id if logger.enabled else None


# --------------------------------------------------------------------------- main


def choose_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    return name


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.run_id and not (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        parser.error("--run-id needs --tracking-uri (or MLFLOW_TRACKING_URI) to find the run")
    t0 = time.perf_counter()
    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        parser.error(f"--alphas: {args.alphas!r} is not a comma list of numbers")
    if not alphas or min(alphas) <= 0:
        parser.error("--alphas: give one or more positive numbers")
    try:
        features = open_feature_dir(args.features, allow_incomplete=args.allow_incomplete)
        targets = human_targets(args) if args.human_ratings else annotation_targets(args)
        joined = join(features, targets)
    except (FeatureDirError, HumanRatingsError, AnnotationError, ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    layers = features.layers
    if args.layers:
        layers = [s.strip() for s in args.layers.split(",") if s.strip()]
        unknown = [s for s in layers if s not in features.meta["layers"]]
        if unknown:
            raise SystemExit(
                f"error: --layers {unknown} not in {features.root / 'features.json'} (layers: {features.layers})"
            )
    for line in targets.lines:
        print(line)
    report_counts(joined.counts)
    n = len(joined.rows)
    if n < max(args.folds, 3):
        raise SystemExit(
            f"error: {n} videos have both features and targets; need at least {max(args.folds, 3)} "
            f"for {args.folds}-fold cross-validation"
        )
    need_gb = (args.folds + 1) * n * n * 8 / 2**30
    if need_gb > args.max_gram_gb:
        raise SystemExit(
            f"error: {n} videos need {need_gb:.1f} GB for the {args.folds + 1} N x N Gram matrices "
            f"(--max-gram-gb {args.max_gram_gb:g}); use fewer videos or --folds, or raise the limit"
        )
    device = choose_device(args.device)
    folds = assign_folds(n, args.folds, args.seed)
    out = Path(args.output)
    (out / "rdms").mkdir(parents=True, exist_ok=True)

    results = {}
    for layer in layers:
        t_layer = time.perf_counter()
        try:
            results[layer] = analyse_layer(
                features, layer, joined, folds, alphas, device, int(args.chunk_mb * 2**20), args.min_videos
            )
        except FeatureDirError as exc:
            raise SystemExit(f"error: {exc}") from exc
        np.save(out / "rdms" / f"{layer}.npy", results[layer].pop("rdm").astype(np.float32))  # not kept: N x N each
        print(f"layer {layer}: D = {results[layer]['num_columns']}, {time.perf_counter() - t_layer:.1f} s")
    write_csv(pd.DataFrame({"video_name": joined.names, "video_key": joined.keys}), out / "rdms" / "videos.csv")

    agreement = human_agreement(targets, joined, args) if targets.individual else None
    alignment, rsa = alignment_tables(layers, joined, results, agreement)
    print_table(alignment, rsa)
    if agreement is None:
        print(f"  ceiling, fraction: unavailable: {targets.kind} hold no individual ratings")
    paths = {
        "alignment": write_csv(alignment, out / "alignment.csv"),
        "rsa": write_csv(rsa, out / "rsa.csv"),
        "predictions": write_csv(predictions_table(layers, joined, folds, results), out / "predictions.csv"),
    }
    doc = {
        "features": str(features.root),
        "targets": targets.source,
        "target_kind": targets.kind,
        "provenance": {k: v for k, v in features.meta.items() if k != "layers"},
        "settings": {
            "folds": args.folds,
            "seed": args.seed,
            "alphas_relative": alphas,
            "device": device,
            "ceiling_splits": args.ceiling_splits,
            "min_videos": args.min_videos,
            "tie_tolerance": TIE_TOLERANCE,
            "allow_incomplete": args.allow_incomplete,
        },
        "counts": joined.counts,
        "layers": {
            layer: {
                "num_columns": results[layer]["num_columns"],
                "kept_columns_per_fold": results[layer]["kept_columns_per_fold"],
                "per_fold": {
                    f: {k: s[k] for k in ("alpha_per_fold", "pearson_per_fold", "spearman_per_fold")}
                    for f, s in results[layer]["scores"].items()
                },
            }
            for layer in layers
        },
        "human_agreement": agreement,
        "runtime_s": round(time.perf_counter() - t0, 2),
    }
    paths["json"] = write_json(doc, out / "alignment.json")
    if not args.no_plots:
        paths["plot"] = plot(alignment, rsa, layers, joined.features, out / "alignment.png")
    if args.tracking_uri or args.run_id:
        run_id = log_to_mlflow(args, alignment, rsa, paths, joined.counts)
        if run_id:
            print(f"MLflow: run {run_id} (metrics under align/...)")
    print(f"wrote {', '.join(str(p) for p in paths.values())} and {len(layers)} RDMs in {out / 'rdms'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_entry_point(main))
