"""Concordance statistics: synthetic vs real organ tables (pandas in, pandas out; no files or images here).

- :func:`compare_tables` -> :class:`Comparison` (``.concordance``, ``.trends``, ``.summary``, ``.params``)
- :func:`run_stats`: the same from two CSV files, writing concordance.csv, trends.csv, summary.json

Modules: ``inputs`` (columns, age groups, exclusions), ``concordance`` (subgroup cells and their tests),
``trends`` (OLS with a source interaction), ``summary`` (headline figures), ``compare`` (the entry points).
"""
from __future__ import annotations

from .compare import DEFAULT_METRICS, Comparison, StatsParams, compare_tables, read_table, run_stats
from .concordance import CONCORDANCE_COLUMNS, bh_adjust, cell_statistics, subgroups
from .trends import TRENDS_COLUMNS, trend_formula

__all__ = ["CONCORDANCE_COLUMNS", "DEFAULT_METRICS", "TRENDS_COLUMNS", "Comparison", "StatsParams", "bh_adjust",
           "cell_statistics", "compare_tables", "read_table", "run_stats", "subgroups", "trend_formula"]
