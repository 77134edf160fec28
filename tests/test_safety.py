"""Nothing lost, nothing half-done (issue 12, items 2-3): inputs are never written and options are validated before
any work (reproductions of the reported misuses). Item 4, every error as one line: test_errors.py."""
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
import pytest

from totalgen_eval.cohort import load_cohort
from totalgen_eval.errors import InputError, check_number
from totalgen_eval.provenance import LOCK, MARKER, claim_folder, folder_lock, read_marker
from totalgen_eval.volumes import MAX_VOXELS_ENV, read_grid, read_volume

from conftest import (SHAPE, bundled_generator_copy, fixture_affine, one_error_line, require_bundled_generator,
                      run_cli, write_ours)

EXE = Path(sys.executable).with_name("totalgen-eval")


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
        line = one_error_line(run_cli(*args))
        assert "is an input of the cohort" in line
    assert _digest(tmp_path / "c") == before
    assert len(load_cohort(tmp_path / "c")) == 3


def test_a_lesion_mask_is_an_input_too(tmp_path):
    """cohort.csv's ``lesions`` column is Case.lesions, not an extra column: its files are protected as well."""
    from totalgen_eval.volumes import write_volume

    write_ours(tmp_path / "c", extra={"lesions": "cases/lesions.nii.gz"})
    mask = write_volume(np.zeros(SHAPE, np.uint8), fixture_affine(), tmp_path / "c" / "cases" / "lesions.nii.gz")
    before = _digest(tmp_path / "c")
    line = one_error_line(run_cli("metrics", tmp_path / "c", "--out", mask, "--no-progress"))
    assert "is an input of the cohort" in line and _digest(tmp_path / "c") == before


def test_generate_force_never_replaces_a_cohort_it_did_not_make(tmp_path):
    write_ours(tmp_path / "real")
    before = _digest(tmp_path / "real")
    line = one_error_line(run_cli("generate", "--n", 2, "--out", tmp_path / "real", "--force", "--no-progress"))
    assert "not made by totalgen-eval" in line
    assert run_cli("phantoms", "--out", tmp_path / "p", "--n", 1, "--no-progress").exit_code == 0
    line = one_error_line(run_cli("generate", "--n", 2, "--out", tmp_path / "p", "--force", "--no-progress"))
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
        result = run_cli("compare", tmp_path / "real", tmp_path / "synth", "--out", tmp_path / "out", "--no-progress")
        line = one_error_line(result)
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


@pytest.mark.slow
def test_sigkill_of_generate_leaves_a_folder_every_loader_calls_incomplete(tmp_path):
    require_bundled_generator()
    out = tmp_path / "synth"
    proc = subprocess.Popen([str(EXE), "generate", "--n", "40", "--out", str(out), "--batch-size", "2", "--steps", "2",
                             "--sr-steps", "1", "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    shown = run_cli("inspect", out)
    line = one_error_line(shown)
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
    line = one_error_line(run_cli(*args, "--out", tmp_path / "o"))
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


def test_stage_configs_beyond_limits_are_refused_before_allocation(tmp_path):
    from generator.checkpoints import CheckpointError, read_stage_json

    folder = bundled_generator_copy(tmp_path)
    stage = json.loads((folder / "lowres.json").read_text())
    stage["config"]["network"]["channels"] = [4096, 8192, 16384]
    (folder / "lowres.json").write_text(json.dumps(stage))
    with pytest.raises(CheckpointError, match=r"network.channels\[0\] = 4096"):
        read_stage_json(folder / "lowres.json")
    stage["config"]["network"]["channels"] = [16, 32, 64]
    stage["config"]["shape"] = [2048, 2048, 2048]
    (folder / "lowres.json").write_text(json.dumps(stage))
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    line = one_error_line(run_cli("generate", "--checkpoint", folder, "--n", 1, "--out", tmp_path / "o", "--no-progress"))
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
    line = one_error_line(run_cli("segment", tmp_path / "c", "--segmenter", f"model:{tmp_path / 'm.json'}",
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
    line = one_error_line(run_cli("inspect", tmp_path / "c"))
    assert "exceeds the cap" in line and "--max-voxels" in line
    monkeypatch.setenv(MAX_VOXELS_ENV, str(2**31))
    assert read_grid(bomb).shape == (1024, 1024, 1024)  # raised cap: the header is accepted


def test_warnings_of_worker_processes_are_one_line_too():
    code = ("import warnings\n"
            "from totalgen_eval.parallel import make_scheduler\n"
            "if __name__ == '__main__':\n"
            "    with make_scheduler('pool', 2) as pool:\n"
            "        list(pool.run(warnings.warn, ['first\\nworker warning', 'second']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stderr.splitlines()) == ["warning: first\\nworker warning", "warning: second"]
