"""The report's figure files, each drawn only when what it shows changed.

A figure is planned as a :class:`FigurePlan`: its reference (name, caption), the function that draws it and
the inputs it is drawn from (tables, numbers, case file identities). The digest of those inputs, of its name
and of the drawing code (the sources of ``plots/`` and ``report/``, the matplotlib version, the PNG
resolution) is written into both of its files (PNG text chunk ``totalgen-eval digest``, SVG description).
A figure whose PNG and SVG both carry this run's digest is not drawn again: running ``compare`` again, or
``plot`` on an unchanged folder, redraws nothing. Each figure is laid out once: the PNG is drawn with
matplotlib's constrained layout, the SVG keeps that layout.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..provenance import atomic_path
from .render import FigureRef

PNG_DPI = 110
DIGEST_KEY = "totalgen-eval digest"  # the PNG text chunk holding a figure's digest
SVG_HEAD_BYTES = 8192  # the SVG's metadata (and so its description) lies within its first bytes


@dataclass(frozen=True)
class FigurePlan:
    """A figure to be drawn by ``draw`` from ``inputs`` (anything :func:`input_digest` takes)."""

    ref: FigureRef
    draw: Callable[[], Figure]
    inputs: tuple = ()


@dataclass
class SavedFigures:
    """What :func:`save_figures` left in the figures folder: the references in plan order, the paths by
    relative name (``figures/<name>.png`` and ``.svg``) and each PNG's bytes by figure name."""

    refs: list[FigureRef] = field(default_factory=list)
    written: dict[str, Path] = field(default_factory=dict)
    png: dict[str, bytes] = field(default_factory=dict)

    def add(self, more: "SavedFigures") -> list[FigureRef]:
        """Take in the files of ``more``; returns its references."""
        self.written.update(more.written)
        self.png.update(more.png)
        return more.refs


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Digest of what draws the figures: the plots and report sources, matplotlib's version, the PNG dpi."""
    here = Path(__file__).parent
    h = hashlib.blake2b(f"{matplotlib.__version__}|{PNG_DPI}".encode(), digest_size=16)
    for path in sorted([*here.glob("*.py"), *(here.parent / "plots").glob("*.py")]):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def _update(h: Any, value: Any) -> None:
    """Feed one input to the hash: tables by content (columns, dtypes, values), arrays by bytes, the rest
    as JSON."""
    if isinstance(value, pd.DataFrame):
        h.update(json.dumps([list(map(str, value.columns)), list(map(str, value.dtypes))]).encode())
        h.update(pd.util.hash_pandas_object(value, index=False).to_numpy().tobytes())
    elif isinstance(value, np.ndarray):
        h.update(str((value.dtype, value.shape)).encode() + np.ascontiguousarray(value).tobytes())
    else:
        h.update(json.dumps(value, sort_keys=True, default=str).encode())


def input_digest(name: str, inputs: Sequence[Any]) -> str:
    """32 hex digits naming a figure's content: its name, its inputs and :func:`code_digest`."""
    h = hashlib.blake2b(f"{code_digest()}|{name}".encode(), digest_size=16)
    for value in inputs:
        _update(h, value)
    return h.hexdigest()


def saved_digest(png: Path, svg: Path) -> str | None:
    """The digest both files of a figure carry, or None (a file missing, unreadable or the two differ)."""
    from PIL import Image

    try:
        with Image.open(png) as image:
            digest = image.info.get(DIGEST_KEY)
        with open(svg, "rb") as f:
            head = f.read(SVG_HEAD_BYTES).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    return digest if digest and f"{DIGEST_KEY} {digest}" in head else None


def save_figure(fig: Figure, folder: Path, name: str, digest: str) -> dict[str, Path]:
    """``folder/<name>.png`` then ``.svg`` (laid out once, for the PNG), both carrying ``digest``."""
    out = {}
    for ext, metadata in (("png", {DIGEST_KEY: digest}), ("svg", {"Description": f"{DIGEST_KEY} {digest}"})):
        path = folder / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=PNG_DPI, facecolor="white", metadata=metadata)
        fig.set_layout_engine("none")  # keep the positions the first drawing found
        out[f"figures/{name}.{ext}"] = path
    return out


def _up_to_date(folder: Path, name: str, digest: str) -> dict[str, Path] | None:
    paths = {f"figures/{name}.{ext}": folder / f"{name}.{ext}" for ext in ("png", "svg")}
    return paths if saved_digest(*paths.values()) == digest else None


def save_figures(plans: Sequence[FigurePlan], folder: Path, notes: list[str]) -> SavedFigures:
    """Draw and save every plan whose files are not up to date; a plan whose drawing raises ValueError or
    KeyError is left out with a note appended to ``notes``."""
    folder.mkdir(parents=True, exist_ok=True)
    saved = SavedFigures()
    for plan in plans:
        name = plan.ref.name
        digest = input_digest(name, plan.inputs)
        paths = _up_to_date(folder, name, digest)
        if paths is None:
            try:
                fig = plan.draw()
            except (ValueError, KeyError) as exc:
                notes.append(f"{name}: skipped ({exc}).")
                continue
            paths = save_figure(fig, folder, name, digest)
        saved.refs.append(plan.ref)
        saved.written.update(paths)
        saved.png[name] = paths[f"figures/{name}.png"].read_bytes()
    return saved


def remove_stale(folder: Path, is_ours: Callable[[str], bool], written: dict[str, Path]) -> None:
    """Delete the figure files of an earlier run (``is_ours(file name)``) that this run did not write."""
    for stale in folder.iterdir():
        if is_ours(stale.name) and f"figures/{stale.name}" not in written:
            stale.unlink()
