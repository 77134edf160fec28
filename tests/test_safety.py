"""Nothing lost, nothing half-done (issue 12, items 2-4): inputs are never written, options are validated before
any work, and every error reaches the user as one line (reproductions of the reported misuses)."""
import errno
import gzip
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from totalgen_eval.cli import app
from totalgen_eval.cohort import load_cohort
from totalgen_eval.errors import InputError, check_number, describe_os_error, printable
from totalgen_eval.provenance import LOCK, MARKER, claim_folder, folder_lock, read_marker
from totalgen_eval.volumes import MAX_VOXELS_ENV, read_grid, read_volume

from conftest import SHAPE, fixture_affine, require_bundled_generator, write_ours

EXE = Path(sys.executable).with_name("totalgen-eval")


def _run(*args, env=None):
    return CliRunner().invoke(app, list(map(str, args)), env=env)


def _lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


def _one_error_line(result, status: int = 2) -> str:
    """The single output line of a failed command (asserting there is exactly one and no traceback)."""
    assert result.exit_code == status, result.output
    lines = _lines(result)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def _digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# item 2: inputs are never written ----------------------------------------------------------------------
def test_outputs_that_are_cohort_inputs_are_refused(tmp_path):
    cohort = write_ours(tmp_path / "c")
    before = _digest(tmp_path / "c")
    pet = tmp_path / "c" / cohort.cases["case-01"]["paths"]["pet"]
    for args in (("metrics", tmp_path / "c", "-o", tmp_path / "c" / "cohort.csv", "--no-progress"),
                 ("inspect", tmp_path / "c", "--csv", tmp_path / "c" / "cohort.csv"),
                 ("metrics", tmp_path / "c", "--out", pet, "--no-progress")):
        line = _one_error_line(_run(*args))
        assert "is an input of the cohort" in line
    assert _digest(tmp_path / "c") == before
    assert len(load_cohort(tmp_path / "c")) == 3


def test_a_lesion_mask_is_an_input_too(tmp_path):
    """cohort.csv's ``lesions`` column is Case.lesions, not an extra column: its files are protected as well."""
    from totalgen_eval.volumes import write_volume

    write_ours(tmp_path / "c", extra={"lesions": "cases/lesions.nii.gz"})
    mask = write_volume(np.zeros(SHAPE, np.uint8), fixture_affine(), tmp_path / "c" / "cases" / "lesions.nii.gz")
    before = _digest(tmp_path / "c")
    line = _one_error_line(_run("metrics", tmp_path / "c", "--out", mask, "--no-progress"))
    assert "is an input of the cohort" in line and _digest(tmp_path / "c") == before


def test_generate_force_never_replaces_a_cohort_it_did_not_make(tmp_path):
    write_ours(tmp_path / "real")
    before = _digest(tmp_path / "real")
    line = _one_error_line(_run("generate", "--n", 2, "--out", tmp_path / "real", "--force", "--no-progress"))
    assert "not made by totalgen-eval" in line
    assert _run("phantoms", "--out", tmp_path / "p", "--n", 1, "--no-progress").exit_code == 0
    line = _one_error_line(_run("generate", "--n", 2, "--out", tmp_path / "p", "--force", "--no-progress"))
    assert "totalgen-eval phantoms" in line
    assert _digest(tmp_path / "real") == before and len(load_cohort(tmp_path / "p")) == 1
    # the Python API refuses too (a real cohort has no generate marker and no generate.json)
    from generator import random_cascade, tiny_lowres, tiny_sr
    from totalgen_eval.synthesis import generate_cohort

    write_ours(tmp_path / "other")
    with pytest.raises(InputError, match="generate did not write"):
        generate_cohort(tmp_path / "real", match=tmp_path / "other", force=True, progress=False,
                        cascade=random_cascade(tiny_lowres(), tiny_sr()))
    assert _digest(tmp_path / "real") == before


def test_claim_folder_accepts_its_own_and_refuses_others(tmp_path):
    claim_folder(tmp_path / "new", "compare")
    assert read_marker(tmp_path / "new")["command"] == "compare"
    (tmp_path / "new" / "report.html").write_text("x")
    claim_folder(tmp_path / "new", "compare")  # its own output: accepted
    with pytest.raises(InputError, match="totalgen-eval compare"):
        claim_folder(tmp_path / "new", "generate")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "config.json").write_text(json.dumps({"tool": "someone-else"}))
    with pytest.raises(InputError, match="not made by totalgen-eval"):
        claim_folder(tmp_path / "theirs", "compare", write=False)
    assert not (tmp_path / "theirs" / MARKER).exists()


