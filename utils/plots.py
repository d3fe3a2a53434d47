"""PNG figures for evaluation (matplotlib's object API: no pyplot state, no display needed).

* :func:`plot_predicted_vs_target`: one figure per task: scores as predicted vs annotated
  scatter; people count as a row-normalised confusion matrix; location as histograms of
  p(Outdoor) for annotated Indoor and Outdoor videos.
* :func:`plot_metric_bars`: Spearman per score task against the annotations (and the
  confidence-weighted one).
* :func:`plot_human_comparison`: per feature, the model's (and GPT's) correlation with the
  mean human rating, next to the noise ceiling and the human-to-human agreement.
* :func:`plot_alignment_heatmaps`: layers x features heat maps of ``align_features.py``
  (held-out encoding correlation, RSA).
* :func:`plot_training_curves`: a run's losses and validation metrics over steps, from its
  ``metrics.jsonl`` (see :func:`read_metrics_jsonl`) or from MLflow's metric history.
* :func:`plot_evaluation`: the set of them that evaluate.py draws for a split and train_ddp.py for
  its best validation (one code path for both).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from utils.metrics import evaluation_metrics
from utils.tasks import PEOPLECOUNT_CLASSES, SCORE_FEATURES

DPI = 110


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _title_value(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


JITTER = 0.02  # annotations sit on a 0.1 grid: a little horizontal jitter shows how many points overlap


def plot_evaluation(
    probs: Mapping[str, np.ndarray] | None,
    targets: Mapping[str, np.ndarray] | None,
    tasks: Sequence[str],
    out_dir: str | Path,
    title: str,
    report: Mapping | None = None,
    history: Mapping | None = None,
    human: Mapping | None = None,
) -> list[Path]:
    """Predicted vs annotated per task and the metric bars (when predictions are given), the human
    comparison (``human``), the training curves (``history``); ``title`` names what was evaluated."""
    out_dir = Path(out_dir)
    paths: list[Path | None] = []
    if probs is not None:
        report = report if report is not None else evaluation_metrics(probs, targets, tasks)
        paths += plot_predicted_vs_target(probs, targets, tasks, report, out_dir, title)
        paths.append(plot_metric_bars(report, tasks, out_dir / "metrics_spearman.png", title))
    if human:
        paths.append(plot_human_comparison(human, out_dir / "human_comparison.png"))
    if history:
        paths.append(plot_training_curves(history, out_dir / "training_curves.png"))
    return [p for p in paths if p is not None]


def plot_predicted_vs_target(
    probs: Mapping[str, np.ndarray],
    targets: Mapping[str, np.ndarray],
    tasks: Sequence[str],
    report: Mapping[str, Mapping],
    out_dir: str | Path,
    title: str = "",
) -> list[Path]:
    """``pred_vs_target_<task>.png`` for each task; returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    for task in tasks:
        fig = Figure(figsize=(4.2, 4.0))
        ax = fig.add_subplot()
        m = report.get(task, {})
        if task in SCORE_FEATURES:
            pred = np.asarray(probs[f"{task}_score"], dtype=np.float64)
            target = np.asarray(targets[f"{task}_score"], dtype=np.float64)
            ok = np.isfinite(pred) & np.isfinite(target)
            jitter = np.random.default_rng(0).uniform(-JITTER, JITTER, ok.sum())
            conf = targets.get(f"{task}_confidence")
            colour = np.asarray(conf, dtype=np.float64)[ok] if conf is not None else None
            # clipped, so a score of 0 or 1 stays inside [0, 1]
            points = ax.scatter(
                np.clip(target[ok] + jitter, 0, 1),
                pred[ok],
                s=8,
                c=colour,
                cmap="viridis",
                vmin=0,
                vmax=1,
                alpha=0.6,
                linewidths=0,
            )
            if colour is not None:
                fig.colorbar(points, ax=ax, label="annotated confidence", shrink=0.8)
            ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
            ax.set(
                xlim=(-0.05, 1.05),
                ylim=(-0.05, 1.05),
                ylabel="predicted score",
                xlabel=f"annotated score (jittered by up to ±{JITTER} to show overlaps)",
            )
            ax.set_title(f"{task}: Spearman {_title_value(m.get('spearman'))}, n {int(m.get('n', 0))}", fontsize=10)
        elif task == "peoplecount":
            cm = np.asarray(m.get("confusion_matrix", np.zeros((5, 5))), dtype=np.float64)
            rows = cm.sum(axis=1, keepdims=True)
            share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
            ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
            for i in range(cm.shape[0]):
                for j in range(cm.shape[1]):
                    ax.text(
                        j,
                        i,
                        f"{int(cm[i, j])}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black",
                    )
            labels = list(PEOPLECOUNT_CLASSES)[: cm.shape[0]]
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(labels)), labels)
            ax.set(xlabel="predicted", ylabel="annotated")
            ax.set_title(
                f"people count: accuracy {_title_value(m.get('accuracy'))}, macro-F1 {_title_value(m.get('macro_f1'))}",
                fontsize=10,
            )
        elif task == "location":
            p_out = np.asarray(probs["location_score"], dtype=np.float64)
            target = np.asarray(targets["location_score"], dtype=np.float64)
            bins = np.linspace(0, 1, 21)
            for value, label, colour in (
                (0.0, "annotated Indoor", "tab:orange"),
                (1.0, "annotated Outdoor", "tab:blue"),
            ):
                sel = np.isfinite(p_out) & (target == value)
                ax.hist(p_out[sel], bins=bins, alpha=0.6, label=f"{label} ({int(sel.sum())})", color=colour)
            ax.set(xlabel="predicted p(Outdoor)", ylabel="videos")
            ax.legend(fontsize=8)
            ax.set_title(
                f"location: accuracy {_title_value(m.get('accuracy'))}, ROC AUC {_title_value(m.get('roc_auc'))}",
                fontsize=10,
            )
        if title:
            fig.suptitle(title, fontsize=9)
        paths.append(_save(fig, out_dir / f"pred_vs_target_{task}.png"))
    return paths


