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
