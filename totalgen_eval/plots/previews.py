"""Pictures of the volumes: coronal PET MIPs and CT slices (real vs synthetic, closest training pairs),
and the memorization histogram.

Previews come from ``totalgen_eval.images.Preview`` (arrays (x, z) on RAS+ axes); they are drawn as seen
from the front with the patient's right on the viewer's left (radiological convention), head up.
PET MIPs: inverted grey scale, SUV 0 to ``PET_VMAX``; CT: window ``CT_WINDOW`` HU.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .style import REAL_COLOUR, SYNTH_COLOUR

PET_VMAX = 8.0  # SUV at full black in the MIPs
CT_WINDOW: tuple[float, float] = (-900.0, 600.0)  # HU
TRAIN_COLOUR = "#7a7a7a"


def _show(ax, image: np.ndarray, spacing: tuple[float, float], kind: str, title: str, colour: str) -> None:
    """One coronal view: (x, z) array shown with x mirrored (patient's right on the left) and z up."""
    picture = np.asarray(image, float).T[:, ::-1]
    if kind == "pet":
        ax.imshow(picture, cmap="gray_r", vmin=0.0, vmax=PET_VMAX, origin="lower", interpolation="nearest",
                  aspect=spacing[1] / spacing[0])
    else:
        ax.imshow(picture, cmap="gray", vmin=CT_WINDOW[0], vmax=CT_WINDOW[1], origin="lower",
                  interpolation="nearest", aspect=spacing[1] / spacing[0])
    ax.set_title(title, fontsize=7, color=colour)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(1.5)


def _pair_panels(ax_row, left, right, left_label: str, right_label: str, right_colour: str,
                 left_colour: str = REAL_COLOUR) -> None:
    """PET MIP and CT slice of ``left`` then of ``right`` (either may be None: an empty panel)."""
    for k, (prev, label, colour) in enumerate(((left, left_label, left_colour), (right, right_label, right_colour))):
        for m, kind in enumerate(("pet", "ct")):
            ax = ax_row[2 * k + m]
            if prev is None:
                ax.set_axis_off()
                continue
            image = prev.pet_mip if kind == "pet" else prev.ct_slice
            name = "PET MIP" if kind == "pet" else "CT slice"
            _show(ax, image, prev.spacing_mm, kind, f"{label} {prev.case_id}\n{name}", colour)


def preview_figure(real: Sequence, synth: Sequence, twins: bool = False) -> Figure:
    """Rows of real and synthetic previews side by side: real PET MIP, real CT slice, synthetic PET MIP,
    synthetic CT slice. With ``twins`` row k's synthetic case is the twin of row k's real case."""
    n = max(len(real), len(synth))
    if n == 0:
        raise ValueError("no previews to draw")
    fig = Figure(figsize=(6.4, 2.9 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, 4, squeeze=False)
    for k in range(n):
        left = real[k] if k < len(real) else None
        right = synth[k] if k < len(synth) else None
        _pair_panels(axes[k], left, right, "real", "synthetic twin" if twins else "synthetic", SYNTH_COLOUR)
    fig.suptitle("real (blue) and synthetic (orange)" + (": twins side by side" if twins else ""), fontsize=9)
    return fig


def closest_pairs_figure(pairs: Sequence[tuple], distances: Sequence[float], flagged: Sequence[bool]) -> Figure:
    """Each synthetic case (orange) beside its nearest training case (grey): PET MIPs and CT slices,
    titled with the distance and whether the case was flagged."""
    if not pairs:
        raise ValueError("no pairs to draw")
    fig = Figure(figsize=(6.4, 2.9 * len(pairs) + 0.5), layout="constrained")
    axes = fig.subplots(len(pairs), 4, squeeze=False)
    for k, ((synth, train), d, flag) in enumerate(zip(pairs, distances, flagged)):
        _pair_panels(axes[k], synth, train, "synthetic", "training", TRAIN_COLOUR, left_colour=SYNTH_COLOUR)
        axes[k][0].set_ylabel(f"distance {d:.4g}" + (" FLAGGED" if flag else ""), fontsize=7)
    fig.suptitle("synthetic cases closest to a training case (nearest training case on the right)", fontsize=9)
    return fig


def memorization_histogram(synthetic: pd.DataFrame, real: pd.DataFrame, threshold: float) -> Figure:
    """Histograms of nearest-training-case distances: synthetic cases (orange) and real held-out cases
    (blue, the reference), with the flagging threshold (dashed) and the flagged count."""
    s = pd.to_numeric(synthetic["distance"], errors="coerce").dropna().to_numpy()
    r = pd.to_numeric(real["distance"], errors="coerce").dropna().to_numpy() if len(real) else np.zeros(0)
    if s.size == 0:
        raise ValueError("no synthetic distances to draw")
    both = np.concatenate([s, r])
    bins = np.linspace(0.0, float(both.max()) * 1.05 + 1e-12, 31)
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.add_subplot()
    ax.hist(s, bins=bins, color=SYNTH_COLOUR, alpha=0.7, label=f"synthetic (n={s.size})")
    if r.size:
        ax.hist(r, bins=bins, color=REAL_COLOUR, alpha=0.6, label=f"real, held out (n={r.size})")
    n_flag = int(pd.Series(synthetic["flagged"]).astype(str).str.lower().isin(["true", "1"]).sum())
    if np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, gid="threshold")
    handles, _ = ax.get_legend_handles_labels()
    handles.append(Patch(facecolor="white", edgecolor="black", linestyle="--",
                         label=f"threshold {threshold:.4g}: {n_flag} flagged"))
    ax.legend(handles=handles, fontsize=7, frameon=False)
    ax.set_xlabel("distance to the nearest training case (RMS of scaled CT and PET, body box)", fontsize=8)
    ax.set_ylabel("cases", fontsize=8)
    ax.tick_params(labelsize=7)
    return fig
