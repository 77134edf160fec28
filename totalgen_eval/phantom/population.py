"""The phantom population: demographics like AutoPET's and organ truth that depends on them.

Everything that says how an organ's volume (mL) and SUVmean depend on sex, age, height and weight
lives in the one table ``ORGAN_MODEL`` below. Two layers of truth:

* ``expected(demographics)``: the population expectation for given demographics (no randomness);
* ``draw_subjects(demographics, rng)``: one subject's truth = expectation x a mean-one random factor
  (log-normal truncated at +-``TRUNCATE_SD`` standard deviations so the anatomy stays bounded; its
  log-scale SD is chosen so the factor's CV is exactly the organ's CV and its mean exactly 1).

Functional forms (ref: height 1.72 m, weight 75 kg, BMI 25, age 50):
    volume_ml = V[sex] * (h/1.72)^h_exp * (w/75)^w_exp * vol_age_ratio^(max(age - vol_age_onset, 0)/10)
    suv_mean  = (S0 + male_add*[M] + bmi_slope*(BMI - 25) + age_add*(age - 50)/10) * age_ratio^((age - 50)/10)
Numbers follow published adult values (FDG uptake, organ size; see the README, "What the phantom is and is not").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from ..organs import ORGAN_NAMES

REF_HEIGHT_M = 1.72
REF_WEIGHT_KG = 75.0
REF_BMI = 25.0
REF_AGE = 50.0
TRUNCATE_SD = 2.0  # subject variation is cut at +-2 SD (log scale): bounded anatomy

# Demographic ranges of the population (sampling is truncated to these; the anatomy is built and
# tested to fit the canvas for heights 1.50-2.00 m and weights 40-130 kg).
AGE_RANGE = (20.0, 90.0)
HEIGHT_RANGE_M = (1.50, 2.00)
WEIGHT_RANGE_KG = (50.0, 120.0)
P_MALE = 0.56


@dataclass(frozen=True)
class OrganModel:
    """How one organ's volume (mL) and SUVmean depend on demographics, and its subject-level CVs."""

    vol_f: float  # mL, women at the reference height/weight/age
    vol_m: float  # mL, men
    vol_height_exp: float
    vol_weight_exp: float
    vol_age_ratio: float  # volume multiplier per decade after vol_age_onset
    vol_age_onset: float
    vol_cv: float  # subject-level coefficient of variation of volume
    suv0: float  # SUV at reference (women)
    suv_male_add: float
    suv_bmi_slope: float  # SUV per BMI unit (kg/m^2)
    suv_age_add: float  # SUV per decade (additive)
    suv_age_ratio: float  # SUV multiplier per decade (multiplicative)
    suv_cv: float  # subject-level coefficient of variation of SUVmean


# fmt: off
#                              vol_f  vol_m  h_exp w_exp age_r  onset vol_cv | suv0 male  bmi    age+   age_r  suv_cv
ORGAN_MODEL: dict[str, OrganModel] = {
    "brain":           OrganModel(1250, 1400, 0.3, 0.0, 0.975, 40, 0.08,   8.0, 0.0, 0.0,   0.0,  0.92, 0.12),
    "lungs":           OrganModel(3300, 4300, 1.5, -0.1, 1.0, 40, 0.12,    0.50, 0.0, 0.0,  -0.03, 1.0,  0.15),
    "heart":           OrganModel(560,  700,  0.5, 0.4, 1.0,  40, 0.15,    5.0, 0.0, 0.0,   0.0,  1.0,  0.60),
    "aorta":           OrganModel(150,  190,  1.0, 0.3, 1.05, 20, 0.15,    1.6, 0.0, 0.01,  0.05, 1.0,  0.12),
    "liver":           OrganModel(1300, 1450, 0.8, 0.5, 0.97, 40, 0.15,    2.0, 0.10, 0.066, 0.05, 1.0,  0.15),
    "spleen":          OrganModel(175,  215,  0.5, 0.5, 0.97, 40, 0.30,    1.8, 0.0, 0.02,  0.0,  1.0,  0.15),
    "kidneys":         OrganModel(292,  354,  0.5, 0.3, 1.0,  40, 0.15,    2.5, 0.0, 0.0,   0.0,  1.0,  0.20),
    "urinary_bladder": OrganModel(150,  150,  0.0, 0.0, 1.0,  40, 0.50,   15.0, 0.0, 0.0,   0.0,  1.0,  0.60),
    "muscle":          OrganModel(1500, 2100, 0.8, 0.3, 0.95, 40, 0.12,    0.7, 0.0, 0.0,   0.0,  1.0,  0.15),
}
# fmt: on
assert tuple(ORGAN_MODEL) == ORGAN_NAMES

