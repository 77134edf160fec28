"""The command line: help that teaches, one-line errors with exit status 2, the small commands."""
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from totalgen_eval.cli import app

from conftest import require_bundled_generator

COMMANDS = ("inspect", "phantoms", "doctor", "segment", "metrics", "stats", "compare", "plot", "demo",
            "generate", "train", "benchmark")


def _run(*args):
    return CliRunner().invoke(app, list(map(str, args)))


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = _run(command, "--help")
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output.splitlines()) > 5


def test_phantoms_then_inspect_and_metrics(tmp_path):
    result = _run("phantoms", tmp_path / "p", "--n", "4", "--seed", "2", "--no-progress")
    assert result.exit_code == 0, result.output
    shown = _run("inspect", tmp_path / "p", "--csv", tmp_path / "cases.csv")
    assert shown.exit_code == 0, shown.output
    assert "phantom data" in shown.output
    cases = pd.read_csv(tmp_path / "cases.csv")
    truth = pd.read_csv(tmp_path / "p" / "truth.csv")
    assert sorted(cases.case_id) == sorted(truth.case_id.unique())
    assert set(cases.pet_shape) == {"56x40x144"}
    made = _run("metrics", tmp_path / "p", "-o", tmp_path / "m.csv", "--no-progress")
    assert made.exit_code == 0, made.output
    table = pd.read_csv(tmp_path / "m.csv")
    assert len(table) == 4 * 9
    merged = table.merge(truth, on=["case_id", "organ"], suffixes=("", "_truth"))
    # volumes from the true labels against the analytic volumes at 8 mm: compact organs within 5%; the aorta,
    # a tube of radius r ~ 11 mm, within 30% (surface bound: (2 pi r L)(v / 2) / (pi r^2 L) = v / r ~ 0.7).
    # Tight per-organ bounds at 4 mm: tests/test_phantom.py
    error = (merged.volume_ml / merged.volume_ml_truth - 1).abs()
    assert (error[merged.organ != "aorta"] < 0.05).all()
    assert (error < 0.30).all()


def test_bad_inputs_are_one_line_and_status_2(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _run("inspect", tmp_path / "empty")
    assert result.exit_code == 2 and "no cohort found" in result.output
    assert "Traceback" not in result.output
    result = _run("phantoms", tmp_path / "x", "--layout", "dicom")
    assert result.exit_code == 2 and "unknown layout" in result.output
    result = _run("metrics", tmp_path / "empty", "--age-bins", "60,20")
    assert result.exit_code == 2


def test_doctor_reports_weights_and_device():
    result = _run("doctor")
    assert result.exit_code == 0, result.output
    assert "TotalSegmentator weights" in result.output and "torch" in result.output


def test_version():
    from totalgen_eval import __version__
    result = _run("--version")
    assert result.exit_code == 0 and result.output.strip() == __version__


def test_generate_with_the_bundled_weights_records_the_sampler_settings(tmp_path):
    require_bundled_generator()
    made = _run("generate", "--n", "2", "--sr-steps", "2", "--steps", "8", "--out", tmp_path / "s", "--no-progress")
    assert made.exit_code == 0, made.output
    settings = json.loads((tmp_path / "s" / "generate.json").read_text())["settings"]
    assert (settings["lowres_steps"], settings["sr_steps"]) == (8, 2)
    cohort = pd.read_csv(tmp_path / "s" / "cohort.csv")
    assert len(cohort) == 2 and cohort.pet.map(lambda p: (tmp_path / "s" / p).is_file()).all()
    bad = _run("generate", "--n", "2", "--sr-steps", "0", "--out", tmp_path / "t", "--no-progress")
    assert bad.exit_code != 0 and "--sr-steps" in bad.output
