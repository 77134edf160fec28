"""The TotalSegmentator backend: weight lookup (never a download) and the call of its Python API.

Weights are looked up where TotalSegmentator itself looks (``TOTALSEG_WEIGHTS_PATH``, else
``$TOTALSEG_HOME_DIR/nnunet/results``, else ``~/.totalsegmentator/nnunet/results``). Task folders are read
from the installed package's own table. With ``roi_subset`` (always used here) TotalSegmentator first runs
its 6 mm model (task 298) to crop, so both 297 (3 mm, ``fast``) and 298 are needed: exactly what
``totalseg_download_weights -t total_fast`` fetches.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..organs import CLASSES, ORGAN_NAMES, organ_classes
from ..provenance import atomic_path

FAST_TASKS = (297, 298)
FULL_TASKS = (291, 292, 293, 294, 295, 298)
_FALLBACK_FOLDERS = {  # used only when totalsegmentator is not installed (for `doctor`)
    291: "Dataset291_TotalSegmentator_part1_organs_1559subj",
    292: "Dataset292_TotalSegmentator_part2_vertebrae_1532subj",
    293: "Dataset293_TotalSegmentator_part3_cardiac_1559subj",
    294: "Dataset294_TotalSegmentator_part4_muscles_1559subj",
    295: "Dataset295_TotalSegmentator_part5_ribs_1559subj",
    297: "Dataset297_TotalSegmentator_total_3mm_1559subj",
    298: "Dataset298_TotalSegmentator_total_6mm_1559subj",
}


def weights_dir() -> Path:
    """The folder TotalSegmentator reads its nnU-Net results from (its own rule, same environment)."""
    if "TOTALSEG_WEIGHTS_PATH" in os.environ:
        return Path(os.environ["TOTALSEG_WEIGHTS_PATH"])
    if "TOTALSEG_HOME_DIR" in os.environ:
        return Path(os.environ["TOTALSEG_HOME_DIR"]) / "nnunet" / "results"
    home = Path("/tmp") if str(Path.home()) == "/" else Path.home()
    return home / ".totalsegmentator" / "nnunet" / "results"


def task_folder(task_id: int) -> str:
    """The weight folder name of a TotalSegmentator task id, from the installed package when present."""
    try:
        from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    except ImportError:
        return _FALLBACK_FOLDERS[task_id]
    info = TASK_ID_WEIGHTS_CONFIGS[task_id]
    rel = info.get("rel_path")
    return str(Path(rel) / info["foldername"]) if rel else info["foldername"]


def _has_checkpoint(folder: Path) -> bool:
    return folder.is_dir() and any(folder.rglob("checkpoint_final.pth"))


def totalsegmentator_weights(fast: bool = True) -> tuple[bool, list[Path]]:
    """(all needed weights present?, the task folders looked for) for the fast (3 mm) or full model."""
    base = weights_dir()
    searched = [base / task_folder(t) for t in (FAST_TASKS if fast else FULL_TASKS)]
    return all(_has_checkpoint(p) for p in searched), searched


def require_weights(fast: bool = True) -> None:
    """InputError in one line (where they were looked for, how to get them) unless the weights are here."""
    found, searched = totalsegmentator_weights(fast)
    if not found:
        missing = [str(p) for p in searched if not _has_checkpoint(p)]
        raise InputError(f"TotalSegmentator weights not found (looked for {', '.join(missing)}); get them with "
                         f"`totalseg_download_weights -t {'total_fast' if fast else 'total'}` or set "
                         "TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR, or use --segmenter model:bundled",
                         "--segmenter totalsegmentator")


def roi_subset(organs: Sequence[str] = ORGAN_NAMES) -> list[str]:
    """The TotalSegmentator "total" class names the given organs are made of."""
    return [CLASSES[c] for c in organ_classes(organs)]


def ts_device(device: str) -> str:
    """Our device string (cpu, cuda, cuda:1, gpu, mps) as TotalSegmentator's (cpu, gpu, gpu:1, mps)."""
    d = device.strip().lower()
    if d.startswith("cuda"):
        return "gpu" + d[4:]
    if d in ("cpu", "mps") or d.startswith("gpu"):
        return d
    raise InputError(f"unknown device {device!r} (cpu, cuda, cuda:N)", "--device")


def totalsegmentator_arguments(ct_path: Path, out_path: Path, fast: bool = True, device: str = "cpu",
                               organs: Sequence[str] = ORGAN_NAMES) -> dict[str, Any]:
    """Keyword arguments for ``totalsegmentator.python_api.totalsegmentator`` (one multilabel file out)."""
    return dict(input=Path(ct_path), output=Path(out_path), ml=True, fast=fast, roi_subset=roi_subset(organs),
                device=ts_device(device), statistics=False, radiomics=False, quiet=True, verbose=False,
                nr_thr_saving=1, task="total")


def disable_usage_stats() -> None:
    """Set ``send_usage_stats: false`` in TotalSegmentator's config.json (its own helpers write it)."""
    from totalsegmentator.config import set_config_key, setup_totalseg

    setup_totalseg()
    set_config_key("send_usage_stats", False)
    set_config_key("statistics_disclaimer_shown", True)


def run_totalsegmentator(ct_path: Path, out_path: Path, fast: bool = True, device: str = "cpu",
                         organs: Sequence[str] = ORGAN_NAMES) -> Path:
    """Segment a CT (HU NIfTI) with TotalSegmentator into ``out_path`` (multilabel, written atomically)."""
    require_weights(fast)
    try:
        from totalsegmentator.python_api import totalsegmentator
    except ImportError:
        raise InputError("totalsegmentator is not installed (pip install 'totalgen-eval[seg]')",
                         "--segmenter totalsegmentator") from None
    disable_usage_stats()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        part = tmp.with_name(tmp.name + ".nii.gz")
        try:
            totalsegmentator(**totalsegmentator_arguments(ct_path, part, fast, device, organs))
            part.replace(tmp)
        finally:
            part.unlink(missing_ok=True)
    return out_path