VOLUME_CV: dict[str, float] = {k: m.vol_cv for k, m in ORGAN_MODEL.items()}
SUV_CV: dict[str, float] = {k: m.suv_cv for k, m in ORGAN_MODEL.items()}

TRUTH_COLUMNS = ["case_id", "organ", "volume_ml", "suv_mean"]
DEMOGRAPHIC_COLUMNS = ["age", "sex", "height_m", "weight_kg"]


def _truncated_normal(rng: np.random.Generator, size: int, mean, sd, lo, hi) -> np.ndarray:
    """Normal(mean, sd) draws truncated to [lo, hi] by rejection (elementwise mean/sd/bounds allowed)."""
    mean, sd = np.broadcast_to(mean, size).astype(float), np.broadcast_to(sd, size).astype(float)
    lo, hi = np.broadcast_to(lo, size).astype(float), np.broadcast_to(hi, size).astype(float)
    x = mean + sd * rng.standard_normal(size)
    bad = (x < lo) | (x > hi)
    while bad.any():
        x[bad] = mean[bad] + sd[bad] * rng.standard_normal(int(bad.sum()))
        bad = (x < lo) | (x > hi)
    return x


def sample_demographics(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """``n`` AutoPET-like subjects: columns age (years), sex ("M"/"F"), height_m, weight_kg.

    About 56% men; age ~ N(60, 16) men / N(58, 16) women in 20-90; height ~ N(1.78, 0.07) men /
    N(1.65, 0.065) women (minus 1 cm a decade after 50) in 1.50-2.00 m; BMI ~ N(26.5, 4) men /
    N(26, 5) women, weight = BMI x height^2 truncated to 50-120 kg (so weight correlates with height).
    """
    male = rng.random(n) < P_MALE
    age = _truncated_normal(rng, n, np.where(male, 60.0, 58.0), 16.0, *AGE_RANGE)
    h_mean = np.where(male, 1.78, 1.65) - 0.01 * np.clip((age - 50) / 10, 0, None)
    height = _truncated_normal(rng, n, h_mean, np.where(male, 0.07, 0.065), *HEIGHT_RANGE_M)
    bmi_mean, bmi_sd = np.where(male, 26.5, 26.0), np.where(male, 4.0, 5.0)
    bmi = _truncated_normal(rng, n, bmi_mean, bmi_sd, WEIGHT_RANGE_KG[0] / height**2, WEIGHT_RANGE_KG[1] / height**2)
    return pd.DataFrame({
        "age": np.round(age, 1),
        "sex": np.where(male, "M", "F"),
        "height_m": np.round(height, 3),
        "weight_kg": np.round(np.clip(bmi * height**2, *WEIGHT_RANGE_KG), 1),
    })


def _case_ids(demographics: pd.DataFrame) -> np.ndarray:
    if "case_id" in demographics.columns:
        return demographics["case_id"].astype(str).to_numpy()
    return np.array([f"phantom-{i:04d}" for i in range(len(demographics))])


def _check_demographics(demographics: pd.DataFrame) -> None:
    missing = [c for c in DEMOGRAPHIC_COLUMNS if c not in demographics.columns]
    if missing:
        raise ValueError(f"demographics lack columns {missing}")
    if demographics[DEMOGRAPHIC_COLUMNS].isna().any().any():
        raise ValueError("demographics hold missing values (age, sex, height_m, weight_kg are all needed)")
    bad = set(demographics["sex"].astype(str)) - {"M", "F"}
    if bad:
        raise ValueError(f"sex must be 'M' or 'F', found {sorted(bad)}")


def expected_volume_ml(organ: str, age, sex, height_m, weight_kg) -> np.ndarray:
    """Population-expected organ volume (mL) for the given demographics (arrays broadcast)."""
    m = ORGAN_MODEL[organ]
    male = np.asarray(sex) == "M"
    base = np.where(male, m.vol_m, m.vol_f)
    decades = np.clip((np.asarray(age, float) - m.vol_age_onset) / 10, 0, None)
    return (base * (np.asarray(height_m, float) / REF_HEIGHT_M) ** m.vol_height_exp
            * (np.asarray(weight_kg, float) / REF_WEIGHT_KG) ** m.vol_weight_exp * m.vol_age_ratio**decades)


def expected_suv_mean(organ: str, age, sex, height_m, weight_kg) -> np.ndarray:
    """Population-expected organ SUVmean (g/mL) for the given demographics (arrays broadcast)."""
    m = ORGAN_MODEL[organ]
    male = (np.asarray(sex) == "M").astype(float)
    bmi = np.asarray(weight_kg, float) / np.asarray(height_m, float) ** 2
    decades = (np.asarray(age, float) - REF_AGE) / 10
    return ((m.suv0 + m.suv_male_add * male + m.suv_bmi_slope * (bmi - REF_BMI) + m.suv_age_add * decades)
            * m.suv_age_ratio**decades)


def _expected_arrays(demographics: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(volume_ml, suv_mean), each (n_organs, n_cases) in ORGAN_NAMES order."""
    _check_demographics(demographics)
    d = demographics
    cols = (d["age"].to_numpy(float), d["sex"].astype(str).to_numpy(), d["height_m"].to_numpy(float),
            d["weight_kg"].to_numpy(float))
    vol = np.stack([expected_volume_ml(o, *cols) for o in ORGAN_NAMES])
    suv = np.stack([expected_suv_mean(o, *cols) for o in ORGAN_NAMES])
    return vol, suv


def _truth_frame(ids: np.ndarray, vol: np.ndarray, suv: np.ndarray) -> pd.DataFrame:
    """Tidy table, case by case, organs in canonical order."""
    k = len(ORGAN_NAMES)
    return pd.DataFrame({"case_id": np.repeat(ids, k), "organ": np.tile(np.array(ORGAN_NAMES, dtype=object), len(ids)),
                         "volume_ml": vol.T.ravel(), "suv_mean": suv.T.ravel()})


def expected(demographics: pd.DataFrame) -> pd.DataFrame:
    """Population truth: tidy [case_id, organ, volume_ml, suv_mean], one row per case x organ.

    ``demographics`` has age, sex ("M"/"F"), height_m, weight_kg (and optionally case_id).
    """
    vol, suv = _expected_arrays(demographics)
    return _truth_frame(_case_ids(demographics), vol, suv)


def truncated_lognormal_mean(sigma: float, c: float = TRUNCATE_SD) -> float:
    """E[exp(sigma Z) | |Z| <= c] for standard normal Z (used to make the factor mean one)."""
    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    return math.exp(sigma**2 / 2) * (phi(c - sigma) - phi(-c - sigma)) / (phi(c) - phi(-c))


@lru_cache(maxsize=None)
def lognormal_sigma(cv: float, c: float = TRUNCATE_SD) -> float:
    """Log-scale SD sigma for which exp(sigma Z), Z truncated at +-c, has coefficient of variation ``cv``.

    CV^2 = E[exp(2 sigma Z)] / E[exp(sigma Z)]^2 - 1 (truncated moments); solved numerically.
    """
    def excess(sigma: float) -> float:
        return truncated_lognormal_mean(2 * sigma, c) / truncated_lognormal_mean(sigma, c) ** 2 - 1 - cv * cv

    return float(brentq(excess, 1e-9, 5.0, xtol=1e-14))


def variation_factors(cv: float, size: int, rng: np.random.Generator, c: float = TRUNCATE_SD) -> np.ndarray:
    """Mean-one multiplicative factors with coefficient of variation ``cv``: exp(sigma Z) / E[exp(sigma Z)],
    Z standard normal truncated at +-c (a bounded log-normal)."""
    if cv <= 0:
        return np.ones(size)
    sigma = lognormal_sigma(cv, c)
    z = _truncated_normal(rng, size, 0.0, 1.0, -c, c)
    return np.exp(sigma * z) / truncated_lognormal_mean(sigma, c)


def max_variation_factor(cv: float, c: float = TRUNCATE_SD) -> float:
    """The largest factor ``variation_factors`` can return (at Z = +c)."""
    if cv <= 0:
        return 1.0
    sigma = lognormal_sigma(cv, c)
    return math.exp(sigma * c) / truncated_lognormal_mean(sigma, c)


def draw_subjects(demographics: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Subject truth with random variation: tidy [case_id, organ, volume_ml, suv_mean].

    Each organ's volume and SUVmean are the ``expected`` values times independent mean-one factors
    (truncated log-normal, CVs in ``VOLUME_CV`` / ``SUV_CV``), so averages over many draws approach
    ``expected``. Draw order: per organ (canonical order) the volume factors then the SUV factors.
    """
    vol, suv = _expected_arrays(demographics)
    n = len(demographics)
    for k, organ in enumerate(ORGAN_NAMES):
        vol[k] *= variation_factors(VOLUME_CV[organ], n, rng)
        suv[k] *= variation_factors(SUV_CV[organ], n, rng)
    return _truth_frame(_case_ids(demographics), vol, suv)
