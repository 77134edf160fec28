"""Every error reaches the user as one line (issue 12, item 4): the file system, corrupt files, markup and
control characters, warnings, unexpected errors (``errors.py``; the CLI's ``error_for``)."""
import errno
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from totalgen_eval.errors import InputError, describe_os_error, printable

from conftest import (bundled_generator_copy, one_error_line, output_lines, require_bundled_generator, run_cli,
                      write_ours)

EXE = Path(sys.executable).with_name("totalgen-eval")


def test_file_too_large_is_one_line(tmp_path):
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = subprocess.run([str(EXE), "phantoms", "--out", str(tmp_path / "p"), "--n", "2", "--no-progress"],
                          capture_output=True, text=True, preexec_fn=limit_file_size,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "file too large" in lines[0], done.stderr
    assert ".tmp" not in lines[0]  # names the file being written, not its temporary name
    assert not list((tmp_path / "p").rglob("*.tmp"))


def test_permission_and_full_disk_are_one_line(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
            pytest.skip("root without chattr +i: cannot make a folder unwritable")
    else:
        locked.chmod(0o555)
    try:
        line = one_error_line(run_cli("phantoms", "--out", locked / "p", "--n", 1, "--no-progress"))
        assert str(locked / "p") in line and ("permission denied" in line or "operation not permitted" in line)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
        locked.chmod(0o755)
    write_ours(tmp_path / "c")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cases.csv"))

    monkeypatch.setattr("totalgen_eval.provenance.write_table", full)
    result = run_cli("inspect", tmp_path / "c", "--csv", tmp_path / "cases.csv")  # the table, then the error
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in output_lines(result) if line.startswith("error")] == [
        f"error: {tmp_path / 'cases.csv'}: no space left on the device"]


def test_a_really_full_disk_is_one_line(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs privileges)")
    try:
        line = one_error_line(run_cli("phantoms", "--out", small / "p", "--n", 3, "--no-progress"))
        assert "no space left on the device" in line
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_corrupt_checkpoints_and_population_json_are_one_line(tmp_path):
    folder = bundled_generator_copy(tmp_path)
    weights = folder / "sr.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated copy: the header is intact, the tensors are not
    line = one_error_line(run_cli("generate", "--checkpoint", folder, "--n", 1, "--out", tmp_path / "a", "--no-progress"))
    assert "sr.safetensors" in line and "truncated" in line
    weights.write_bytes(data)
    (folder / "population.json").write_text("{not json")
    line = one_error_line(run_cli("generate", "--checkpoint", folder, "--n", 1, "--out", tmp_path / "b", "--no-progress"))
    assert "population.json" in line and "JSONDecodeError" in line


def test_an_out_folder_holding_another_tools_config_json_is_one_line(tmp_path):
    from totalgen_eval.pipeline import CompareConfig, run_compare

    write_ours(tmp_path / "real")
    write_ours(tmp_path / "synth")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text(json.dumps({"model": "resnet", "lr": 0.1}))
    line = one_error_line(run_cli("compare", tmp_path / "real", tmp_path / "synth", "--out", tmp_path / "out"))
    assert "not made by totalgen-eval" in line
    with pytest.raises(InputError, match="compare did not write"):
        run_compare(CompareConfig(real=tmp_path / "real", synth=tmp_path / "synth", out=tmp_path / "out"),
                    progress=False)
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {"model": "resnet", "lr": 0.1}


def test_paths_are_printed_as_text_not_markup(tmp_path):
    line = one_error_line(run_cli("inspect", tmp_path / "x[/]"))
    assert line == f"error: {tmp_path / 'x[/]'}: cohort folder not found"
    write_ours(tmp_path / "[v2]")
    shown = run_cli("inspect", tmp_path / "[v2]", "--csv", tmp_path / "[bold]cases.csv")
    assert shown.exit_code == 0, shown.output
    assert "[v2]" in shown.output and f"case table written to {tmp_path / '[bold]cases.csv'}" in shown.output


def test_control_characters_in_case_ids_are_shown_escaped(tmp_path):
    write_ours(tmp_path / "c")
    table = pd.read_csv(tmp_path / "c" / "cohort.csv")
    table.loc[0, "case_id"] = "evil\x1b[2J\x07id"
    table.loc[0, "pet"] = "cases/missing.nii.gz"
    table.to_csv(tmp_path / "c" / "cohort.csv", index=False)
    shown = run_cli("inspect", tmp_path / "c", "--skip-bad")
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\x07" not in shown.output
    assert "problem evil\\x1b[2J\\x07id:" in shown.output
    assert printable("a\tb\nc\u202e") == "a\\tb\\nc\\u202e"


def test_warnings_are_one_line_without_source(tmp_path):
    result = run_cli("phantoms", tmp_path / "p", "--n", 1, "--no-progress")  # the deprecated positional folder
    assert result.exit_code == 0, result.output
    warned = [line for line in output_lines(result) if line.startswith("warning: ")]
    assert warned == [f"warning: the output folder as an argument is deprecated: use --out {tmp_path / 'p'}"]
    assert "FutureWarning" not in result.output and "warnings.warn" not in result.output


def test_generate_age_clamping_says_so_in_one_line(tmp_path):
    require_bundled_generator()
    result = run_cli("generate", "--n", 1, "--age", "5-10", "--steps", 2, "--sr-steps", 1, "--out", tmp_path / "s",
                  "--no-progress")
    assert result.exit_code == 0, result.output
    warned = [line for line in output_lines(result) if line.startswith("warning: ")]
    assert len(warned) == 1 and "clamped" in warned[0] and "age 20-" in warned[0], result.output
    assert "UserWarning" not in result.output
    low = json.loads((tmp_path / "s" / "generate.json").read_text())
    assert low["n_clamped"] == 1
    assert pd.read_csv(tmp_path / "s" / "cohort.csv").age.iloc[0] >= 20  # clamped to the training range


def test_unexpected_errors_are_one_line_unless_debugging(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr("totalgen_eval.cohort.summarize", broken)
    write_ours(tmp_path / "c")
    line = one_error_line(run_cli("inspect", tmp_path / "c"), status=1)
    assert line == "error: unexpected RuntimeError: something (set TOTALGEN_EVAL_DEBUG=1 to see the traceback)"
    debug = run_cli("inspect", tmp_path / "c", env={"TOTALGEN_EVAL_DEBUG": "1"})
    assert isinstance(debug.exception, RuntimeError)


def test_os_errors_in_words():
    assert describe_os_error(OSError(errno.EFBIG, "File too large", "/x/y.nii.gz")).startswith(
        "/x/y.nii.gz: file too large")
    assert describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/out")) == "/out: permission denied"
    assert describe_os_error(FileNotFoundError("cascade: no such folder")) == "cascade: no such folder"
