import math

import numpy as np
import pytest

from totalgen_eval import demographics as d


@pytest.mark.parametrize("text,years", [("057Y", 57.0), ("006M", 0.5), (" 70Y ", 70.0), (63, 63.0), ("45", 45.0)])
def test_parse_age(text, years):
    assert d.parse_age(text) == pytest.approx(years)


def test_parse_age_missing_and_bad():
    assert math.isnan(d.parse_age(None)) and math.isnan(d.parse_age("")) and math.isnan(d.parse_age(float("nan")))
    with pytest.raises(ValueError, match="unparseable age 'abc'"):
        d.parse_age("abc")


def test_parse_sex():
    assert [d.parse_sex(x) for x in ("M", "f", "male", 1, 0)] == ["M", "F", "M", "M", "F"]
    with pytest.raises(ValueError):
        d.parse_sex("X")


def test_generator_reads_sex_with_the_same_words():
    """The generator library cannot import totalgen_eval, so it has its own parse_sex: same words, same answers."""
    from generator.population import parse_sex as generator_parse_sex

    words = ("M", "m", " male ", "MALE", "1", 1, 1.0, "F", "f", "Female", "0", 0, 0.0)
    assert [generator_parse_sex(w) for w in words] == [d.parse_sex(w) for w in words] == ["M"] * 7 + ["F"] * 6
    for bad in ("W", "X", "", "2", "unknown", None):
        with pytest.raises(ValueError):
            d.parse_sex(bad)
        with pytest.raises(ValueError):
            generator_parse_sex(bad)


def test_age_groups_default_and_paper():
    ages = [10, 18, 39.9, 40, 60, 79, 80, 95, float("nan")]
    got = d.age_group(ages, d.DEFAULT_AGE_BINS).tolist()
    assert got[:8] == ["<18", "18-40", "18-40", "40-60", "60-80", "60-80", "80+", "80+"]
    assert got[8] is np.nan or (isinstance(got[8], float) and math.isnan(got[8]))
    paper = d.age_group([65, 65.5, 30], d.parse_age_bins("paper")).tolist()
    assert paper == ["<=65", ">65", "<=65"]


def test_parse_age_bins():
    assert d.parse_age_bins("20,50") == (20.0, 50.0)
    assert d.parse_age_bins(None) == d.DEFAULT_AGE_BINS
    with pytest.raises(ValueError, match="increasing"):
        d.parse_age_bins("50,20")
    with pytest.raises(ValueError, match="preset"):
        d.parse_age_bins("old")


@pytest.mark.parametrize("kwargs,expected", [
    ({"age": -5}, "implausible age -5: expected 0-120 years"),
    ({"age": 121}, "implausible age 121: expected 0-120 years"),
    ({"height_m": 175.0}, "implausible height_m 175: expected 0.5-2.5 m (cm? 175 cm is 1.75 m)"),
    ({"height_m": 1750.0}, "implausible height_m 1750: expected 0.5-2.5 m (mm? 1750 mm is 1.75 m)"),
    ({"height_m": 0.3}, "implausible height_m 0.3: expected 0.5-2.5 m"),
    ({"weight_kg": 0.0}, "implausible weight_kg 0: expected 2-400 kg"),
    ({"weight_kg": float("inf")}, "implausible weight_kg inf: expected 2-400 kg"),
])
def test_implausible_demographics_said_in_words(kwargs, expected):
    assert d.demographic_problem(**kwargs) == expected
    with pytest.raises(ValueError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        d.check_demographics(**kwargs)


def test_plausible_and_missing_demographics_pass():
    for age, h, w in ((0.0, 0.5, 2.0), (120.0, 2.5, 400.0), (57.0, float("nan"), float("nan")), (float("nan"),) * 3):
        assert d.demographic_problem(age, h, w) is None
        d.check_demographics(age, h, w)
