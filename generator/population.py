"""The training cohort's demographics model, stored as ``population.json`` beside the weights.

Per sex: P(sex); the age distribution as 21 quantiles (sampled by inverse-CDF interpolation); height (m)
and weight (kg) jointly Gaussian with means linear in age and a constant 2x2 residual covariance; the
observed ranges of age, height and weight. It samples demographics (optionally constrained), fills in a
missing height and/or weight given sex and age (conditional Gaussian), and clamps values to the training
ranges (``clamp``), which the cascade uses because the networks never saw demographics outside them.

Demographics are dicts (or DataFrames) with columns age (years), sex ("F"/"M"), height_m, weight_kg.

Reproducible runs: ``sample_cases`` and ``fill_missing_cases`` draw case ``index`` of a run with ``seed`` from
its own generator (``case_rng``), so a case never depends on how many cases are drawn or which come before
it (``n = 2`` gives the first two cases of ``n = 6``).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

SEXES = ("F", "M")
COLUMNS = ("age", "sex", "height_m", "weight_kg")
SAMPLE_STREAM = 0xDE30  # case_rng stream of sampled demographics
FILL_STREAM = 0x3A7C  # case_rng stream of filled-in heights and weights


def case_rng(seed: int, index: int, stream: int) -> np.random.Generator:
    """The generator of case ``index`` of a run with ``seed``, for one ``stream`` of draws."""
    return np.random.default_rng([int(seed), int(index), int(stream)])


def _linear_fit(age: np.ndarray, hw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients (2, 2): rows intercept, slope; residual covariance (2, 2)) of (height, weight) on age."""
    design = np.stack([np.ones_like(age), age], 1)
    coef, *_ = np.linalg.lstsq(design, hw, rcond=None)
    resid = hw - design @ coef
    cov = np.cov(resid.T, ddof=min(2, len(age) - 1)) if len(age) > 1 else np.zeros((2, 2))
    return coef, cov + np.eye(2) * 1e-6


SEX_CODES = {"F": "F", "FEMALE": "F", "0": "F", "0.0": "F", "M": "M", "MALE": "M", "1": "M", "1.0": "M"}


def parse_sex(value: Any) -> str:
    """"F"/"M" from F/M/female/male (any case) or the paper's coding 0/1 (F=0, M=1); ValueError otherwise.

    The same words as the toolkit's ``demographics.parse_sex`` (this library does not import the toolkit;
    ``tests/test_demographics.py`` checks that the two agree)."""
    text = str(value).strip().upper()
    if text not in SEX_CODES:
        raise ValueError(f"unknown sex {value!r} (expected M or F)")
    return SEX_CODES[text]


@dataclass(frozen=True)
class SexModel:
    """Demographics of one sex: share, age quantiles, linear means of (height, weight) on age, covariance."""

    share: float
    n: int
    age_quantiles: tuple[float, ...]
    intercept: tuple[float, float]  # (height m, weight kg) at age 0
    slope: tuple[float, float]  # per year
    cov: tuple[tuple[float, float], tuple[float, float]]
    height_range: tuple[float, float]
    weight_range: tuple[float, float]

    def mean_hw(self, age: np.ndarray) -> np.ndarray:
        """(n, 2) expected (height m, weight kg) at ``age``."""
        return np.asarray(self.intercept)[None, :] + np.asarray(age, float)[:, None] * np.asarray(self.slope)[None, :]

    @property
    def age_range(self) -> tuple[float, float]:
        return float(self.age_quantiles[0]), float(self.age_quantiles[-1])


