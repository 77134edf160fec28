"""totalgen-eval: generate and evaluate synthetic whole-body FDG PET/CT.

The notebook API (names are contracts, see ARCHITECTURE.md):

    from totalgen_eval import load_cohort, organ_metrics, compare_tables
    cohort = load_cohort("real/")
    table = organ_metrics(cohort, segmenter="labels", workers=2)
    result = compare_tables(real_table, synth_table, margin=0.05)
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_cohort": "totalgen_eval.cohort",
    "Cohort": "totalgen_eval.cohort",
    "Case": "totalgen_eval.cohort",
    "organ_metrics": "totalgen_eval.metrics",
    "compare_tables": "totalgen_eval.stats",
    "InputError": "totalgen_eval.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:  # lazy: importing the package does not import torch or scipy
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'totalgen_eval' has no attribute {name!r}")