def test_a_second_run_into_a_locked_results_folder_is_refused(tmp_path):
    write_ours(tmp_path / "real")
    write_ours(tmp_path / "synth")
    with folder_lock(tmp_path / "out", "compare"):  # a first compare is writing the folder
        result = _run("compare", tmp_path / "real", tmp_path / "synth", "--out", tmp_path / "out", "--no-progress")
        line = _one_error_line(result)
        assert f"being written by another run (pid {os.getpid()}" in line
        assert not (tmp_path / "out" / "organ_metrics.csv").exists()
    assert not (tmp_path / "out" / LOCK).exists()  # released


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LOCK).write_text(json.dumps({"pid": dead.pid, "command": "compare"}))
    with folder_lock(tmp_path / "out", "compare") as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_sigkill_of_generate_leaves_a_folder_every_loader_calls_incomplete(tmp_path):
    require_bundled_generator()
    out = tmp_path / "synth"
    proc = subprocess.Popen([str(EXE), "generate", "--n", "40", "--out", str(out), "--batch-size", "2",
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((out / "cases").glob("synth-*_pet.nii.gz")):
            assert proc.poll() is None, "generate ended before it could be killed"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert json.loads((out / "generate.json").read_text())["status"] == "running"
    shown = _run("inspect", out)
    line = _one_error_line(shown)
    assert "incomplete" in line and "--n 40" in line and str(out) in line  # says how to resume
    with pytest.raises(InputError, match="incomplete"):
        load_cohort(out)
    # the killed run's lock is stale: the same command is allowed to take the folder over
    with folder_lock(out, "generate"):
        pass


# item 3: options validated ---------------------------------------------------------------------------
@pytest.mark.parametrize("args, option", [
    (("generate", "--guidance", "nan"), "--guidance"),
    (("generate", "--guidance", "inf"), "--guidance"),
    (("generate", "--n", "1e9"), "--n"),
    (("generate", "--n", "1000000000"), "--n"),
    (("phantoms", "--voxel-mm", "0"), "--voxel-mm"),
    (("phantoms", "--voxel-mm", "-8"), "--voxel-mm"),
    (("phantoms", "--voxel-mm", "nan"), "--voxel-mm"),
    (("metrics", ".", "--max-voxels", "0"), "--max-voxels"),
])
def test_bad_numbers_are_one_line_before_any_work(tmp_path, args, option):
    line = _one_error_line(_run(*args, "--out", tmp_path / "o"))
    assert option in line
    assert not (tmp_path / "o").exists()


def test_the_python_api_validates_sampler_settings():
    from generator import random_cascade, tiny_lowres, tiny_sr
    from totalgen_eval.synthesis import generate_cohort

    with pytest.raises(InputError, match="--guidance: guidance = nan is not a finite number"):
        generate_cohort("never-written", n=2, guidance=float("nan"))
    cascade = random_cascade(tiny_lowres(), tiny_sr())
    for kwargs in ({"guidance": float("nan")}, {"guidance": -1.0}, {"steps": 0}, {"sr_steps": 10**6}):
        with pytest.raises(ValueError):
            cascade.settings(**kwargs)
    assert cascade.settings(guidance=2.0).guidance == 2.0
    assert not Path("never-written").exists()
    with pytest.raises(InputError, match="finite"):
        check_number(float("nan"), "--x", 0, 1)
    assert check_number("0.5", "--x", 0, 1) == 0.5


def _bundled_copy(tmp_path: Path) -> Path:
    from generator.checkpoints import bundled_folder

    require_bundled_generator()
    folder = tmp_path / "cascade"
    shutil.copytree(bundled_folder(), folder)
    return folder


def test_stage_configs_beyond_limits_are_refused_before_allocation(tmp_path):
    from generator.checkpoints import CheckpointError, read_stage_json

    folder = _bundled_copy(tmp_path)
    stage = json.loads((folder / "lowres.json").read_text())
    stage["config"]["network"]["channels"] = [4096, 8192, 16384]
    (folder / "lowres.json").write_text(json.dumps(stage))
    with pytest.raises(CheckpointError, match=r"network.channels\[0\] = 4096"):
        read_stage_json(folder / "lowres.json")
    stage["config"]["network"]["channels"] = [16, 32, 64]
    stage["config"]["shape"] = [2048, 2048, 2048]
    (folder / "lowres.json").write_text(json.dumps(stage))
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = _one_error_line(_run("generate", "--checkpoint", folder, "--n", 1, "--out", tmp_path / "o", "--no-progress"))
    assert "lowres.json" in line and "voxels exceed the limit" in line
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - usage < 1_000_000  # < 1 GB more (kB)


def test_segmenter_configs_asking_for_downloads_or_huge_networks_are_refused(tmp_path, monkeypatch):
    from totalgen_eval.segment.model import ModelConfig, build_network, load_model

    def fail(*args, **kwargs):
        raise AssertionError("a network was about to be downloaded")

    monkeypatch.setattr("urllib.request.urlopen", fail)
    pretrained = ModelConfig("DenseNet121", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                             "pretrained": True}, (0, 5))
    with pytest.raises(InputError, match="never downloads"):
        build_network(pretrained)
    huge = ModelConfig("UNet", {"spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                                "channels": [2048, 4096, 8192], "strides": [2, 2]}, (0, 5))
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="parameters exceeds the limit"):
        build_network(huge)  # ~1.4 G parameters: counted on the meta device, never allocated (5.6 GB)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - usage < 500_000
    # a checkpoint on disk: the same refusal, one line through the CLI's segment command
    config = json.loads(Path(str(load_model.__globals__["bundled_model_path"]())).read_text())
    config["network_args"]["pretrained"] = True
    (tmp_path / "m.json").write_text(json.dumps(config))
    (tmp_path / "m.safetensors").write_bytes(b"")
    write_ours(tmp_path / "c", labels=False)
    line = _one_error_line(_run("segment", tmp_path / "c", "--segmenter", f"model:{tmp_path / 'm.json'}",
                                "--out", tmp_path / "seg", "--no-progress"))
    assert "pretrained" in line and "m.json" in line


def _gzip_bomb(path: Path, shape=(1024, 1024, 1024)) -> Path:
    """A uint8 NIfTI of zeros of ``shape`` written as gzip level 9 by streaming (1 GiB of zeros -> ~1 MB)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(header.binaryblock + b"\0" * 4)
        zeros = bytes(1 << 26)
        for _ in range(int(np.prod(shape)) >> 26):
            fh.write(zeros)
    return path


def test_a_volume_above_the_voxel_cap_is_refused_from_its_header(tmp_path, monkeypatch):
    monkeypatch.delenv(MAX_VOXELS_ENV, raising=False)
    bomb = _gzip_bomb(tmp_path / "bomb.nii.gz")
    assert bomb.stat().st_size < 2_000_000  # a 1 MB gzip that asks for 1 GiB (4 GiB as float32)
    started = time.perf_counter()
    with pytest.raises(InputError, match="exceeds the cap of 268,435,456 voxels"):
        read_volume(bomb)
    with pytest.raises(InputError, match="1024x1024x1024"):
        read_grid(bomb)
    assert time.perf_counter() - started < 1.0  # refused from the header: nothing decompressed
    # a cohort whose PET is the bomb: one line from every command that reads it, without --max-voxels raised
    cohort = write_ours(tmp_path / "c", n=1)
    shutil.copy(bomb, tmp_path / "c" / cohort.cases["case-00"]["paths"]["pet"])
    line = _one_error_line(_run("inspect", tmp_path / "c"))
    assert "exceeds the cap" in line and "--max-voxels" in line
    monkeypatch.setenv(MAX_VOXELS_ENV, str(2**31))
    assert read_grid(bomb).shape == (1024, 1024, 1024)  # raised cap: the header is accepted


# item 4: one line per error ------------------------------------------------------------------------
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
        line = _one_error_line(_run("phantoms", "--out", locked / "p", "--n", 1, "--no-progress"))
        assert str(locked / "p") in line and ("permission denied" in line or "operation not permitted" in line)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], capture_output=True)
        locked.chmod(0o755)
    write_ours(tmp_path / "c")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cases.csv"))

    monkeypatch.setattr("totalgen_eval.provenance.write_table", full)
    result = _run("inspect", tmp_path / "c", "--csv", tmp_path / "cases.csv")  # the table, then the error
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in _lines(result) if line.startswith("error")] == [
        f"error: {tmp_path / 'cases.csv'}: no space left on the device"]


def test_a_really_full_disk_is_one_line(tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs privileges)")
    try:
        line = _one_error_line(_run("phantoms", "--out", small / "p", "--n", 3, "--no-progress"))
        assert "no space left on the device" in line
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_corrupt_checkpoints_and_population_json_are_one_line(tmp_path):
    folder = _bundled_copy(tmp_path)
    weights = folder / "sr.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # truncated copy: the header is intact, the tensors are not
    line = _one_error_line(_run("generate", "--checkpoint", folder, "--n", 1, "--out", tmp_path / "a", "--no-progress"))
    assert "sr.safetensors" in line and "truncated" in line
    weights.write_bytes(data)
    (folder / "population.json").write_text("{not json")
    line = _one_error_line(_run("generate", "--checkpoint", folder, "--n", 1, "--out", tmp_path / "b", "--no-progress"))
    assert "population.json" in line and "JSONDecodeError" in line


def test_an_out_folder_holding_another_tools_config_json_is_one_line(tmp_path):
    from totalgen_eval.pipeline import CompareConfig, run_compare

    write_ours(tmp_path / "real")
    write_ours(tmp_path / "synth")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text(json.dumps({"model": "resnet", "lr": 0.1}))
    line = _one_error_line(_run("compare", tmp_path / "real", tmp_path / "synth", "--out", tmp_path / "out"))
    assert "not made by totalgen-eval" in line
    with pytest.raises(InputError, match="compare did not write"):
        run_compare(CompareConfig(real=tmp_path / "real", synth=tmp_path / "synth", out=tmp_path / "out"),
                    progress=False)
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == {"model": "resnet", "lr": 0.1}


def test_paths_are_printed_as_text_not_markup(tmp_path):
    line = _one_error_line(_run("inspect", tmp_path / "x[/]"))
    assert line == f"error: {tmp_path / 'x[/]'}: cohort folder not found"
    write_ours(tmp_path / "[v2]")
    shown = _run("inspect", tmp_path / "[v2]", "--csv", tmp_path / "[bold]cases.csv")
    assert shown.exit_code == 0, shown.output
    assert "[v2]" in shown.output and f"case table written to {tmp_path / '[bold]cases.csv'}" in shown.output


def test_control_characters_in_case_ids_are_shown_escaped(tmp_path):
    write_ours(tmp_path / "c")
    table = pd.read_csv(tmp_path / "c" / "cohort.csv")
    table.loc[0, "case_id"] = "evil\x1b[2J\x07id"
    table.loc[0, "pet"] = "cases/missing.nii.gz"
    table.to_csv(tmp_path / "c" / "cohort.csv", index=False)
    shown = _run("inspect", tmp_path / "c", "--skip-bad")
    assert shown.exit_code == 0, shown.output
    assert "\x1b" not in shown.output and "\x07" not in shown.output
    assert "problem evil\\x1b[2J\\x07id:" in shown.output
    assert printable("a\tb\nc\u202e") == "a\\tb\\nc\\u202e"


def test_warnings_are_one_line_without_source(tmp_path):
    result = _run("phantoms", tmp_path / "p", "--n", 1, "--no-progress")  # the deprecated positional folder
    assert result.exit_code == 0, result.output
    warned = [line for line in _lines(result) if line.startswith("warning: ")]
    assert warned == [f"warning: the output folder as an argument is deprecated: use --out {tmp_path / 'p'}"]
    assert "FutureWarning" not in result.output and "warnings.warn" not in result.output


def test_generate_age_clamping_says_so_in_one_line(tmp_path):
    require_bundled_generator()
    result = _run("generate", "--n", 1, "--age", "5-10", "--steps", 2, "--sr-steps", 1, "--out", tmp_path / "s",
                  "--no-progress")
    assert result.exit_code == 0, result.output
    warned = [line for line in _lines(result) if line.startswith("warning: ")]
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
    line = _one_error_line(_run("inspect", tmp_path / "c"), status=1)
    assert line == "error: unexpected RuntimeError: something (set TOTALGEN_EVAL_DEBUG=1 to see the traceback)"
    debug = _run("inspect", tmp_path / "c", env={"TOTALGEN_EVAL_DEBUG": "1"})
    assert isinstance(debug.exception, RuntimeError)


def test_os_errors_in_words():
    assert describe_os_error(OSError(errno.EFBIG, "File too large", "/x/y.nii.gz")).startswith(
        "/x/y.nii.gz: file too large")
    assert describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/out")) == "/out: permission denied"
    assert describe_os_error(FileNotFoundError("cascade: no such folder")) == "cascade: no such folder"
