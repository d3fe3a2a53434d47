"""What a sweep has found so far: ``status`` (each trial's state) and ``summary`` (the ranking).

Both read the sweep directory's state (the trials, their child run ids) and MLflow (each child's
status and the history of the sweep's metric), so they work while trials are running, and the
summary is the same whichever machine ran the trials.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from launch.sweep import load_state, store_client
from launch.sweep_file import format_value


def best_of(history, mode: str) -> tuple[float, int] | None:
    """(value, step) of the best finite value of a metric history, the earliest on a tie."""
    points = [(m.value, m.step) for m in history if math.isfinite(m.value)]
    if not points:
        return None
    sign = -1 if mode == "max" else 1
    return min(points, key=lambda p: (sign * p[0], p[1]))


def checkpoint_path(output_dir: str) -> str:
    """The trial's best.pt (its best validation), else last.pt, else ''."""
    for name in ("best.pt", "last.pt"):
        path = Path(output_dir) / "checkpoints" / name
        if path.exists():
            return str(path)
    return ""


def trial_table(state: dict[str, Any]) -> pd.DataFrame:
    """One row per trial: its values, MLflow status, best metric and its step, checkpoint."""
    client = store_client(state)
    rows = []
    for entry in state["trials"]:
        run_id = entry["run_id"]
        status = client.get_run(run_id).info.status if run_id else "not created"
        best = best_of(client.get_metric_history(run_id, state["metric"]), state["mode"]) if run_id else None
        rows.append(
            {
                "trial": entry["trial"],
                **{k: entry["overrides"].get(k) for k in state["swept"]},
                "status": "PENDING" if status == "SCHEDULED" else status,
                state["metric"]: best[0] if best else math.nan,
                "step": best[1] if best else None,
                "checkpoint": checkpoint_path(entry["output_dir"]),
                "run_id": run_id,
            }
        )
    return pd.DataFrame(rows)


def best_row(table: pd.DataFrame, metric: str, mode: str) -> int | None:
    """Index of the best trial by ``metric`` (None when no trial has logged it)."""
    values = table[metric].dropna()
    if values.empty:
        return None
    return int(values.idxmax() if mode == "max" else values.idxmin())


def _shown(table: pd.DataFrame, columns: list[str]) -> str:
    shown = table[columns].copy()
    for column in columns:
        if column == "best":
            continue
        shown[column] = [
            "-" if v is None or (isinstance(v, float) and math.isnan(v)) or v == "" else format_value(v)
            for v in shown[column]
        ]
    return shown.to_string(index=False)


def print_status(sweep_dir: Path) -> None:
    state = load_state(sweep_dir)
    table = trial_table(state)
    counts = table["status"].value_counts()
    print(f"sweep {state['name']} ({sweep_dir}): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    table.insert(
        1, "values", [" ".join(f"{k}={format_value(v)}" for k, v in e["overrides"].items()) for e in state["trials"]]
    )
    table = table.rename(columns={state["metric"]: f"best {state['metric']} so far"})
    print(_shown(table, ["trial", "values", "status", f"best {state['metric']} so far", "step"]))


def print_summary(sweep_dir: Path) -> pd.DataFrame:
    """Print the ranked table, write summary.csv and summary.png to the sweep directory and log
    them to the parent run (with the best trial's metric, run id and checkpoint)."""
    state = load_state(sweep_dir)
    metric, mode = state["metric"], state["mode"]
    table = trial_table(state)
    best = best_row(table, metric, mode)
    table.insert(0, "best", ["*" if i == best else "" for i in range(len(table))])
    table.to_csv(sweep_dir / "summary.csv", index=False)
    columns = ["best", "trial", *state["swept"], "status", metric, "step", "checkpoint"]
    print(f"sweep {state['name']} ({sweep_dir}), ranked by {metric} ({mode}):")
    print(_shown(table, columns))
    client = store_client(state)
    parent = state["parent_run_id"]
    if best is None:
        print(f"no trial has logged {metric} yet")
    else:
        row = table.iloc[best]
        print(
            f"best: trial {row['trial']} ({' '.join(f'{k}={format_value(row[k])}' for k in state['swept'])}): "
            f"{metric} = {row[metric]:.4g} at step {row['step']}; checkpoint {row['checkpoint'] or '(none)'}; "
            f"run {row['run_id']}"
        )
        client.set_tag(parent, "sweep.best_trial", row["trial"])
        client.set_tag(parent, "sweep.best_run_id", row["run_id"])
        client.set_tag(parent, "sweep.best_checkpoint", row["checkpoint"])
        client.log_metric(parent, metric, float(row[metric]), step=int(row["step"]))
    plot = plot_metric_by_value(table, state, best, sweep_dir / "summary.png")
    for path in (sweep_dir / "summary.csv", plot):
        client.log_artifact(parent, str(path), "summary")
    return table


def plot_metric_by_value(table: pd.DataFrame, state: dict[str, Any], best: int | None, path: Path) -> Path:
    """One panel per swept option: each trial's best metric against its value (the best trial
    ringed).  Numbers on a numeric axis (logarithmic when they span two decades), anything else
    as categories in the sweep's order."""
    from matplotlib.figure import Figure

    swept, metric = state["swept"], state["metric"]
    fig = Figure(figsize=(max(5.0, 4.0 * len(swept)), 3.6), layout="constrained")
    axes = fig.subplots(1, len(swept), squeeze=False)[0]
    y = table[metric].to_numpy(dtype=float)
    for ax, key in zip(axes, swept):
        values = list(table[key])
        if pd.api.types.is_numeric_dtype(table[key]) and not pd.api.types.is_bool_dtype(table[key]):
            x = [float(v) for v in values]
            positive = [v for v in x if v > 0]
            if len(positive) == len(x) and max(x) / min(x) >= 100:
                ax.set_xscale("log")
        else:
            labels = list(dict.fromkeys(str(v) for v in values))
            x = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
        ax.plot(x, y, "o", color="tab:blue")
        if best is not None:
            ax.plot(
                x[best],
                y[best],
                "o",
                ms=14,
                mfc="none",
                mec="tab:red",
                mew=2,
                label=f"best (trial {table['trial'][best]})",
            )
            ax.legend(loc="best", fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {metric}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"sweep {state['name']}: each trial's best {metric} ({state['mode']})", fontsize=10)
    fig.savefig(path, dpi=110)
    return path
