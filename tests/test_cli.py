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


@pytest.mark.slow  # the bundled cascade end to end: ~20-50 s
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


# the user-facing edges (issue 16) ---------------------------------------------------------------------
WRITERS = ("phantoms", "segment", "metrics", "stats", "compare", "demo", "generate", "train")


@pytest.mark.parametrize("command", COMMANDS)
def test_short_help_and_readable_metavars(command):
    result = CliRunner().invoke(app, [command, "-h"], env={"COLUMNS": "250"})
    assert result.exit_code == 0 and "Usage" in result.output
    assert "<bool>" not in result.output and "{" not in result.output, result.output
    if command in WRITERS:
        assert "--out" in result.output and " -o " in result.output  # one name for the output everywhere


def test_root_help_offers_completion_and_short_help():
    result = CliRunner().invoke(app, ["-h"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    assert "--install-completion" in result.output and "--show-completion" in result.output
    assert "<bool>" not in result.output
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("totalgen-eval")  # bash asks the program for completions
    env = {**os.environ, "_TOTALGEN_EVAL_COMPLETE": "complete_bash", "COMP_WORDS": "totalgen-eval generate --gu",
           "COMP_CWORD": "2"}
    done = subprocess.run([str(exe)], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.split() == ["--guidance"]


def test_phantoms_out_option_and_deprecated_aliases(tmp_path):
    made = _run("phantoms", "--out", tmp_path / "p", "--n", "2", "--no-progress")
    assert made.exit_code == 0 and "warning" not in made.output, made.output
    labels = sorted((tmp_path / "p" / "cases").glob("*_labels.nii.gz"))
    assert len(labels) == 2
    both = _run("phantoms", tmp_path / "q", "--out", tmp_path / "p", "--n", "2")
    assert both.exit_code == 2 and "two output folders" in both.output
    old = _run("metrics", tmp_path / "p", "--output", tmp_path / "m.csv", "--no-progress")
    assert old.exit_code == 0 and "deprecated" in old.output and (tmp_path / "m.csv").is_file()


def test_label_files_have_a_slicer_colour_table(tmp_path):
    import nibabel as nib
    import numpy as np

    from totalgen_eval.organs import CLASSES
    from totalgen_eval.segment.formats import label_table_lines, total_class_ids, write_label_table

    assert _run("phantoms", "--out", tmp_path / "p", "--n", "1", "--no-progress").exit_code == 0
    labels = next((tmp_path / "p" / "cases").glob("*_labels.nii.gz"))
    table = labels.with_name(labels.name.replace(".nii.gz", ".ctbl"))
    rows = [line.split() for line in table.read_text().splitlines() if not line.startswith("#")]
    assert all(len(r) == 6 for r in rows)
    names = {int(r[0]): r[1] for r in rows}
    present = set(np.unique(np.asarray(nib.load(labels).dataobj)).tolist())
    assert present <= set(names) and names[0] == "background"
    assert all(names[cid] == CLASSES[cid] for cid in present - {0})  # Slicer shows "liver" for 5
    assert table.read_text().splitlines()[1] == f"# {len(rows)} values"
    assert len(label_table_lines()) == len(total_class_ids()) + 1
    assert write_label_table(tmp_path / "x.nii", ids=[5]).read_text().splitlines()[2:] == [
        "0 background 0 0 0 0", "5 liver 221 130 101 255"]


def _population():
    from pathlib import Path

    import generator
    from generator import PopulationModel

    path = Path(generator.__file__).parent / "weights" / "population.json"
    if not path.is_file():
        pytest.skip("the bundled population model is absent")
    return PopulationModel.load(path)


def test_cascade_generate_fills_missing_height_and_weight():
    import numpy as np

    from generator import random_cascade, tiny_lowres, tiny_sr

    population = _population()
    cascade = random_cascade(tiny_lowres(), tiny_sr(), population=population)
    demographics = pd.DataFrame({"age": [45.0, 62.0], "sex": ["F", "M"]})
    volumes = cascade.generate(demographics, seed=3, steps=1, sr_steps=1)
    assert len(volumes) == 2 and volumes[0][0].shape == tuple(tiny_sr().shape)
    used = cascade.prepare(demographics, seed=3)
    expected = population.fill_missing_cases({"age": demographics.age.to_numpy(), "sex": demographics.sex.to_numpy(),
                                              "height_m": np.full(2, np.nan), "weight_kg": np.full(2, np.nan)}, 3)
    np.testing.assert_allclose(used["height_m"], expected["height_m"])  # the per-case conditional draw
    assert np.all((used["height_m"] > 1.4) & (used["height_m"] < 2.1))
    partial = cascade.prepare(pd.DataFrame({"age": [50.0], "sex": ["M"], "height_m": [1.80], "weight_kg": [None]}))
    assert partial["height_m"][0] == pytest.approx(1.80) and np.isfinite(partial["weight_kg"][0])
    with pytest.raises(ValueError, match="height_m"):
        random_cascade(tiny_lowres(), tiny_sr()).generate(demographics, steps=1, sr_steps=1)


def test_a_segmenter_typo_is_found_before_any_case_is_measured(tmp_path, monkeypatch):
    from conftest import write_ours

    def measured(*args, **kwargs):
        raise AssertionError("organ metrics ran before the segmenter spec was checked")

    monkeypatch.setattr("totalgen_eval.metrics.organ_metrics", measured)
    write_ours(tmp_path / "real")
    write_ours(tmp_path / "synth", labels=False)
    result = _run("compare", tmp_path / "real", tmp_path / "synth", "--synth-segmenter", "model:bundeld",
                  "--out", tmp_path / "out", "--no-progress")
    assert result.exit_code == 2, result.output
    assert "bundeld" in result.output and "AssertionError" not in result.output


def test_benchmarks_run_as_a_module_and_the_cli_never_touches_sys_path(tmp_path, monkeypatch):
    import inspect
    import subprocess
    import sys
    from pathlib import Path

    import totalgen_eval.cli.synthesis as synthesis

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--suite", "nope"], cwd=root, capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.strip() == (
        "error: --suite: unknown suite 'nope': choose from regression, perf or all")
    assert "sys.path" not in inspect.getsource(synthesis)
    assert _run("benchmark", "--suite", "nope").exit_code == 2  # through `python -m benchmarks`
    monkeypatch.setattr(synthesis, "__file__", str(tmp_path / "site-packages" / "totalgen_eval" / "cli" / "x.py"))
    result = _run("benchmark")  # an installed wheel: no benchmarks folder beside the package
    assert result.exit_code == 2 and "source checkout" in result.output and len(result.output.splitlines()) == 1
