"""The generator's population model (``generator/population.py``): the fit recovers known shares, slopes and
spread; constrained sampling; conditional fill-in; JSON round trip; draws that depend only on (seed, case index)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from generator import PopulationModel

from conftest import fitted_population


def test_population_fit_sample_and_fill():
    rng = np.random.default_rng(1)
    n = 4000
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n, p=[0.4, 0.6])
    height = np.where(sex == "M", 1.80, 1.66) - 0.002 * (age - 50) + rng.normal(0, 0.05, n)
    weight = 60 + 10 * (sex == "M") + 0.2 * age + rng.normal(0, 5, n)
    pop = PopulationModel.fit({"age": age, "sex": sex, "height_m": height, "weight_kg": weight})
    m = pop.model("M")
    assert abs(pop.sexes["M"].share - 0.6) < 0.03
    assert abs(m.slope[0] + 0.002) < 3e-4 and abs(m.slope[1] - 0.2) < 0.02
    assert abs(math.sqrt(m.cov[1][1]) - 5) < 0.3
    s = pop.sample(500, np.random.default_rng(0), sex="F", age=(40, 50), weight=(60, 70))
    assert set(s["sex"]) == {"F"} and s["age"].min() >= 40 and s["age"].max() <= 50
    assert s["weight_kg"].min() >= 60 and s["weight_kg"].max() <= 70
    # filled weight given height follows the conditional mean of the fitted Gaussian
    filled = pop.fill_missing({"age": [50.0] * 2000, "sex": ["M"] * 2000, "height_m": [1.9] * 2000,
                               "weight_kg": [np.nan] * 2000}, np.random.default_rng(3))
    mu = m.mean_hw(np.array([50.0]))[0]
    expect = mu[1] + m.cov[1][0] / m.cov[0][0] * (1.9 - mu[0])
    assert abs(filled["weight_kg"].mean() - expect) < 0.5 and np.all(filled["height_m"] == 1.9)
    again = PopulationModel.from_dict(json.loads(json.dumps(pop.to_dict())))
    assert again == pop
    with pytest.raises(ValueError, match="unknown sex"):
        pop.sample(2, np.random.default_rng(0), sex="X")


def test_population_draws_depend_only_on_seed_and_case_index():
    pop = fitted_population(400, seed=2)
    six, two = pop.sample_cases(5, range(6)), pop.sample_cases(5, range(2))
    for col in ("age", "sex", "height_m", "weight_kg"):
        np.testing.assert_array_equal(two[col], six[col][:2])
        np.testing.assert_array_equal(pop.sample_cases(5, [4])[col], six[col][4:5])
    assert not np.array_equal(pop.sample_cases(6, range(6))["age"], six["age"])
    many = pop.sample_cases(0, range(3000), age=(40, 60))  # still the population's distribution
    assert abs(np.mean(many["sex"] == "M") - pop.sexes["M"].share) < 0.03
    assert many["age"].min() >= 40 and many["age"].max() <= 60
    # a filled-in height depends on its own case only, not on which earlier rows were missing too
    demo = {"age": [50.0, 60.0, 70.0], "sex": ["M", "F", "M"], "height_m": [np.nan, 1.6, np.nan],
            "weight_kg": [80.0, np.nan, 75.0]}
    full = pop.fill_missing_cases(demo, seed=1)
    alone = pop.fill_missing_cases({k: v[2:] for k, v in demo.items()}, seed=1, indices=[2])
    assert full["height_m"][2] == alone["height_m"][0] and full["height_m"][1] == 1.6
    assert np.isfinite(full["weight_kg"]).all() and full["weight_kg"][0] == 80.0
