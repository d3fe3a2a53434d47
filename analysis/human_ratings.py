"""Human rating tables, read for comparison with the network and the GPT annotations.

Two forms, told apart by their columns (names compared ignoring case, spaces, ``_`` and ``-``):

* **long**: ``subjectID, video_name, question_name, likert_response``, one row per rating
  of one video by one person.  Likert 1-5 becomes (x - 1) / 4 in [0, 1]; a value outside
  1-5 or not a number is an error naming the file, row and column; an empty response is
  skipped (counted).  The same person rating the same video on the same question twice is
  averaged (counted).
* **wide**: ``video_name`` plus one column per feature holding each video's mean rating
  (the public 250-clip study's layout: ``video_name, indoor, expanse, transitivity, agent
  distance, facingness, joint action, communication, cooperation, dominance, intimacy,
  valence, arousal``).  A column whose values exceed 1 is read as Likert 1-5 means and
  mapped to [0, 1] like the long form; one with values in [0, 1] is taken as already mapped
  (``scale="likert"``/``"unit"`` forces either).  Means only: no per-person analysis and no
  noise ceiling is possible from this form.

Feature names (question names in the long form, column names in the wide form) map to the
model's outputs as below; both the project's feature names and the study's names work:

==================================  ===============  ======================================
human feature                       model output      compared with
==================================  ===============  ======================================
indoor                              location_score   1 - p(Outdoor) (the head predicts Outdoor)
outdoor                             location_score   p(Outdoor)
expanse, spatial expanse            expanse_score    as is
transitivity, object, object        object_score     as is: both are high when the action is
directedness                                         directed at an object (a thing, not a
                                                     person); low for actions without one
agent distance, distance            distance_score   as is
facingness                          facingness_score as is
joint action, joint                 joint_score      as is
communication, communicating        communicating_   as is (the original check found this one
                                    score            inverted: see ``invert``)
valence, arousal                    <f>_score        as is
cooperation, dominance, intimacy    none             reported as unmatched, never an error
==================================  ===============  ======================================

Any other name is counted and reported as unknown.  With ``all_features=True`` (for analyses
that need no model output, such as ``align_features.py``) every feature is kept instead: the
names above map as in the table, any other name becomes its own task (its normalised name,
spaces as ``_``: ``cooperation``, ``how_funny``), compared as is.  ``invert`` flips chosen human features
(x -> 1 - x) when a questionnaire's scale runs the other way from the annotation's.
Video names are matched by their file stem (``a/b/-2DPYvJ5j9E_117.mp4`` -> ``-2DPYvJ5j9E_117``),
so folders and extensions need not agree between tables.  Row numbers in errors are data
rows, 1-based, header not counted (as in ``datasets.annotations``).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "HumanRatings",
    "HumanRatingsError",
    "load_human_ratings",
    "video_key",
    "feature_for",
    "LIKERT_MIN",
    "LIKERT_MAX",
]

LIKERT_MIN, LIKERT_MAX = 1.0, 5.0
LONG_COLUMNS = {
    "subjectid": "subject",
    "videoname": "video_name",
    "questionname": "question",
    "likertresponse": "response",
}
SCALES = ("auto", "likert", "unit")

# human feature name (normalised) -> (model task, direction); direction -1 means the human
# feature is the opposite end of the model output, so the model side is compared as 1 - p.
_FEATURES: dict[str, tuple[str, int]] = {
    "indoor": ("location", -1),
    "indoors": ("location", -1),
    "outdoor": ("location", 1),
    "outdoors": ("location", 1),
    "expanse": ("expanse", 1),
    "spatial expanse": ("expanse", 1),
    "transitivity": ("object", 1),
    "object": ("object", 1),
    "object directedness": ("object", 1),
    "object directed": ("object", 1),
    "agent distance": ("distance", 1),
    "distance": ("distance", 1),
    "facingness": ("facingness", 1),
    "joint action": ("joint", 1),
    "joint": ("joint", 1),
    "communication": ("communicating", 1),
    "communicating": ("communicating", 1),
    "valence": ("valence", 1),
    "arousal": ("arousal", 1),
}
NO_MODEL_OUTPUT = ("cooperation", "dominance", "intimacy")


class HumanRatingsError(ValueError):
    """A human rating table that cannot be used as it is; names the file, row and column."""


def _norm(name: object) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").replace("-", " ").split())


def feature_for(name: str) -> tuple[str, int] | None:
    """(model task, direction) of a human feature name, or None."""
    return _FEATURES.get(_norm(name))


def _task_of(name: str, all_features: bool) -> tuple[str, int] | None:
    """:func:`feature_for`; with ``all_features`` an unmapped name is its own task (direction +1)."""
    found = feature_for(name)
    if found is None and all_features:
        return _norm(name).replace(" ", "_"), 1
    return found


def video_key(name: object) -> str:
    """The file stem that links tables: folders and extension dropped."""
    base = os.path.basename(str(name).strip().replace("\\", "/"))
    return os.path.splitext(base)[0]


@dataclass
class HumanRatings:
    """Ratings in one long table, whatever the input form.

    ``ratings`` columns: ``subject`` (``"mean"`` for the wide form), ``video_name`` (as
    written), ``video_key``, ``question`` (the human feature name as written), ``task``,
    ``direction`` (+1 / -1, see the module table), ``rating`` in [0, 1].
    """

    source: str
    form: str
    ratings: pd.DataFrame
    unmatched: dict[str, int] = field(default_factory=dict)  # known feature, no model output
    unknown: dict[str, int] = field(default_factory=dict)  # names not recognised
    skipped_empty: int = 0
    repeated_averaged: int = 0
    scales: dict[str, str] = field(default_factory=dict)  # wide form: column -> likert | unit
    inverted: list[str] = field(default_factory=list)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(self.ratings["task"]))

    def question_for(self, task: str) -> str:
        return str(self.ratings.loc[self.ratings["task"] == task, "question"].iloc[0])

    def direction_for(self, task: str) -> int:
        return int(self.ratings.loc[self.ratings["task"] == task, "direction"].iloc[0])

    def summary_lines(self) -> list[str]:
        r = self.ratings
        lines = [
            f"human ratings {self.source} ({self.form} form): {len(r)} ratings of "
            f"{r['video_key'].nunique()} videos"
            + (f" by {r['subject'].nunique()} people" if self.form == "long" else " (means)")
        ]
        for task in self.tasks:
            lines.append(
                f"  {self.question_for(task)!r} -> {task}"
                + (" (compared with 1 - p(Outdoor))" if task == "location" and self.direction_for(task) < 0 else "")
            )
        if self.unmatched:
            lines.append(f"  no model output for: {', '.join(f'{k} ({v})' for k, v in self.unmatched.items())}")
        if self.unknown:
            lines.append(
                f"  unknown feature names, ignored: {', '.join(f'{k!r} ({v})' for k, v in self.unknown.items())}"
            )
        if self.skipped_empty:
            lines.append(f"  empty responses skipped: {self.skipped_empty}")
        if self.repeated_averaged:
            lines.append(f"  repeated ratings (same person, video, question) averaged: {self.repeated_averaged}")
        if self.inverted:
            lines.append(f"  inverted (1 - x) on request: {', '.join(self.inverted)}")
        return lines


def _read(path: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # parser errors, empty files, bad encodings
        raise HumanRatingsError(f"{path}: cannot read as CSV ({type(exc).__name__}: {exc})") from exc


def _numbers(path: str, frame: pd.DataFrame, column: str) -> pd.Series:
    """Column as floats (NaN for empty cells); a non-number is an error naming its row."""
    text = frame[column].str.strip()
    values = pd.to_numeric(text.where(text != ""), errors="coerce")
    bad = values.isna() & (text != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise HumanRatingsError(
            f"{path}: row {row + 1}, column {column!r}: {frame[column].iloc[row]!r} is not a number"
            + (f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else "")
        )
    return values.astype(np.float64)


def _check_range(path: str, values: pd.Series, column: str, lo: float, hi: float, what: str) -> None:
    bad = values.notna() & ((values < lo) | (values > hi))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise HumanRatingsError(
            f"{path}: row {row + 1}, column {column!r}: {values.iloc[row]:g} is outside "
            f"{what} {lo:g}-{hi:g}" + (f" ({int(bad.sum())} such rows)" if bad.sum() > 1 else "")
        )


def _require_names(path: str, frame: pd.DataFrame, column: str) -> None:
    empty = frame[column].str.strip() == ""
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise HumanRatingsError(f"{path}: row {row + 1}, column {column!r} is empty")


def _check_one_name_per_task(path: str, names: Iterable[str], all_features: bool = False) -> None:
    by_task: dict[str, dict[str, str]] = {}  # task -> normalised name -> first spelling seen
    for name in names:
        found = _task_of(name, all_features)
        if found:
            by_task.setdefault(found[0], {}).setdefault(_norm(name), str(name))
    clash = {t: list(n.values()) for t, n in by_task.items() if len(n) > 1}
    if clash:
        task, names = next(iter(clash.items()))
        raise HumanRatingsError(
            f"{path}: {' and '.join(map(repr, names))} both map to the model's {task!r}; keep one of them"
        )


def _invert(ratings: pd.DataFrame, invert: Iterable[str], path: str) -> list[str]:
    done = []
    for name in invert:
        task = _task_of(name, all_features=True)[0]  # a model task name, or a feature kept as its own task
        rows = ratings["task"] == task
        if not rows.any():
            raise HumanRatingsError(f"{path}: cannot invert {name!r}: no ratings of that feature")
        ratings.loc[rows, "rating"] = 1.0 - ratings.loc[rows, "rating"]
        done.append(task)
    return done


def _load_long(path: str, raw: pd.DataFrame, columns: dict[str, str], all_features: bool) -> HumanRatings:
    frame = raw.rename(columns=columns)
    for canonical, original in ((c, o) for o, c in columns.items()):
        if canonical in ("subject", "video_name", "question"):
            _require_names(path, raw, original)
    response_col = next(o for o, c in columns.items() if c == "response")
    values = _numbers(path, raw, response_col)
    _check_range(path, values, response_col, LIKERT_MIN, LIKERT_MAX, "the Likert range")
    frame = frame.assign(rating=(values - LIKERT_MIN) / (LIKERT_MAX - LIKERT_MIN))
    skipped = int(frame["rating"].isna().sum())
    frame = frame[frame["rating"].notna()]
    questions = frame["question"].str.strip()
    _check_one_name_per_task(path, questions.unique(), all_features)
    mapped = questions.map(lambda q: _task_of(q, all_features))
    unmatched: Counter = Counter()
    unknown: Counter = Counter()
    for q, m in zip(questions, mapped):
        if m is None:
            (unmatched if _norm(q) in NO_MODEL_OUTPUT else unknown)[q] += 1
    keep = mapped.notna().to_numpy()
    frame, mapped, questions = frame[keep], mapped[keep], questions[keep]
    ratings = pd.DataFrame(
        {
            "subject": frame["subject"].str.strip().to_numpy(),
            "video_name": frame["video_name"].str.strip().to_numpy(),
            "video_key": frame["video_name"].map(video_key).to_numpy(),
            "question": questions.to_numpy(),
            "task": [m[0] for m in mapped],
            "direction": [m[1] for m in mapped],
            "rating": frame["rating"].to_numpy(dtype=np.float64),
        }
    )
    keys = ["subject", "video_key", "task"]
    repeated = int(ratings.duplicated(keys).sum())
    if repeated:
        ratings = ratings.groupby(keys, sort=False, as_index=False).agg(
            video_name=("video_name", "first"),
            question=("question", "first"),
            direction=("direction", "first"),
            rating=("rating", "mean"),
        )
        ratings = ratings[["subject", "video_name", "video_key", "question", "task", "direction", "rating"]]
    return HumanRatings(
        source=path,
        form="long",
        ratings=ratings.reset_index(drop=True),
        unmatched=dict(unmatched),
        unknown=dict(unknown),
        skipped_empty=skipped,
        repeated_averaged=repeated,
    )


def _load_wide(path: str, raw: pd.DataFrame, video_col: str, scale: str, all_features: bool) -> HumanRatings:
    _require_names(path, raw, video_col)
    keys = raw[video_col].map(video_key)
    dup = keys.duplicated(keep=False)
    if dup.any():
        rows = (np.flatnonzero(dup.to_numpy()) + 1).tolist()
        raise HumanRatingsError(
            f"{path}: column {video_col!r}: video {keys[dup].iloc[0]!r} appears in more than one "
            f"row (rows {rows[:5]}); the wide form holds one row per video"
        )
    features = [c for c in raw.columns if c != video_col]
    _check_one_name_per_task(path, features, all_features)
    parts, unmatched, unknown, scales = [], {}, {}, {}
    for column in features:
        found = _task_of(column, all_features)
        values = _numbers(path, raw, column)
        if found is None:
            target = unmatched if _norm(column) in NO_MODEL_OUTPUT else unknown
            target[column] = int(values.notna().sum())
            continue
        chosen = scale if scale != "auto" else ("likert" if (values > 1).any() else "unit")
        if chosen == "likert":
            _check_range(path, values, column, LIKERT_MIN, LIKERT_MAX, "the Likert range")
            values = (values - LIKERT_MIN) / (LIKERT_MAX - LIKERT_MIN)
        else:
            _check_range(path, values, column, 0.0, 1.0, "the [0, 1] range of")
        scales[column] = chosen
        ok = values.notna().to_numpy()
        parts.append(
            pd.DataFrame(
                {
                    "subject": "mean",
                    "video_name": raw[video_col].str.strip().to_numpy()[ok],
                    "video_key": keys.to_numpy()[ok],
                    "question": column,
                    "task": found[0],
                    "direction": found[1],
                    "rating": values.to_numpy()[ok],
                }
            )
        )
    columns = ["subject", "video_name", "video_key", "question", "task", "direction", "rating"]
    ratings = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return HumanRatings(source=path, form="wide", ratings=ratings, unmatched=unmatched, unknown=unknown, scales=scales)


def load_human_ratings(
    path: str | os.PathLike,
    form: str = "auto",
    scale: str = "auto",
    invert: Iterable[str] = (),
    all_features: bool = False,
) -> HumanRatings:
    """Read a long- or wide-form human rating CSV (see the module docstring).

    ``form``: ``auto`` (long when the four long-form columns are present, else wide),
    ``long`` or ``wide``.  ``scale`` (wide form only): ``auto``, ``likert`` or ``unit``.
    ``invert``: feature names (human or model names) whose ratings become 1 - x.
    ``all_features``: keep features without a model output too (see the module docstring).
    Raises :class:`HumanRatingsError` naming the file, row and column.
    """
    path = os.fspath(path)
    if form not in ("auto", "long", "wide"):
        raise ValueError(f"form must be auto, long or wide, got {form!r}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    raw = _read(path)
    squashed = {c: "".join(ch for ch in c.lower() if ch.isalnum()) for c in raw.columns}
    long_cols = {c: LONG_COLUMNS[s] for c, s in squashed.items() if s in LONG_COLUMNS}
    is_long = len(set(long_cols.values())) == len(LONG_COLUMNS)
    if form == "long" and not is_long:
        missing = [
            n
            for n in ("subjectID", "video_name", "question_name", "likert_response")
            if "".join(ch for ch in n.lower() if ch.isalnum()) not in squashed.values()
        ]
        raise HumanRatingsError(
            f"{path}: long form needs columns subjectID, video_name, question_name, "
            f"likert_response; missing {missing} (found {list(raw.columns)})"
        )
    if form == "long" or (form == "auto" and is_long):
        ratings = _load_long(path, raw, long_cols, all_features)
    else:
        video_cols = [c for c, s in squashed.items() if s == "videoname"]
        if not video_cols:
            raise HumanRatingsError(
                f"{path}: no video_name column (found {list(raw.columns)}); expected the long "
                "form (subjectID, video_name, question_name, likert_response) or the wide form "
                "(video_name and one column per feature)"
            )
        ratings = _load_wide(path, raw, video_cols[0], scale, all_features)
    if ratings.ratings.empty:
        raise HumanRatingsError(
            f"{path}: no ratings of any feature the model predicts "
            f"(unknown: {list(ratings.unknown)}, no model output: {list(ratings.unmatched)})"
        )
    ratings.inverted = _invert(ratings.ratings, invert, path)
    return ratings
