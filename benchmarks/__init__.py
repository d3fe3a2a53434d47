"""Benchmark scripts (run from the repo root: ``python benchmarks/<name>.py``).

This file only makes ``benchmarks`` a regular package, so that ``import benchmarks.x`` can
never resolve to some other installed ``benchmarks`` package (a folder without
``__init__.py`` is a namespace package and loses to a regular package later on sys.path).
"""
