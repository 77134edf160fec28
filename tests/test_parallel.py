"""The case-walking layer: map_cases (serial, pool, Dask), --skip-bad with excluded.csv through the commands,
and the per-case caches (keys by input identity, readable names, corrupt files recomputed)."""
from __future__ import annotations

import ast
import gzip
import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from totalgen_eval import metrics, parallel
from totalgen_eval.cli import app
from totalgen_eval.cohort import load_cohort
from totalgen_eval.errors import InputError
from totalgen_eval.phantom import make_cohort
from totalgen_eval.volumes import read_volume, write_volume


ROOT = Path(__file__).resolve().parents[1]
BAD = {"phantom-0001": "truncated", "phantom-0002": "differ in shape", "phantom-0003": "age"}


def _cli(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def _square(x: int) -> int:
    """x^2; x = 3 is a bad case (InputError naming a file), x = 7 a program error."""
    if x == 3:
        raise InputError("bad three", "f3.nii.gz")
    if x == 7:
        raise ZeroDivisionError("a bug, not a bad case")
    return x * x


# --- map_cases ------------------------------------------------------------------------------------------------

def test_map_cases_keeps_input_order_and_excludes_bad_cases():
    ids = [f"c{i}" for i in range(6)]
    got = parallel.map_cases(_square, range(6), ids=ids, skip_bad=True)  # serial, with a progress bar
    assert got.values == [(0, 0), (1, 1), (2, 4), (4, 16), (5, 25)]
    assert got.excluded == [parallel.Excluded("c3", "f3.nii.gz: bad three")]
    # a pool of two processes (math.sqrt: picklable without this module); sqrt(-1) raises ValueError
    pooled = parallel.map_cases(math.sqrt, [0.0, 4.0, -1.0, 9.0], ids=list("abcd"), workers=2, skip_bad=True,
                                progress=False)
    assert pooled.values == [(0.0, 0.0), (4.0, 2.0), (9.0, 3.0)]
    assert pooled.excluded == [parallel.Excluded("c", "ValueError: math domain error")]
    threads = parallel.map_cases(_square, range(6), ids=ids, scheduler="threads", workers=2, skip_bad=True,
                                 progress=False)
    assert threads == got


def test_without_skip_bad_a_bad_case_stops_the_run_with_one_line():
    with pytest.raises(InputError) as info:
        parallel.map_cases(_square, range(6), ids=[f"c{i}" for i in range(6)], skip_bad=False, progress=False)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("case c3: f3.nii.gz: bad three") and "--skip-bad" in msg


def test_program_errors_are_not_taken_for_bad_cases():
    with pytest.raises(ZeroDivisionError):
        parallel.map_cases(_square, [1, 7], ids=["a", "b"], skip_bad=True, progress=False)
    with pytest.raises(InputError, match="bad three"):  # skip_bad=None: a plain loop, the error as raised
        parallel.map_cases(_square, [3], skip_bad=None, progress=False)


def test_duplicate_ids_leave_the_later_rows_out():
    got = parallel.map_cases(_square, [1, 2, 4], ids=["a", "b", "a"], skip_bad=True, progress=False)
    assert got.values == [(1, 1), (2, 4)]
    assert [e.case_id for e in got.excluded] == ["a"] and "row 3 repeats row 1" in got.excluded[0].reason
    with pytest.raises(InputError, match="duplicate case id.*--skip-bad"):
        parallel.map_cases(_square, [1, 2, 4], ids=["a", "b", "a"], skip_bad=False, progress=False)


def test_scheduler_specs():
    assert parallel.make_scheduler(None, workers=3) == parallel.PoolScheduler(3)
    assert isinstance(parallel.make_scheduler("serial"), parallel.SerialScheduler)
    assert parallel.make_scheduler("threads", workers=2) == parallel.ThreadScheduler(2)
    local = parallel.make_scheduler("local:3")
    assert isinstance(local, parallel.DaskScheduler) and local.n_workers == 3 and local.address is None
    assert parallel.make_scheduler("local", workers=2).n_workers == 2
    assert parallel.make_scheduler("tcp://10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    for bad in ("local:0", "local:x", "bogus", "8"):
        with pytest.raises(InputError, match="--scheduler"):
            parallel.make_scheduler(bad)


def _imported_modules(path) -> set[str]:
    """Absolute names of the totalgen_eval modules a source file imports (at top level or inside functions)."""
    package = "totalgen_eval." + ".".join(path.relative_to(ROOT / "totalgen_eval").with_suffix("").parts)
    if path.name == "__init__.py":
        package += ".__init__"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: -node.level] if node.level else []
            found.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("totalgen_eval")}