@dataclass(frozen=True)
class PopulationModel:
    """Demographics of the training cohort (see the module docstring)."""

    sexes: Mapping[str, SexModel]

    # construction and I/O -----------------------------------------------------------------------------
    @classmethod
    def fit(cls, demographics: Mapping[str, Any]) -> "PopulationModel":
        """Fit from columns age, sex, height_m, weight_kg (rows with missing values are skipped)."""
        age = np.asarray(demographics["age"], float)
        sex = np.asarray([parse_sex(s) if isinstance(s, str) else "?" for s in demographics["sex"]])
        hw = np.stack([np.asarray(demographics["height_m"], float), np.asarray(demographics["weight_kg"], float)], 1)
        ok = np.isfinite(age) & np.isfinite(hw).all(1) & np.isin(sex, SEXES)
        if ok.sum() < 2:
            raise ValueError("a population model needs at least 2 cases with age, sex, height_m and weight_kg")
        pooled = _linear_fit(age[ok], hw[ok])
        models = {}
        for s in SEXES:
            m = ok & (sex == s)
            if not m.any():
                continue
            a, y = age[m], hw[m]
            coef, cov = _linear_fit(a, y) if m.sum() >= 5 else pooled  # few cases: pooled slopes and spread
            models[s] = SexModel(
                share=float(m.sum() / ok.sum()), n=int(m.sum()),
                age_quantiles=tuple(float(q) for q in np.quantile(a, np.linspace(0, 1, 21))),
                intercept=(float(coef[0, 0]), float(coef[0, 1])), slope=(float(coef[1, 0]), float(coef[1, 1])),
                cov=((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
                height_range=(float(y[:, 0].min()), float(y[:, 0].max())),
                weight_range=(float(y[:, 1].min()), float(y[:, 1].max())))
        return cls(models)

    def to_dict(self) -> dict:
        return {"format": "totalgen-population", "version": 1,
                "sexes": {s: asdict(m) for s, m in self.sexes.items()}}

    @classmethod
    def from_dict(cls, data: Mapping) -> "PopulationModel":
        if data.get("format") != "totalgen-population":
            raise ValueError("not a population model (format totalgen-population expected)")
        sexes = {}
        for s, m in data["sexes"].items():
            sexes[s] = SexModel(share=m["share"], n=m["n"], age_quantiles=tuple(m["age_quantiles"]),
                                intercept=tuple(m["intercept"]), slope=tuple(m["slope"]),
                                cov=tuple(tuple(r) for r in m["cov"]), height_range=tuple(m["height_range"]),
                                weight_range=tuple(m["weight_range"]))
        return cls(sexes)

    def save(self, path: str | Path) -> Path:
        from .checkpoints import write_json

        return write_json(self.to_dict(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> "PopulationModel":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # use ----------------------------------------------------------------------------------------------
    def model(self, sex: str) -> SexModel:
        """The model of one sex; ValueError for an unknown sex or one absent from training."""
        s = parse_sex(sex)
        if s not in self.sexes:
            raise ValueError(f"sex {s} was not in the training cohort (have {', '.join(self.sexes)})")
        return self.sexes[s]

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Training range (min, max) of age, height_m, weight_kg over both sexes."""
        ms = list(self.sexes.values())
        return {"age": (min(m.age_range[0] for m in ms), max(m.age_range[1] for m in ms)),
                "height_m": (min(m.height_range[0] for m in ms), max(m.height_range[1] for m in ms)),
                "weight_kg": (min(m.weight_range[0] for m in ms), max(m.weight_range[1] for m in ms))}

    def sample(self, n: int, rng: np.random.Generator, sex: str | None = None,
               age: tuple[float, float] | None = None, height: tuple[float, float] | None = None,
               weight: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
        """``n`` demographics; optional constraints: one sex, (low, high) ranges of age, height (m), weight (kg).

        Age is drawn from the sex's age distribution restricted to the range (uniform within the range
        when the range lies outside the training ages); height and weight from the conditional Gaussian given
        age, redrawn up to 200 times to fall inside their ranges (default: the sex's training ranges), then
        clamped into them.
        """
        sexes = np.array([parse_sex(sex)] * n if sex else
                         rng.choice(list(self.sexes), size=n, p=self._shares()))
        ages = np.empty(n)
        hw = np.empty((n, 2))
        for s in np.unique(sexes):
            idx = np.flatnonzero(sexes == s)
            m = self.model(s)
            ages[idx] = self._sample_age(m, len(idx), rng, age)
            hw[idx] = self._sample_hw(m, ages[idx], rng, height, weight)
        return {"age": ages, "sex": sexes, "height_m": hw[:, 0], "weight_kg": hw[:, 1]}

    def sample_cases(self, seed: int, indices: Sequence[int], sex: str | None = None,
                     age: tuple[float, float] | None = None, height: tuple[float, float] | None = None,
                     weight: tuple[float, float] | None = None) -> dict[str, np.ndarray]:
        """Demographics of cases ``indices`` of a run with ``seed`` (constraints as in ``sample``); case i is
        drawn from ``case_rng(seed, i, SAMPLE_STREAM)`` alone."""
        rows = [self.sample(1, case_rng(seed, i, SAMPLE_STREAM), sex, age, height, weight) for i in indices]
        if not rows:
            return self.sample(0, np.random.default_rng(0), sex, age, height, weight)
        return {k: np.concatenate([r[k] for r in rows]) for k in COLUMNS}

    def fill_missing(self, demographics: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Copy of the columns with missing height/weight drawn given sex and age (and the other one if known),
        all from ``rng`` in row order."""
        return self._fill(demographics, lambda i: rng)

    def fill_missing_cases(self, demographics: Mapping[str, Any], seed: int, indices: Sequence[int] | None = None
                           ) -> dict[str, np.ndarray]:
        """As ``fill_missing``, row r drawn from ``case_rng(seed, indices[r], FILL_STREAM)`` alone (default
        indices 0..n-1)."""
        n = len(np.asarray(demographics["age"]))
        index = list(range(n)) if indices is None else [int(i) for i in indices]
        if len(index) != n:
            raise ValueError(f"{len(index)} indices for {n} demographics rows")
        return self._fill(demographics, lambda r: case_rng(seed, index[r], FILL_STREAM))

    def _fill(self, demographics: Mapping[str, Any], rng_of) -> dict[str, np.ndarray]:
        """Fill missing heights/weights; ``rng_of(row)`` gives the generator of each row that needs one."""
        age = np.asarray(demographics["age"], float)
        sex = np.asarray([parse_sex(s) for s in demographics["sex"]])
        h = np.asarray(demographics["height_m"], float).copy()
        w = np.asarray(demographics["weight_kg"], float).copy()
        if not np.isfinite(age).all():
            raise ValueError("age is missing for some cases; the population model needs sex and age")
        for i in np.flatnonzero(~np.isfinite(h) | ~np.isfinite(w)):
            m, rng = self.model(sex[i]), rng_of(int(i))
            mu = m.mean_hw(age[i:i + 1])[0]
            cov = np.asarray(m.cov)
            if np.isfinite(h[i]):  # weight | height
                w[i] = mu[1] + cov[1, 0] / cov[0, 0] * (h[i] - mu[0]) + rng.normal() * np.sqrt(cov[1, 1] - cov[1, 0] ** 2 / cov[0, 0])
            elif np.isfinite(w[i]):  # height | weight
                h[i] = mu[0] + cov[0, 1] / cov[1, 1] * (w[i] - mu[1]) + rng.normal() * np.sqrt(cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1])
            else:
                h[i], w[i] = rng.multivariate_normal(mu, cov)
            h[i] = np.clip(h[i], *m.height_range)
            w[i] = np.clip(w[i], *m.weight_range)
        return {"age": age, "sex": sex, "height_m": h, "weight_kg": w}

    def clamp(self, demographics: Mapping[str, Any], warn: bool = True) -> tuple[dict[str, np.ndarray], int]:
        """Clamp age, height, weight into the training ranges; returns (columns, number of cases changed).

        Warns (UserWarning) when any value was moved: the networks never saw such demographics, so values
        outside the training range are generated as if at the range's edge rather than extrapolated.
        """
        out = {"sex": np.asarray([parse_sex(s) for s in demographics["sex"]])}
        changed = np.zeros(len(out["sex"]), bool)
        for col, (lo, hi) in self.ranges().items():
            v = np.asarray(demographics[col], float)
            if not np.isfinite(v).all():
                raise ValueError(f"{col} is missing for some cases; fill it first (fill_missing)")
            c = np.clip(v, lo, hi)
            changed |= c != v
            out[col] = c
        if warn and changed.any():
            warnings.warn(f"{int(changed.sum())} case(s) have demographics outside the training range "
                          f"({self._range_text()}); they were clamped to it", UserWarning, stacklevel=3)
        return out, int(changed.sum())

    # helpers ------------------------------------------------------------------------------------------
    def _shares(self) -> np.ndarray:
        p = np.array([m.share for m in self.sexes.values()])
        return p / p.sum()

    def _range_text(self) -> str:
        r = self.ranges()
        return (f"age {r['age'][0]:.0f}-{r['age'][1]:.0f} y, height {r['height_m'][0]:.2f}-{r['height_m'][1]:.2f} m, "
                f"weight {r['weight_kg'][0]:.0f}-{r['weight_kg'][1]:.0f} kg")

    @staticmethod
    def _sample_age(m: SexModel, n: int, rng: np.random.Generator, limits: tuple[float, float] | None) -> np.ndarray:
        q = np.asarray(m.age_quantiles)
        grid = np.linspace(0, 1, len(q))
        lo_u, hi_u = 0.0, 1.0
        if limits is not None:
            lo, hi = limits
            if hi < q[0] or lo > q[-1]:
                return rng.uniform(lo, hi, n)
            lo_u, hi_u = np.interp(max(lo, q[0]), q, grid), np.interp(min(hi, q[-1]), q, grid)
        return np.interp(rng.uniform(lo_u, hi_u, n), grid, q)

    @staticmethod
    def _sample_hw(m: SexModel, ages: np.ndarray, rng: np.random.Generator,
                   height: tuple[float, float] | None, weight: tuple[float, float] | None) -> np.ndarray:
        mu = m.mean_hw(ages)
        cov = np.asarray(m.cov)
        out = mu + rng.multivariate_normal(np.zeros(2), cov, size=len(ages))
        limits = [height or m.height_range, weight or m.weight_range]
        for _ in range(200):
            bad = np.zeros(len(ages), bool)
            for j, (lo, hi) in enumerate(limits):
                bad |= (out[:, j] < lo) | (out[:, j] > hi)
            if not bad.any():
                break
            out[bad] = mu[bad] + rng.multivariate_normal(np.zeros(2), cov, size=int(bad.sum()))
        for j, (lo, hi) in enumerate(limits):
            out[:, j] = np.clip(out[:, j], lo, hi)
        return out