def plot_metric_bars(
    report: Mapping[str, Mapping], tasks: Sequence[str], path: str | Path, title: str = ""
) -> Path | None:
    """Spearman (and confidence-weighted Spearman) per score task against the annotations."""
    scores = [t for t in tasks if t in SCORE_FEATURES]
    if not scores:
        return None
    fig = Figure(figsize=(1.0 + 0.8 * len(scores), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(scores))
    plain = [_nan(report[t].get("spearman")) for t in scores]
    weighted = [_nan(report[t].get("weighted_spearman")) for t in scores]
    ax.bar(x - 0.2, plain, width=0.4, label="Spearman")
    ax.bar(x + 0.2, weighted, width=0.4, label="confidence-weighted")
    ax.set_xticks(x, scores, rotation=30, ha="right")
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="correlation with the annotations", ylim=(min(0, np.nanmin(plain + weighted + [0])) - 0.05, 1))
    videos = max((int(report[t].get("n", 0)) for t in scores), default=0)
    ax.set_title(f"{title + ': ' if title else ''}Spearman per feature (up to {videos} videos)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_human_comparison(human: Mapping[str, Mapping], path: str | Path) -> Path | None:
    """Correlation with the mean human rating per feature: model, GPT (if given), the noise
    ceiling (a black bar across each group) and mean human-to-human agreement (a dot)."""
    features = [t for t, v in human.items() if "model_vs_mean_human" in v]
    if not features:
        return None
    fig = Figure(figsize=(1.2 + 0.9 * len(features), 3.8))
    ax = fig.add_subplot()
    x = np.arange(len(features))
    has_gpt = any("gpt_vs_mean_human" in human[t] for t in features)
    width = 0.38 if has_gpt else 0.6
    model = [_nan(human[t].get("model_vs_mean_human")) for t in features]
    ax.bar(x - (width / 2 if has_gpt else 0), model, width=width, label="model vs mean human")
    if has_gpt:
        gpt = [_nan(human[t].get("gpt_vs_mean_human")) for t in features]
        ax.bar(x + width / 2, gpt, width=width, label="GPT annotation vs mean human", color="tab:green")
    ceiling = [_nan(human[t].get("noise_ceiling")) for t in features]
    if any(math.isfinite(c) for c in ceiling):
        ax.hlines(ceiling, x - 0.45, x + 0.45, colors="black", lw=2, label="noise ceiling")
        pair = [_nan(human[t].get("human_pairwise")) for t in features]
        ax.plot(x, pair, "o", color="tab:red", ms=5, label="human-to-human (pairwise)")
    ax.set_xticks(x, [f"{t}\n({human[t].get('question', '')})" for t in features], rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    lowest = np.nanmin(model + (gpt if has_gpt else []) + [0.0])
    ax.set(ylabel="Spearman correlation", ylim=(min(-0.05, lowest - 0.05), 1.02))
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, Path(path))


def plot_alignment_heatmaps(
    panels: Mapping[str, np.ndarray],
    layers: Sequence[str],
    features: Sequence[str],
    path: str | Path,
    notes: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """One layers x features heat map per panel (title -> (layers, features) values; NaN grey),
    each cell printed with its value and, where ``notes`` has the panel, a second line."""
    notes = notes or {}
    width = 1.6 + 0.75 * len(features)
    fig = Figure(figsize=(width * len(panels), 1.4 + 0.42 * len(layers)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, values) in zip(axes, panels.items()):
        values = np.asarray(values, dtype=np.float64)
        # a little beyond the largest value, so the strongest cell stays light enough to read
        limit = 1.25 * max(0.04, float(np.nanmax(np.abs(values)))) if np.isfinite(values).any() else 1.0
        cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="lightgrey")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=-limit, vmax=limit, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            text = "n/a" if not math.isfinite(v) else f"{v:.2f}"
            extra = notes.get(title)
            if extra is not None and math.isfinite(extra[i, j]):
                text += f"\n({extra[i, j]:.2f})"
            strong = math.isfinite(v) and abs(v) > 0.6 * limit
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if strong else "black")
        ax.set_xticks(range(len(features)), features, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(layers)), layers, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, Path(path))