def test_no_import_from_segment_or_parallel_up_to_metrics():
    """The old circle: metrics imports segment, and segment imported metrics' pool and progress back."""
    files = [*sorted((ROOT / "totalgen_eval" / "segment").glob("*.py")),
             *sorted((ROOT / "totalgen_eval" / "parallel").glob("*.py"))]
    for path in files:
        upward = {m for m in _imported_modules(path) if m.startswith(("totalgen_eval.metrics", "totalgen_eval.pipeline",
                                                                        "totalgen_eval.cli"))}
        assert not upward, (path.name, upward)
    assert "totalgen_eval.segment" in _imported_modules(ROOT / "totalgen_eval" / "metrics" / "cohort.py")


# --- a cohort with three bad cases -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_cohort(tmp_path_factory):
    """Six phantoms; case 1's CT is a truncated gzip, case 2's CT lies on another grid, case 3's age is "abc"."""
    root = make_cohort(tmp_path_factory.mktemp("bad") / "c", n=6, seed=9, progress=False)
    table = pd.read_csv(root / "cohort.csv", dtype=str)
    ct1 = root / table.loc[1, "ct"]
    data = ct1.read_bytes()
    ct1.write_bytes(data[: len(data) // 2])
    ct2, affine = read_volume(root / table.loc[2, "ct"])
    write_volume(ct2[:-2], affine, root / table.loc[2, "ct"])
    table.loc[3, "age"] = "abc"
    table.to_csv(root / "cohort.csv", index=False)
    return root


def _check_excluded(folder, cohort_name):
    excluded = pd.read_csv(folder / "excluded.csv")
    assert list(excluded.columns) == ["case_id", "cohort", "reason"]
    assert sorted(excluded["case_id"]) == sorted(BAD) and set(excluded["cohort"]) == {cohort_name}
    for row in excluded.itertuples():
        assert BAD[row.case_id] in row.reason, row


def test_metrics_skip_bad_gives_the_good_cases_and_names_the_bad(bad_cohort, tmp_path):
    out = tmp_path / "res" / "organ_metrics.csv"
    done = _cli("metrics", bad_cohort, "-o", out, "--skip-bad", "--no-progress", "--scheduler", "threads", "-j", "2")
    assert done.exit_code == 0, done.output
    table = pd.read_csv(out)
    assert sorted(table["case_id"].unique()) == ["phantom-0000", "phantom-0004", "phantom-0005"]
    _check_excluded(out.parent, "c")
    stopped = _cli("metrics", bad_cohort, "-o", tmp_path / "other.csv", "--no-progress")
    assert stopped.exit_code != 0
    lines = stopped.output.strip().splitlines()
    assert len(lines) == 1 and "--skip-bad" in lines[0] and "3 bad cases" in lines[0], stopped.output
    assert any(f"case {case_id}:" in lines[0] for case_id in BAD)
    assert not (tmp_path / "other.csv").exists()


def test_segment_skip_bad_writes_excluded_into_its_folder(bad_cohort, tmp_path):
    done = _cli("segment", bad_cohort, "--out", tmp_path / "seg", "--segmenter", "labels", "--skip-bad",
                "--no-progress")
    assert done.exit_code == 0, done.output
    assert "labels for 3 cases" in done.output
    _check_excluded(tmp_path / "seg", "c")
    stopped = _cli("segment", bad_cohort, "--out", tmp_path / "seg2", "--segmenter", "labels", "--no-progress")
    assert stopped.exit_code != 0 and "--skip-bad" in stopped.output


def test_compare_skip_bad_lists_the_bad_real_cases(bad_cohort, tmp_path):
    synth = make_cohort(tmp_path / "synth", n=6, seed=10, progress=False)
    out = tmp_path / "results"
    done = _cli("compare", bad_cohort, synth, "--out", out, "--organs", "liver", "--skip-bad", "--no-progress")
    assert done.exit_code == 0, done.output
    _check_excluded(out, "real")
    report = (out / "report.md").read_text(encoding="utf-8")  # the report names them too, with the reasons
    section = report.split("## Cases left out")[1].split("\n## ")[0]
    for row in pd.read_csv(out / "excluded.csv").itertuples():
        assert f"| {row.case_id} | real |" in section
    table = pd.read_csv(out / "organ_metrics.csv")
    assert sorted(table.loc[table["cohort"] == "real", "case_id"].unique()) == [
        "phantom-0000", "phantom-0004", "phantom-0005"]
    stopped = _cli("compare", bad_cohort, synth, "--out", tmp_path / "r2", "--organs", "liver", "--no-progress")
    assert stopped.exit_code != 0 and "--skip-bad" in stopped.output


@pytest.mark.filterwarnings("ignore:.*clamped to it")
def test_generate_match_skip_bad_makes_twins_of_the_good_cases(bad_cohort, tmp_path, cascade):
    from totalgen_eval.synthesis import generate_cohort

    out = generate_cohort(tmp_path / "twins", match=bad_cohort, cascade=cascade, skip_bad=True, progress=False)
    twins = pd.read_csv(out / "cohort.csv")
    assert sorted(twins["twin_of"]) == ["phantom-0000", "phantom-0004", "phantom-0005"]
    _check_excluded(out, "c")
    with pytest.raises(InputError, match="--skip-bad"):
        generate_cohort(tmp_path / "twins2", match=bad_cohort, cascade=cascade, progress=False)


def _corrupt_gzip_body(path):
    """Flip bytes inside the deflate stream but keep the trailer: the header check passes, reading fails."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(Exception):
        gzip.decompress(bytes(data))


def test_a_case_that_fails_during_the_work_is_left_out(tmp_path):
    root = make_cohort(tmp_path / "c", n=3, seed=2, progress=False)
    _corrupt_gzip_body(root / "cases" / "phantom-0001_pet.nii.gz")
    cohort = load_cohort(root)  # the cheap checks pass: the damage is only found by decompressing
    assert len(cohort) == 3
    table = metrics.organ_metrics(cohort, skip_bad=True, progress=False)
    assert sorted(table["case_id"].unique()) == ["phantom-0000", "phantom-0002"]
    (left_out,) = metrics.excluded_table(table).itertuples()
    assert left_out.case_id == "phantom-0001" and "phantom-0001_pet.nii.gz" in left_out.reason
    with pytest.raises(InputError, match="phantom-0001.*--skip-bad"):
        metrics.organ_metrics(cohort, progress=False)
    if importlib.util.find_spec("distributed") is not None:  # the same on a Dask cluster (threads: fast)
        with parallel.DaskScheduler(n_workers=2, processes=False) as dask:
            on_dask = metrics.organ_metrics(cohort, skip_bad=True, scheduler=dask, progress=False)
        pd.testing.assert_frame_equal(metrics.excluded_table(on_dask), metrics.excluded_table(table))


# --- Dask ----------------------------------------------------------------------------------------------------

def test_dask_local_cluster_table_equals_the_serial_one(tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install '.[dask]')")
    cohort = load_cohort(make_cohort(tmp_path / "c", n=4, seed=6, progress=False))
    serial = metrics.organ_metrics(cohort, scheduler="serial", progress=False)
    on_dask = metrics.organ_metrics(cohort, scheduler="local:2", cache_dir=tmp_path / "cache", progress=False)
    pd.testing.assert_frame_equal(on_dask, serial, check_exact=True)
    assert on_dask.attrs["n_computed"] == 4
    with parallel.DaskScheduler(n_workers=2, processes=False) as threads:  # the same cache, read back
        again = metrics.organ_metrics(cohort, scheduler=threads, cache_dir=tmp_path / "cache", progress=False)
    assert again.attrs["n_computed"] == 0
    pd.testing.assert_frame_equal(again, serial, check_exact=False, rtol=1e-12)


# --- caches --------------------------------------------------------------------------------------------------

def _uncompressed_case(tmp_path):
    """A phantom case whose PET is an uncompressed .nii: its content can change at the same byte size."""
    from totalgen_eval.cohort import Case

    root = make_cohort(tmp_path / "c", n=1, seed=1, progress=False)
    case = load_cohort(root)[0]
    pet, affine = read_volume(case.pet)
    pet_nii = write_volume(pet, affine, tmp_path / "pet.nii")
    return Case(case.case_id, case.age, case.sex, case.height_m, case.weight_kg, case.ct, pet_nii, case.labels)


def test_changed_input_with_the_same_size_and_mtime_is_never_served_stale(tmp_path):
    case = _uncompressed_case(tmp_path)
    cache = tmp_path / "cache"
    first = metrics.organ_metrics([case], cache_dir=cache, progress=False)
    before = os.stat(case.pet)
    pet, affine = read_volume(case.pet)
    write_volume(pet * 1.5, affine, case.pet)
    os.utime(case.pet, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(case.pet)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = metrics.organ_metrics([case], cache_dir=cache, progress=False)
    assert again.attrs["n_computed"] == 1
    np.testing.assert_allclose(again["suv_mean"], 1.5 * first["suv_mean"], rtol=1e-5)


def test_cache_files_have_readable_names_and_corrupt_ones_are_recomputed(tmp_path):
    case = _uncompressed_case(tmp_path)
    cache = tmp_path / "cache"
    first = metrics.organ_metrics([case], cache_dir=cache, progress=False)
    (cached,) = (cache / "metrics").glob("*.csv")
    assert cached.name.startswith(f"{case.case_id}_") and len(cached.stem) == len(case.case_id) + 9
    for damage in (b"", b"case_id,organ\n\x00\x01garbage,,,\n"):
        cached.write_bytes(damage)
        with pytest.warns(RuntimeWarning, match="unusable cache file.*recomputed"):
            again = metrics.organ_metrics([case], cache_dir=cache, progress=False)
        assert again.attrs["n_computed"] == 1
        pd.testing.assert_frame_equal(again, first, check_exact=False, rtol=1e-12)


def test_metrics_cache_lives_under_the_output_folder(tmp_path, monkeypatch):
    root = make_cohort(tmp_path / "c", n=1, seed=1, progress=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    metrics.write_metrics(load_cohort(root), tmp_path / "res" / "organ_metrics.csv", segmenter="labels",
                          progress=False)
    assert list(work.iterdir()) == []
    assert len(list((tmp_path / "res" / "organ_metrics-cache" / "metrics").glob("phantom-0000_*.csv"))) == 1


@pytest.mark.parametrize("given, expected", [(None, None), ("1", "1"), ("x", None), ("0", None)])
def test_pool_workers_share_the_cores_among_their_threads(monkeypatch, given, expected):
    """Each of two pool workers runs cpu_count // 2 threads (at least 1) unless OMP_NUM_THREADS says otherwise."""
    import os

    if given is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", given)
    share = str(max(1, (os.cpu_count() or 1) // 2))
    seen = dict(parallel.PoolScheduler(2).run(os.getenv, ["OMP_NUM_THREADS"] * 2))
    assert seen == {0: expected or share, 1: expected or share}


def test_threads_allowed_reads_the_workers_share(monkeypatch):
    import os

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert parallel.threads_allowed() == 3
    for bad in ("0", "x", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        assert parallel.threads_allowed() == (os.cpu_count() or 1)
