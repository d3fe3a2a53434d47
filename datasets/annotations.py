"""Annotation tables: cleaned or raw GPT-annotation CSVs -> one canonical table -> targets.

Two input formats, told apart by column names:

* **clean** (``video_name, distance_score, distance_confidence, ..., peoplecount,
  peoplecount_certain, location_score, location_confidence, *_explanation``), the schema of
  the published 43,392-row table;
* **raw** per-batch files of the annotation script: any column starting with ``model_``
  marks a raw file. ``model_<name>`` becomes ``<name>`` (``model_distance_score`` ->
  ``distance_score``, ``model_peoplecount_certain`` -> ``peoplecount_certain``,
  ``model_location_confidence`` -> ``location_confidence``, ``model_location_explanation``
  -> ``location_explanation``); ``model_location`` (or ``model_location_score``) becomes
  ``location_score``. The annotation script wrote one file per question, so a raw file
  usually holds the columns of one question only.

Several files are merged per ``video_name`` (rows in first-seen order). The same column for
the same video in two files is an error unless ``on_duplicate`` is ``first``/``last``; a
repeated name inside one file is always an error. Kept columns: ``video_name``, the 20
target columns, ``*_explanation`` and ``split``; the rest (``model``, ``model_response``,
``question_name``, ...) is ignored and listed in the report.

Both go through the same value normalization (clean values pass through unchanged):

* scores and confidences: parsed as numbers, clipped to [0, 1], rounded to one decimal
  (half-to-even, as pandas' ``round(1)``); an empty score stays NaN, an empty confidence
  becomes 0 (so does one of a video that the file of that question lacks). A non-empty value
  that is not a number is an error (a broken table, not a judgement call).
* ``location_score``: ``indoor``/``indoors`` (any case) -> ``Indoor``, ``outdoor``/``outdoors``
  -> ``Outdoor``; anything else (``underwater``, ``both``, ``Mixed``, ``Unknown``,
  ``Indoor/Outdoor``, ...) -> unknown (NaN), counted in the report.
* ``peoplecount``: see :func:`normalize_peoplecount`; result ``0``, ``1``, ``2``, ``3``,
  ``many`` or unknown (NaN, counted).
* ``peoplecount_certain``: ``True``/``False`` (also ``true``/``1``/``yes``, ...), then set to
  True wherever the count is ``many`` (the cleaned table's rule).

Empty cells and the usual spellings of "missing" (``nan``, ``None``, ``null``, ``NA``,
``N/A``, any case) are missing values everywhere. Every non-missing value that could not be
mapped is counted in the :class:`NormalizationReport`; nothing is dropped silently.
Row numbers in errors are *data rows, 1-based, header not counted* (explanations may span
several lines, so file line numbers would mislead).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from utils.tasks import PEOPLECOUNT_CLASSES, SCORE_FEATURES, TASKS, parse_tasks, task_outputs

RAW_PREFIX = "model_"
SPLIT_COLUMN = "split"
TARGET_COLUMNS: tuple[str, ...] = tuple(
    [c for f in SCORE_FEATURES for c in (f"{f}_score", f"{f}_confidence")]
    + ["peoplecount", "peoplecount_certain", "location_score", "location_confidence"]
)
CONFIDENCE_COLUMNS: tuple[str, ...] = tuple(c for c in TARGET_COLUMNS if c.endswith("_confidence"))
NUMERIC_COLUMNS: tuple[str, ...] = tuple(f"{f}_score" for f in SCORE_FEATURES) + CONFIDENCE_COLUMNS
EXPLANATION_COLUMNS: tuple[str, ...] = tuple(
    [f"{f}_explanation" for f in SCORE_FEATURES] + ["location_explanation", "scene_analysis_explanation"]
)
MISSING_TOKENS = frozenset({"", "nan", "none", "null", "na", "n/a"})
ON_DUPLICATE_CHOICES = ("error", "first", "last")

# Raw names that are not simply "model_" + canonical name.
_RAW_ALIASES = {"location": "location_score"}
_MAX_LISTED = 5  # rows/videos listed in one error message


class AnnotationError(ValueError):
    """A table that cannot be used as it is; the message names file, row and column."""


@dataclass
class NormalizationReport:
    """What normalization did. Keys are canonical column names.

    ``unmapped``: column -> raw value -> count of non-missing values that became unknown.
    ``recoded``: column -> (raw value, canonical value) -> count of values that were mapped
    to a different spelling (``outdoors`` -> ``Outdoor``, ``2.0`` -> ``2``, ``numerous`` ->
    ``many``). ``clipped``/``rounded``: numbers moved into [0, 1] / onto the 0.1 grid.
    ``filled``: missing confidences set to 0. ``certain_set_by_many``: rows whose
    ``peoplecount_certain`` was made True because the count is ``many``.
    ``duplicates_resolved``: cells taken from one file over another (``on_duplicate``).
    """

    files: list[str] = field(default_factory=list)
    rows: int = 0
    unmapped: dict[str, Counter] = field(default_factory=dict)
    recoded: dict[str, Counter] = field(default_factory=dict)
    clipped: Counter = field(default_factory=Counter)
    rounded: Counter = field(default_factory=Counter)
    filled: Counter = field(default_factory=Counter)
    certain_set_by_many: int = 0
    duplicates_resolved: int = 0
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)

    @property
    def total_unmapped(self) -> int:
        return sum(sum(c.values()) for c in self.unmapped.values())

    def __str__(self) -> str:
        return "\n".join(self.summary_lines())

    def summary_lines(self) -> list[str]:
        lines = [f"files: {len(self.files)}  rows: {self.rows}"]
        if self.unmapped:
            lines.append(f"values that could not be mapped (set to unknown): {self.total_unmapped}")
            for column, counts in self.unmapped.items():
                for value, n in counts.most_common():
                    lines.append(f"  {column}: {value!r} x{n}")
        else:
            lines.append("values that could not be mapped: none")
        for column, counts in self.recoded.items():
            for (value, canonical), n in counts.most_common():
                lines.append(f"recoded {column}: {value!r} -> {canonical!r} x{n}")
        for title, counter in (
            ("clipped to [0, 1]", self.clipped),
            ("rounded to 0.1", self.rounded),
            ("missing confidence set to 0", self.filled),
        ):
            if counter:
                lines.append(f"{title}: " + ", ".join(f"{column} x{n}" for column, n in counter.items()))
        if self.certain_set_by_many:
            lines.append(f"peoplecount_certain set True because count is many: x{self.certain_set_by_many}")
        if self.duplicates_resolved:
            lines.append(f"duplicate cells resolved by --on-duplicate: x{self.duplicates_resolved}")
        for path, columns in self.ignored_columns.items():
            lines.append(f"ignored columns in {path}: {', '.join(columns)}")
        return lines


# --------------------------------------------------------------------------- single values


def _plain(text: str) -> str:
    """Lower case, single spaces, one pair of surrounding quotes removed (``'3'`` -> ``3``)."""
    word = " ".join(text.split())
    if len(word) >= 2 and word[0] == word[-1] and word[0] in "'\"":
        word = " ".join(word[1:-1].split())
    return word.lower()


def normalize_location(text: str) -> str | None:
    """``Indoor``/``Outdoor`` for the indoor/outdoor spellings, else None (unknown)."""
    word = _plain(text)
    if word in ("indoor", "indoors"):
        return "Indoor"
    if word in ("outdoor", "outdoors"):
        return "Outdoor"
    return None


# Words the annotator used instead of a number for a group too large to count.
MANY_WORDS = frozenset(
    {"many", "numerous", "multiple", "hundreds", "thousands", "dozens", "difficult to estimate due to crowd"}
)
_RANGE = re.compile(r"^(\d+)\s*(?:-|–|to)\s*(\d+)$")
_OPEN_ABOVE = re.compile(r"^(?:over|more than|above)\s+(\d+)$")  # N excluded
_OPEN_FROM = re.compile(r"^(?:(\d+)\s*(?:\+|or more)|at least\s+(\d+))$")  # N included


def _count_class(n: float) -> str | None:
    if not math.isfinite(n) or n < 0 or n != int(n):
        return None
    return str(int(n)) if n <= 3 else "many"


def normalize_peoplecount(text: str) -> str | None:
    """One of ``0 1 2 3 many``, or None (unknown).

    * numbers (``2``, ``2.0``, ``'3'``, ``50.0``, ``1000.0``): whole, non-negative; > 3 -> many;
      fractions and negatives -> unknown;
    * :data:`MANY_WORDS` (any case): many, numerous, multiple, hundreds, thousands, dozens,
      ``difficult to estimate due to crowd`` (a crowd is what "many" means) -> many;
    * ranges ``15-20`` / ``15 to 20``: the class both ends share, else unknown (``2-5``);
    * open-ended counts ``over 50``, ``more than 4``, ``3 or more``, ``5+``, ``at least 3``:
      many when the smallest count they allow is >= 3 (so ``3 or more`` -> many: the
      annotator could not bound the group), else unknown;
    * anything else -> unknown, notably ``uncertain, likely many``: the annotator says it
      is unsure of the class itself, and ``many`` would also force
      ``peoplecount_certain=True``, a certainty the annotator did not claim.
    """
    word = _plain(text)
    try:
        return _count_class(float(word))
    except ValueError:
        pass
    if word in MANY_WORDS:
        return "many"
    if match := _RANGE.match(word):
        low, high = (_count_class(float(g)) for g in match.groups())
        return low if low == high else None
    if match := _OPEN_ABOVE.match(word):
        return "many" if int(match.group(1)) + 1 >= 3 else None
    if match := _OPEN_FROM.match(word):
        return "many" if int(match.group(1) or match.group(2)) >= 3 else None
    return None


def normalize_certain(text: str) -> bool | None:
    """True for ``True``/``true``/``1``/``yes``, False for ``False``/``0``/``no``, else None."""
    word = _plain(text)
    if word in ("true", "1", "1.0", "yes"):
        return True
    if word in ("false", "0", "0.0", "no"):
        return False
    return None


# --------------------------------------------------------------------------- one file


@dataclass
class _FileTable:
    path: str
    frame: pd.DataFrame  # canonical columns, values normalized


def _read_strings(path: str) -> pd.DataFrame:
    """The file as strings, exactly as written (no NA guessing), with duplicate headers refused."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), None)
        if header is None:
            raise AnnotationError(f"{path}: empty file, expected a CSV header with 'video_name'")
        repeated = sorted({c for c in header if header.count(c) > 1})
        if repeated:
            raise AnnotationError(f"{path}: column(s) {repeated} appear more than once in the header")
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except AnnotationError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise AnnotationError(f"{path}: cannot read as a CSV table: {error}") from error


