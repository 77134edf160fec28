"""Figures from the result tables: deviation heatmap, forest plot, distributions, trends.

Every function takes tables and returns a :class:`matplotlib.figure.Figure`; nothing is shown or
written here (report.py saves them). Figures are built without pyplot, so they work headless and
are freed when dropped. ``margin`` is a fraction (0.05 = 5 %), as in ``stats.compare_tables``;
deviations are in % (100 (synth - real) / real).
"""
from .cohorts import distributions, has_demographics, trend_plot
from .demographics import subgroup_counts, table_one
from .deviation import deviation_heatmap, forest_plot
from .previews import closest_pairs_figure, memorization_histogram, preview_figure
from .style import (COHORT_PALETTE, DEVIATION_CMAP, METRIC_LABELS, OUTSIDE_GID, REAL_COLOUR, SYNTH_COLOUR,
                    UNTESTED_GID, age_group_key, age_group_order, metric_label, organ_order, populated_subgroups,
                    subgroup_label, subgroups)
from .twins import bland_altman, suvmax_figure, twin_scatter

__all__ = ["COHORT_PALETTE", "DEVIATION_CMAP", "METRIC_LABELS", "OUTSIDE_GID", "REAL_COLOUR", "SYNTH_COLOUR",
           "UNTESTED_GID", "age_group_key", "age_group_order", "deviation_heatmap", "distributions", "forest_plot",
           "has_demographics", "metric_label", "organ_order", "populated_subgroups", "subgroup_label", "subgroups",
           "trend_plot", "table_one", "subgroup_counts", "preview_figure", "closest_pairs_figure",
           "memorization_histogram", "twin_scatter", "bland_altman", "suvmax_figure"]
