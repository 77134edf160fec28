"""The regression suite: baselines and figures match both ways; a stricter baseline fails the run."""
import json
import shutil

import pytest

from benchmarks import suite  # a package of the source checkout (pyproject: pytest's pythonpath)


@pytest.mark.parametrize("name", sorted(suite.PROVIDERS))
def test_every_figure_has_a_baseline_and_every_baseline_a_figure(name):
    baselines = suite.load_baselines(name)
    assert set(baselines) == suite.declared_figures(name)
    for entry in baselines.values():
        assert entry["better"] in ("near", "higher", "lower") and entry["tolerance"] >= 0 and entry["note"]


def test_verdicts():
    v = suite.Verdict("f", value=0.8, baseline=1.0, tolerance=0.1, better="higher")
    assert v.regressed
    assert not suite.Verdict("f", 0.95, 1.0, 0.1, "higher").regressed
    assert suite.Verdict("f", 1.2, 1.0, 0.1, "lower").regressed
    assert suite.Verdict("f", 0.85, 1.0, 0.1, "near").regressed and not suite.Verdict("f", 1.05, 1.0, 0.1, "near").regressed


@pytest.mark.slow  # runs the regression suite (fast mode) twice: ~1-2 min on 2 busy cores
def test_regression_passes_then_fails_when_a_baseline_is_made_stricter(tmp_path, monkeypatch):
    """The suite's verdicts on a real, small and seeded calibration (6 repetitions, one process): figures
    recorded with --update pass on a re-run, and a baseline made stricter fails naming the figure."""
    from benchmarks import bench_calibration

    def small_calibration(fast, publish):
        head = bench_calibration.main(["--reps", "6", "--n", "40", "--workers", "1", "--no-write"])
        return {"calibration.power_model": head["model"]["power_target"],
                "calibration.type1_primary_model": head["model"]["type1_per_primary_test"]}
    small_calibration.figures = ("calibration.power_model", "calibration.type1_primary_model")
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    monkeypatch.setattr(suite, "BASELINES", baselines)
    monkeypatch.setattr(suite, "PROVIDERS", {"regression": {"calibration": small_calibration}})
    kept = {k: v for k, v in json.loads((suite.ROOT / "benchmarks" / "baselines" / "regression.json").read_text()).items()
            if k in small_calibration.figures}
    (baselines / "regression.json").write_text(json.dumps(kept))
    lines = []
    suite.run_suite("regression", update=True, echo=lines.append)
    assert suite.run_suite("regression", fast=True, echo=lines.append), "\n".join(lines)
    data = json.loads((baselines / "regression.json").read_text())
    entry = data["calibration.power_model"]
    entry["value"] = entry["value"] + 2 * entry["tolerance"] + 0.01  # stricter than the current figure
    (baselines / "regression.json").write_text(json.dumps(data))
    lines.clear()
    assert not suite.run_suite("regression", fast=True, echo=lines.append)
    assert any("REGRESSED" in line and "calibration.power_model" in line for line in lines), lines
