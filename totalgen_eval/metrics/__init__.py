"""Per-case organ metrics (volume mL, SUV statistics, HU mean) and the cohort's organ_metrics table.

``case``: the metrics of one case in one pass over its arrays (definitions in its docstring);
``peak``: the exact SUVpeak search (1 mL spheres);
``cohort``: the table of a cohort with cache, resume, schedulers (``parallel``), skip-bad and atomic output.
"""
from __future__ import annotations

from ..volumes import read_volume
from .case import LESION_COLUMNS, LESION_MODES, METRIC_COLUMNS, case_metrics, check_label_ids, lesion_summary
from .peak import PEAK_RADIUS_MM, PEAK_SPHERE_ML, sphere_kernel
from .cohort import (CASE_COLUMNS, METRICS_VERSION, TABLE_COLUMNS, MetricsJob, assemble_table, compute_case,
                     excluded_table, lesion_table, lesions_path, measure_case, organ_metrics, read_metrics,
                     write_metrics)

__all__ = ["METRIC_COLUMNS", "CASE_COLUMNS", "TABLE_COLUMNS", "METRICS_VERSION", "PEAK_RADIUS_MM", "PEAK_SPHERE_ML",
           "case_metrics", "check_label_ids", "sphere_kernel", "organ_metrics", "write_metrics", "read_metrics",
           "compute_case", "assemble_table", "read_volume", "MetricsJob", "measure_case", "excluded_table",
           "LESION_COLUMNS", "LESION_MODES", "lesion_summary", "lesion_table", "lesions_path"]
