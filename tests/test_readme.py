"""The README's "From Python" block runs as written, on two small phantom cohorts in the working folder."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from totalgen_eval.phantom import make_cohort

from conftest import require_bundled_generator

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block(section: str) -> str:
    """The first ```python block after the heading ``## <section>``."""
    text = README.read_text()
    start = text.index(f"## {section}")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block under '## {section}'"
    return match.group(1)


@pytest.mark.slow
def test_from_python_block_runs_as_written(tmp_path, monkeypatch):
    require_bundled_generator()
    make_cohort(tmp_path / "real", n=6, seed=11, progress=False)
    make_cohort(tmp_path / "synth", n=6, seed=12, progress=False)
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(python_block("From Python"), str(README), "exec"), names)

    real, synth, result, volumes = names["real"], names["synth"], names["result"], names["volumes"]
    assert len(real) == len(synth) == 6 * 9  # six cases x nine organs
    truth = pd.read_csv(tmp_path / "real" / "truth.csv")
    merged = real.merge(truth, on=["case_id", "organ"], suffixes=("", "_truth"))
    liver = merged[merged.organ == "liver"]
    np.testing.assert_allclose(liver.volume_ml, liver.volume_ml_truth, rtol=0.05)  # true labels at 8 mm
    assert {"organ", "metric", "deviation_pct", "verdict"} <= set(result.concordance.columns)

    # one (CT, PET, affine) per demographics row, on the generator's 8 mm canvas, in HU and SUV
    assert len(volumes) == len(names["demographics"]) == 2
    for ct, pet, affine in volumes:
        assert ct.shape == pet.shape == (56, 40, 144)
        assert np.isfinite(ct).all() and np.isfinite(pet).all()
        assert ct.min() < -500 and pet.max() > 1.0  # air around the body; uptake above background
        np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), 8.0)
