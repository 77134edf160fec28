"""Concordance statistics: synthetic vs real organ tables (pandas in, pandas out; no files or images here).

- :func:`compare_tables` -> :class:`Comparison` (``.concordance``, ``.trends``, ``.summary``, ``.params``)

Modules: ``inputs`` (columns, age groups, exclusions), ``models`` (the log-scale estimand: adjusted OLS,
unadjusted, paired), ``verdicts`` (families, BH, the verdict rule), ``concordance`` (the cells),
``trends`` (OLS with a source interaction), ``summary`` (headline figures), ``compare`` (the entry point).
"""
from __future__ import annotations

from .compare import DEFAULT_METRICS, Comparison, StatsParams, compare_tables, twin_map
from .concordance import CONCORDANCE_COLUMNS, subgroups
from .inputs import read_table
from .trends import TRENDS_COLUMNS, trend_formula
from .verdicts import FAMILIES, PRIMARY_METRICS, VERDICTS, bh_adjust, family, verdict

__all__ = ["CONCORDANCE_COLUMNS", "DEFAULT_METRICS", "FAMILIES", "PRIMARY_METRICS", "TRENDS_COLUMNS", "VERDICTS",
           "Comparison", "StatsParams", "bh_adjust", "compare_tables", "family", "read_table", "subgroups",
           "trend_formula", "twin_map", "verdict"]
