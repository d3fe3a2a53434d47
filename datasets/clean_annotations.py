"""Combine raw (``model_``-prefixed) or clean annotation CSVs into one cleaned CSV.

    python -m datasets.clean_annotations RAW1.csv [RAW2.csv ...] --out CLEAN.csv
        [--tasks all] [--on-duplicate {error,first,last}]

Replaces the earlier ETL notebook: files are merged per ``video_name`` (raw files of
different questions contribute different columns), values are normalized as described in
``datasets.annotations``, and one CSV in the canonical schema is written (explanation and
``split`` columns kept when present). A summary goes to stdout: rows, non-null count per
column, and every value that could not be mapped, with its count.

``--on-duplicate``: the same video with the same column in two files is an error by default
(naming both files and rows); ``first``/``last`` keep the value of the earlier/later file.
Duplicate names inside one file are always an error. Exit status 1 with a message on stderr
when a table cannot be used; the output file is only written (atomically) on success.
"""

from __future__ import annotations

import argparse
import os
import sys

import pandas as pd

from datasets.annotations import ON_DUPLICATE_CHOICES, AnnotationError, load_annotation_table
from utils.atomic import atomic_write
from utils.cli import CommandLineParser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = CommandLineParser(
        prog="python -m datasets.clean_annotations",
        description="Merge and normalize raw or clean annotation CSVs into one cleaned CSV.",
    )
    parser.add_argument("inputs", nargs="+", help="annotation CSV files (raw model_* or clean)")
    parser.add_argument("--out", required=True, help="path of the cleaned CSV to write")
    parser.add_argument(
        "--tasks",
        default="all",
        help="tasks whose columns must be present, 'all' or e.g. 'distance,location' (default: all)",
    )
    parser.add_argument(
        "--on-duplicate",
        choices=ON_DUPLICATE_CHOICES,
        default="error",
        help="same video and column in two files: error (default), keep first, keep last",
    )
    return parser.parse_args(argv)


def summary(table: pd.DataFrame) -> list[str]:
    width = max(len(c) for c in table.columns)
    counts = table.notna().sum()
    return ["non-null values per column:"] + [f"  {c:<{width}}  {int(counts[c])}" for c in table.columns]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    if any(os.path.abspath(p) == out for p in args.inputs):
        print(f"error: --out {args.out} is also an input; write the cleaned table elsewhere", file=sys.stderr)
        return 1
    try:
        table, report = load_annotation_table(args.inputs, tasks=args.tasks, on_duplicate=args.on_duplicate)
    except (AnnotationError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        # a half-written table must never be mistaken for a finished one
        atomic_write(args.out, lambda tmp: table.to_csv(tmp, index=False, encoding="utf-8"))
    except OSError as error:
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return 1
    print("\n".join([f"wrote {args.out}", *report.summary_lines(), *summary(table)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
