"""The procedural whole-body FDG PET/CT phantom population (head to mid-thigh) with known truth.

Not patient data: every cohort made here says "phantom" (cohort.csv ``source``, phantom.json).

    demo = sample_demographics(n, rng)          # age, sex, height_m, weight_kg (AutoPET-like)
    expected(demo)                              # population truth per case x organ (mL, SUV)
    truth = draw_subjects(demo, rng)            # subject truth: expected x mean-one variation
    case = render_case(demo.iloc[0], truth[truth.case_id == ...], PhantomConfig(), rng)
    make_cohort("out/", n=200, seed=0)          # files + cohort.csv + truth.csv + phantom.json

Modules: population (demographics and the organ model table), shapes (analytic solids; RAS+ sides),
anatomy (placing organs, region by region), body (torso, neck, head and legs around them), render
(CT/PET/labels on the canvas), make (cohorts on disk).
"""
from __future__ import annotations

from .anatomy import Anatomy, build_anatomy
from .make import LAYOUTS, case_streams, make_cohort
from .population import (ORGAN_MODEL, SUV_CV, VOLUME_CV, draw_subjects, expected, sample_demographics)
from .render import PhantomCase, PhantomConfig, canvas_affine, canvas_shape, render_case

__all__ = ["Anatomy", "LAYOUTS", "ORGAN_MODEL", "PhantomCase", "PhantomConfig", "SUV_CV", "VOLUME_CV",
           "build_anatomy", "canvas_affine", "canvas_shape", "case_streams", "draw_subjects", "expected",
           "make_cohort", "render_case", "sample_demographics"]