def read_metrics_jsonl(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.jsonl`` (utils.tracking's local mirror) -> {metric: [(step, value), ...]}.

    A resumed run appends to the same file; a step logged twice keeps its last value."""
    history: dict[str, dict[int, float]] = {}
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if "metrics" not in record:
                continue
            for key, value in record["metrics"].items():
                history.setdefault(key, {})[int(record.get("step", 0))] = float(value)
    return {k: sorted(v.items()) for k, v in history.items()}


def mlflow_history(client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The same from MLflow: every metric of the run with its full history."""
    run = client.get_run(run_id)
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}


def plot_training_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path) -> Path | None:
    """Three panels: losses (train and val), validation Spearman per task, learning rate."""

    def series(key):
        points = history.get(key) or []
        return [p[0] for p in points], [p[1] for p in points]

    if not history.get("train/loss") and not any(k.startswith("val/") for k in history):
        return None
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    ax_loss, ax_val, ax_lr = fig.subplots(1, 3)
    plotted: list[float] = []
    # train/loss is a task-weighted sum and validation logs no total, so both curves here are
    # the plain mean of the per-task losses: the same quantity on both sides.
    for split, style in (("train", "-"), ("val", "o-")):
        keys = sorted(k for k in history if k.startswith(f"{split}/") and k.endswith("/loss") and k.count("/") == 2)
        if not keys:
            continue
        table = {k: dict(history[k]) for k in keys}
        steps = sorted({s for k in keys for s in table[k]})
        mean = [float(np.nanmean([table[k].get(s, np.nan) for k in keys])) for s in steps]
        ax_loss.plot(steps, mean, style, lw=1, ms=3, label=f"{split} (mean of {len(keys)} task losses)")
        plotted += mean
    if not ax_loss.lines and history.get("train/loss"):
        ax_loss.plot(*series("train/loss"), lw=1, label="train (task-weighted total)")
        plotted += series("train/loss")[1]
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    _robust_upper_limit(ax_loss, plotted)
    if ax_loss.lines:  # below the axes: inside it would cover the curves
        ax_loss.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    for key in sorted(k for k in history if k.startswith("val/") and k.endswith("/spearman")):
        ax_val.plot(*series(key), "o-", lw=1, ms=2, label=key.split("/")[1])
    ax_val.plot(*series("val/mean_spearman"), "k-", lw=2, label="mean")
    ax_val.set(xlabel="step", ylabel="Spearman", title="validation")
    ax_val.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)
    ax_lr.plot(*series("train/lr"), lw=1)
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    return _save(fig, Path(path))


def _robust_upper_limit(ax, values: Sequence[float]) -> None:
    """Cap the y axis where a few spikes (one bad validation, the first steps) would flatten every
    other point, and say how many points are above it."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size < 4:
        return
    low, high = np.percentile(finite, [0, 90])
    cap = high + 0.5 * (high - low)
    above = int((finite > cap).sum())
    if above and finite.max() > cap:
        ax.set_ylim(top=cap)
        ax.text(
            0.98,
            0.98,
            f"{above} point(s) above the axis",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="grey",
        )


def _nan(value) -> float:
    return math.nan if value is None else float(value)
