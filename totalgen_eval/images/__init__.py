"""Image-level comparison of two cohorts and the memorization check (ARCHITECTURE.md: totalgen_eval/images/).

    from totalgen_eval.images import image_metrics, memorization_check
    table = image_metrics(load_cohort("real/"), load_cohort("synth/"), features="bundled")  # image_metrics.csv
    check = memorization_check(synth, train, real)      # check.synthetic is memorization.csv

Modules: grids (RAS+ and body-box grids, intensity scaling), features (extractors: the bundled segmenter's
encoder, or a user's MONAI/TorchScript network), cases (one read per case), distances (FID, MMD,
bootstraps), similarity (MS-SSIM), metrics (the image_metrics table), memorization, previews (MIPs and
slices for figures). Everything takes Cohorts or arrays and returns arrays or pandas frames; nothing is
written here.
"""
from __future__ import annotations

from .cases import CaseImages, arrays_images, case_images, cohort_images
from .distances import MomentStats, fid, fid_from_stats, frechet_distance, mmd2
from .features import BUNDLED_NOTE, CaseFeatures, FeatureExtractor, load_extractor, volume_features
from .grids import BODY_SHAPE, PLANES, body_arrays
from .memorization import Memorization, memorization_check, memorization_from, nearest
from .metrics import REFERENCE_SUFFIX, image_metrics, image_metrics_from, twins_from_frame
from .previews import Preview, case_preview, preview_arrays
from .similarity import ms_ssim

__all__ = ["BODY_SHAPE", "BUNDLED_NOTE", "CaseFeatures", "CaseImages", "FeatureExtractor", "Memorization",
           "MomentStats", "PLANES", "Preview", "REFERENCE_SUFFIX", "arrays_images", "body_arrays", "case_images",
           "case_preview", "cohort_images", "fid", "fid_from_stats", "frechet_distance", "image_metrics",
           "image_metrics_from", "load_extractor", "memorization_check", "memorization_from", "mmd2", "ms_ssim",
           "nearest", "preview_arrays", "twins_from_frame", "volume_features"]