def _canonical_names(path: str, columns: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """canonical name -> file column, and the ignored file columns."""
    known = set(TARGET_COLUMNS) | {"video_name", SPLIT_COLUMN}
    mapping: dict[str, str] = {}
    ignored: list[str] = []
    for column in columns:
        name = column.strip()
        if name.startswith(RAW_PREFIX):
            name = name[len(RAW_PREFIX) :]
            name = _RAW_ALIASES.get(name, name)
        if name in known or name.endswith("_explanation"):
            if name in mapping:
                raise AnnotationError(
                    f"{path}: columns {mapping[name]!r} and {column!r} both hold {name!r}; keep one of them"
                )
            mapping[name] = column
        else:
            ignored.append(column)
    if "video_name" not in mapping:
        raise AnnotationError(f"{path}: missing required column 'video_name' (columns are {list(columns)})")
    return mapping, ignored


def _row_label(frame: pd.DataFrame, index: int) -> str:
    return f"data row {index + 1} (video_name {frame['video_name'].iat[index]!r})"


def _parse_numbers(
    path: str, frame: pd.DataFrame, canonical: str, column: str, report: NormalizationReport
) -> pd.Series:
    text = frame[column].str.strip()
    missing = text.str.lower().isin(MISSING_TOKENS)
    values = pd.to_numeric(text.where(~missing), errors="coerce").astype("float64")
    bad = np.flatnonzero((~missing & values.isna()).to_numpy())
    if len(bad):
        listed = "; ".join(f"{_row_label(frame, i)}: {text.iat[i]!r}" for i in bad[:_MAX_LISTED])
        more = f" (and {len(bad) - _MAX_LISTED} more)" if len(bad) > _MAX_LISTED else ""
        raise AnnotationError(
            f"{path}: column {column!r} must hold numbers, found {len(bad)} that are not "
            f"(rows are 1-based data rows, header not counted): {listed}{more}"
        )
    outside = (values < 0) | (values > 1)
    if outside.any():
        report.clipped[canonical] += int(outside.sum())
    clipped = values.clip(0.0, 1.0)
    rounded = clipped.round(1)
    moved = (rounded != clipped) & clipped.notna()
    if moved.any():
        report.rounded[canonical] += int(moved.sum())
    return rounded


def _map_categories(frame: pd.DataFrame, canonical: str, column: str, mapper, report: NormalizationReport) -> list:
    text = frame[column].str.strip()
    mapped: dict[str, object] = {}
    for value, count in text.value_counts(sort=False).items():
        if value.lower() in MISSING_TOKENS:
            mapped[value] = None
            continue
        result = mapper(value)
        mapped[value] = result
        if result is None:
            report.unmapped.setdefault(canonical, Counter())[value] += int(count)
        elif str(result) != value:
            report.recoded.setdefault(canonical, Counter())[(value, str(result))] += int(count)
    return [mapped[v] for v in text]


def _normalize_file(path: str, raw: pd.DataFrame, report: NormalizationReport) -> _FileTable:
    mapping, ignored = _canonical_names(path, list(raw.columns))
    if ignored:
        report.ignored_columns[path] = ignored
    names = raw[mapping["video_name"]].str.strip()
    raw = raw.assign(**{mapping["video_name"]: names}).rename(columns={mapping["video_name"]: "video_name"})
    mapping["video_name"] = "video_name"
    _check_names(path, raw)

    out = {"video_name": raw["video_name"]}
    for canonical in TARGET_COLUMNS:
        if canonical not in mapping:
            continue
        column = mapping[canonical]
        if canonical in NUMERIC_COLUMNS:
            out[canonical] = _parse_numbers(path, raw, canonical, column, report)
        elif canonical == "peoplecount":
            out[canonical] = pd.Series(
                _map_categories(raw, canonical, column, normalize_peoplecount, report), dtype="str"
            )
        elif canonical == "location_score":
            out[canonical] = pd.Series(_map_categories(raw, canonical, column, normalize_location, report), dtype="str")
        else:  # peoplecount_certain
            out[canonical] = pd.Series(
                _map_categories(raw, canonical, column, normalize_certain, report), dtype="boolean"
            )
    for canonical, column in mapping.items():
        if canonical.endswith("_explanation") or canonical == SPLIT_COLUMN:
            text = raw[column]
            out[canonical] = text.where(text.str.strip() != "")
    return _FileTable(path=path, frame=pd.DataFrame(out))


def _check_names(path: str, raw: pd.DataFrame) -> None:
    names = raw["video_name"]
    empty = np.flatnonzero(names.str.lower().isin(MISSING_TOKENS).to_numpy())
    if len(empty):
        rows = ", ".join(str(i + 1) for i in empty[:_MAX_LISTED])
        raise AnnotationError(
            f"{path}: column 'video_name' is empty in data row(s) {rows} "
            f"({len(empty)} in all; 1-based data rows, header not counted)"
        )
    repeated = names[names.duplicated(keep=False)]
    if len(repeated):
        groups = repeated.groupby(repeated, sort=False).groups
        listed = "; ".join(
            f"{name!r} in data rows {', '.join(str(i + 1) for i in rows)}"
            for name, rows in list(groups.items())[:_MAX_LISTED]
        )
        raise AnnotationError(
            f"{path}: duplicate video_name ({len(groups)} names; 1-based data rows, header not counted): {listed}"
        )


# --------------------------------------------------------------------------- many files


def _merge_files(tables: list[_FileTable], on_duplicate: str, report: NormalizationReport) -> pd.DataFrame:
    """Outer-join files on video_name, keeping first-seen row order.

    Raw files of different questions share videos but not columns. The same (video, column)
    in two files is a duplicate: an error, or resolved by ``on_duplicate`` ('first'/'last').
    """
    if len(tables) == 1:
        return tables[0].frame
    order = pd.unique(pd.concat([t.frame["video_name"] for t in tables], ignore_index=True))
    merged = pd.DataFrame(index=pd.Index(order, name="video_name"))
    owner: dict[str, pd.Series] = {}  # column -> index of the file each value came from (-1: none)
    for number, table in enumerate(tables):
        frame = table.frame.set_index("video_name")
        for column in frame.columns:
            values = frame[column]
            if column not in merged:
                merged[column] = values.reindex(merged.index)
                owner[column] = pd.Series(-1, index=merged.index)
                owner[column].loc[values.index] = number
                continue
            earlier = owner[column].reindex(values.index)
            clash = earlier[earlier >= 0]
            if len(clash) and on_duplicate == "error":
                _raise_duplicate(tables, table, int(clash.iat[0]), clash.index, column)
            take = values.index if on_duplicate == "last" else earlier.index[earlier < 0]
            report.duplicates_resolved += len(clash)
            merged.loc[take, column] = values.loc[take]
            owner[column].loc[take] = number
    return merged.reset_index()


def _raise_duplicate(tables: list[_FileTable], table: _FileTable, first: int, videos: pd.Index, column: str) -> None:
    other = tables[first]
    rows_other = pd.Series(range(1, len(other.frame) + 1), index=other.frame["video_name"])
    rows_this = pd.Series(range(1, len(table.frame) + 1), index=table.frame["video_name"])
    listed = "; ".join(
        f"{v!r} ({other.path} data row {rows_other[v]}, {table.path} data row {rows_this[v]})"
        for v in videos[:_MAX_LISTED]
    )
    raise AnnotationError(
        f"{len(videos)} video(s) have column {column!r} in both {other.path} and {table.path} "
        f"(1-based data rows, header not counted): {listed}. Remove one, or choose on_duplicate "
        f"'first'/'last' (clean_annotations --on-duplicate)."
    )


def _required_columns(tasks: Iterable[str]) -> list[str]:
    return [name for task in tasks for name in task_outputs(task)]


def _ordered_columns(frame: pd.DataFrame) -> list[str]:
    known = [c for c in ("video_name", *TARGET_COLUMNS, *EXPLANATION_COLUMNS) if c in frame]
    other_explanations = [c for c in frame if c.endswith("_explanation") and c not in EXPLANATION_COLUMNS]
    return known + other_explanations + ([SPLIT_COLUMN] if SPLIT_COLUMN in frame else [])


def load_annotation_table(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    tasks: str | Iterable[str] | None = "all",
    on_duplicate: str = "error",
    require_targets: bool = True,
) -> tuple[pd.DataFrame, NormalizationReport]:
    """Read one or more clean or raw annotation CSVs into the canonical cleaned schema.

    Returns the table (``video_name``, the target columns, explanation columns and ``split``
    where present; rows in first-seen order, one per video) and what normalization did.
    The columns of ``tasks`` must be present after merging (with ``require_targets=False`` none
    is: a plain list of video names will do); other tasks' columns are normalized when present.
    Duplicate video names inside one file are always an error; across files ``on_duplicate``
    decides (see :func:`_merge_files`).
    Raises :class:`AnnotationError` naming the file, data row and column.
    """
    if on_duplicate not in ON_DUPLICATE_CHOICES:
        raise ValueError(f"on_duplicate must be one of {ON_DUPLICATE_CHOICES}, got {on_duplicate!r}")
    path_list = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [os.fspath(p) for p in paths]
    if not path_list:
        raise ValueError("no annotation file given")
    report = NormalizationReport(files=path_list)
    tables = [_normalize_file(path, _read_strings(path), report) for path in path_list]
    merged = _merge_files(tables, on_duplicate, report)

    required = _required_columns(parse_tasks(tasks)) if require_targets else []
    missing = [c for c in required if c not in merged]
    if missing:
        raw_names = ", ".join(RAW_PREFIX + ("location" if c == "location_score" else c) for c in missing)
        present = [t for t in TASKS if all(c in merged for c in _required_columns((t,)))]
        hint = (
            f"train, evaluate or extract only the tasks it has with --tasks {','.join(present)}"
            if present
            else "it has the columns of no task"
        )
        raise AnnotationError(
            f"{', '.join(path_list)}: missing required column(s) {missing} (raw files: {raw_names}) "
            f"for tasks {list(parse_tasks(tasks))}; {hint}"
        )
    # Filled after merging: a video missing from the file of one question has no confidence
    # for it either, and the cleaned table never holds an empty confidence.
    for column in CONFIDENCE_COLUMNS:
        if column in merged and merged[column].isna().any():
            report.filled[column] += int(merged[column].isna().sum())
            merged[column] = merged[column].fillna(0.0)
    if "peoplecount" in merged and "peoplecount_certain" in merged:
        many = (merged["peoplecount"] == "many").to_numpy()
        forced = many & ~(merged["peoplecount_certain"].fillna(False).to_numpy(dtype=bool))
        report.certain_set_by_many += int(forced.sum())
        merged.loc[many, "peoplecount_certain"] = True
    report.rows = len(merged)
    return merged[_ordered_columns(merged)].reset_index(drop=True), report


# --------------------------------------------------------------------------- targets

_PEOPLECOUNT_INDEX = {name: i for i, name in enumerate(PEOPLECOUNT_CLASSES)}
_LOCATION_VALUE = {"Indoor": 0.0, "Outdoor": 1.0}  # the earlier Lightning version's encoding


def build_targets(df: pd.DataFrame, tasks: str | Iterable[str] | None = "all") -> dict[str, np.ndarray]:
    """Target arrays (one entry per row) under the shared target keys of ``utils.tasks``.

    Score/confidence columns: float32, NaN = missing. ``peoplecount``: int64 class index
    (0, 1, 2, 3, many=4), -1 = unknown. ``peoplecount_certain``: float32 1/0, NaN = unknown.
    ``location_score``: float32 1.0 = Outdoor, 0.0 = Indoor, NaN = unknown.
    ``df`` must be canonical (from :func:`load_annotation_table`).
    """
    selected = parse_tasks(tasks)
    missing = [c for c in _required_columns(selected) if c not in df]
    if missing:
        raise AnnotationError(f"annotation table lacks column(s) {missing} needed by tasks {list(selected)}")
    targets: dict[str, np.ndarray] = {}
    for column in _required_columns(selected):
        values = df[column]
        if column == "peoplecount":
            targets[column] = _encode(values, _PEOPLECOUNT_INDEX, -1, np.int64, column)
        elif column == "location_score":
            targets[column] = _encode(values, _LOCATION_VALUE, np.nan, np.float32, column)
        elif column == "peoplecount_certain":
            targets[column] = _encode(values, {True: 1.0, False: 0.0}, np.nan, np.float32, column)
        else:
            try:
                targets[column] = pd.to_numeric(values, errors="raise").to_numpy(dtype=np.float32, na_value=np.nan)
            except (TypeError, ValueError) as error:
                raise AnnotationError(
                    f"column {column!r} is not numeric ({error}); read tables with load_annotation_table"
                ) from error
    return targets


def _encode(values: pd.Series, codes: dict, unknown, dtype, column: str) -> np.ndarray:
    missing = values.isna().to_numpy()
    known = values[~missing]
    bad = known[~known.isin(list(codes))]
    if len(bad):
        row = int(np.flatnonzero(~missing)[np.flatnonzero(~known.isin(list(codes)).to_numpy())[0]])
        raise AnnotationError(
            f"column {column!r} holds {bad.iat[0]!r} at table row {row} (0-based); expected one of "
            f"{list(codes)} or empty — read tables with load_annotation_table"
        )
    out = np.full(len(values), unknown, dtype=dtype)
    out[~missing] = [codes[v] for v in known]
    return out
