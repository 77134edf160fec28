"""Segmentation backends: the three label formats (written with TotalSegmentator's own writers), the
TotalSegmentator call (weights check, argument mapping), the MONAI model backend and the label cache."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from totalgen_eval import metrics, segment
from totalgen_eval.cohort.case import Case
from totalgen_eval.errors import InputError
from totalgen_eval.organs import CLASSES
from totalgen_eval.segment import model as seg_model
from totalgen_eval.segment import totalseg
from totalgen_eval.volumes import Grid, read_volume, write_volume

from conftest import toy_affine, toy_volumes


def _case(tmp_path, labels_path, name="c0", shape=(24, 20, 22)):
    pet, ct, _ = toy_volumes(shape=shape)
    aff = toy_affine()
    write_volume(pet, aff, tmp_path / f"{name}_pet.nii.gz")
    write_volume(ct.astype(np.int16), aff, tmp_path / f"{name}_ct.nii.gz")
    return Case(name, 50.0, "F", 1.7, 70.0, tmp_path / f"{name}_ct.nii.gz", tmp_path / f"{name}_pet.nii.gz",
                labels_path)


def test_three_label_formats_give_the_same_table(tmp_path):
    nifti_ext_header = pytest.importorskip("totalsegmentator.nifti_ext_header", reason="needs totalsegmentator")
    from totalsegmentator.map_to_binary import class_map
    from totalsegmentator.nnunet import save_segmentation_nifti

    _, _, labels = toy_volumes(shape=(24, 20, 22))
    aff = toy_affine()
    ours = write_volume(labels, aff, tmp_path / "ours.nii.gz")
    # TotalSegmentator multilabel file: its writer with a list of names -> running ids 1..n (not "total" ids)
    present = [int(c) for c in np.unique(labels) if c]
    names = [class_map["total"][c] for c in present]
    running = np.zeros_like(labels)
    for i, c in enumerate(present, start=1):
        running[labels == c] = i
    ml_path = tmp_path / "ts_ml.nii.gz"
    nifti_ext_header.save_multilabel_nifti(nib.Nifti1Image(running, aff), ml_path, names)
    # TotalSegmentator folder of per-class masks: its own per-class writer, from a multilabel s01.nii.gz
    tmp_dir = tmp_path / "ts_tmp"
    tmp_dir.mkdir()
    nib.save(nib.Nifti1Image(labels, aff), tmp_dir / "s01.nii.gz")
    folder = tmp_path / "ts_masks"
    folder.mkdir()
    for item in class_map["total"].items():
        save_segmentation_nifti(item, tmp_dir=tmp_dir, file_out=folder, nora_tag="None", task_name="total",
                                quiet=True)
    tables = []
    for path in (ours, ml_path, folder):
        case = _case(tmp_path, path)
        tables.append(metrics.compute_case(case, "labels"))
        got, _ = segment.case_labels(case, "labels")
        keep = np.isin(labels, list(CLASSES))  # the mask folder holds every class; stomach (7) included
        np.testing.assert_array_equal(got[keep], labels[keep])
    assert tables[0]["n_voxels"].sum() > 0
    pd.testing.assert_frame_equal(tables[0], tables[1])
    pd.testing.assert_frame_equal(tables[0], tables[2])
    # cached_labels: our format is used in place; the TS formats are converted once into the cache
    assert segment.cached_labels(_case(tmp_path, ours), "labels", tmp_path / "cache") == ours
    conv = segment.cached_labels(_case(tmp_path, ml_path), "labels", tmp_path / "cache")
    np.testing.assert_array_equal(read_volume(conv, dtype=None)[0], labels)


def test_label_table_names_that_are_not_total_classes(tmp_path):
    nifti_ext_header = pytest.importorskip("totalsegmentator.nifti_ext_header", reason="needs totalsegmentator")
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 1, 1] = 1
    path = tmp_path / "x.nii.gz"
    nifti_ext_header.save_multilabel_nifti(nib.Nifti1Image(labels, np.eye(4)), path, ["not_an_organ"])
    with pytest.raises(InputError, match="none of the label names"):
        segment.case_labels(_case(tmp_path, path), "labels")


def test_case_without_labels_says_what_to_use(tmp_path):
    with pytest.raises(InputError, match="model:bundled"):
        segment.case_labels(_case(tmp_path, None), "labels")


def test_unknown_segmenter_spec():
    with pytest.raises(InputError, match="unknown segmenter"):
        segment.make_segmenter("nnunet")


def test_no_weights_message(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    found, searched = segment.totalsegmentator_weights()
    assert not found
    assert [p.name for p in searched] == [totalseg.task_folder(297), totalseg.task_folder(298)]
    assert all(str(p).startswith(str(tmp_path / "w")) for p in searched)
    case = _case(tmp_path, None)
    with pytest.raises(InputError) as info:
        segment.cached_labels(case, "totalsegmentator", tmp_path / "cache")
    msg = str(info.value)
    assert "\n" not in msg and "totalseg_download_weights -t total_fast" in msg and str(searched[0]) in msg
    assert not (tmp_path / "w").exists() and not (tmp_path / "home").exists()  # nothing was downloaded
    with pytest.raises(InputError, match="model:bundled"):
        segment.default_segmenter([case])
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH")
    assert segment.totalsegmentator_weights()[1][0].parent == tmp_path / "home" / "nnunet" / "results"


def _fake_weight_folders(root, tasks=(297, 298)):
    for t in tasks:
        fold = root / totalseg.task_folder(t) / "trainer__plans__3d_fullres" / "fold_0"
        fold.mkdir(parents=True)
        (fold / "checkpoint_final.pth").write_bytes(b"")


def test_argument_mapping_to_totalsegmentator(tmp_path, monkeypatch):
    python_api = pytest.importorskip("totalsegmentator.python_api", reason="needs totalsegmentator")
    from totalsegmentator.nifti_ext_header import save_multilabel_nifti

    monkeypatch.setenv("TOTALSEG_WEIGHTS_PATH", str(tmp_path / "w"))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    _fake_weight_folders(tmp_path / "w")
    assert segment.totalsegmentator_weights()[0]
    calls = []

    def capture(**kwargs):  # records our arguments; writes an empty label map so the run can finish
        calls.append(kwargs)
        img = nib.load(kwargs["input"])
        save_multilabel_nifti(nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine), kwargs["output"],
                              {k: v for k, v in CLASSES.items()})

    monkeypatch.setattr(python_api, "totalsegmentator", capture)
    case = _case(tmp_path, None)
    out = segment.cached_labels(case, "totalsegmentator", tmp_path / "cache", device="cuda:1")
    assert out.is_file() and out.parent == tmp_path / "cache" / "labels"
    (kw,) = calls
    assert kw["input"] == case.ct and kw["ml"] is True and kw["fast"] is True and kw["statistics"] is False
    assert kw["device"] == "gpu:1" and kw["task"] == "total" and kw["quiet"] is True
    assert sorted(kw["roi_subset"]) == sorted(CLASSES.values())
    config = json.loads((tmp_path / "home" / "config.json").read_text())
    assert config["send_usage_stats"] is False
    again = segment.cached_labels(case, "totalsegmentator", tmp_path / "cache", device="cuda:1")
    assert again == out and len(calls) == 1  # reused from the cache
    assert totalseg.ts_device("cpu") == "cpu" and totalseg.ts_device("cuda") == "gpu"


def test_real_totalsegmentator_where_weights_exist(tmp_path):
    pytest.importorskip("totalsegmentator.python_api", reason="needs totalsegmentator")
    if not segment.totalsegmentator_weights()[0]:
        pytest.skip("TotalSegmentator weights are not installed here (totalseg_download_weights -t total_fast)")
    case = _case(tmp_path, None, shape=(64, 64, 64))
    out = segment.cached_labels(case, "totalsegmentator", tmp_path / "cache")
    labels, _ = read_volume(out, dtype=None)
    assert labels.shape == (64, 64, 64) and labels.max() <= 117


def _tiny_model(tmp_path, voxel_mm=(4.0, 4.0, 4.0)):
    import torch
    torch.manual_seed(0)
    cfg = seg_model.ModelConfig(network="UNet", network_args=dict(spatial_dims=3, in_channels=1, out_channels=3,
                                channels=(4, 8), strides=(2,), num_res_units=0),
                                class_ids=(0, 5, 90), voxel_mm=voxel_mm, roi_size=(16, 16, 16))
    net = seg_model.build_network(cfg)
    seg_model.save_model(net, cfg, tmp_path / "tiny")
    return net, cfg


def test_model_checkpoint_round_trip_without_pickle(tmp_path):
    import torch
    net, cfg = _tiny_model(tmp_path)
    assert (tmp_path / "tiny.safetensors").read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle
    loaded, cfg2 = seg_model.load_model(tmp_path / "tiny.json")
    from totalgen_eval.provenance import to_jsonable
    assert to_jsonable(cfg2) == to_jsonable(cfg)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.equal(net.eval()(x), loaded(x))
    with pytest.raises(InputError, match="monai.networks.nets"):
        seg_model.build_network(seg_model.ModelConfig("os.system", {}, (0,)))


def test_model_backend_resamples_to_its_voxel_and_back(tmp_path):
    import torch
    net, cfg = _tiny_model(tmp_path)
    ct = np.random.default_rng(0).normal(0, 100, size=(24, 20, 28)).astype(np.float32)
    ct_grid = Grid(ct.shape, toy_affine((2.0, 2.0, 2.0)))
    labels = seg_model.predict_labels(net.eval(), cfg, ct, ct_grid)
    assert labels.shape == ct.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 5, 90}
    # the same through the network by hand at 4 mm, then nearest back to 2 mm
    work = seg_model.model_grid(ct_grid, cfg.voxel_mm)
    assert work.shape == (12, 10, 14)
    lo, hi = work.bounds_mm()
    assert np.allclose(lo, ct_grid.bounds_mm()[0] + 1.0)  # voxel centres 1 mm further in
    from totalgen_eval.volumes import resample_to_grid
    from monai.inferers import sliding_window_inference
    x = torch.from_numpy(seg_model.normalise_ct(resample_to_grid(ct, ct_grid, work, 1, -1024.0), cfg.ct_window))
    with torch.no_grad():
        ch = sliding_window_inference(x[None, None], cfg.roi_size, 1, net, overlap=cfg.overlap,
                                      mode="gaussian")[0].argmax(0).numpy()
    expected = resample_to_grid(np.asarray(cfg.class_ids, np.uint8)[ch], work, ct_grid, 0)
    np.testing.assert_array_equal(labels, expected)


def test_model_backend_through_the_cache(tmp_path):
    _tiny_model(tmp_path)
    case = _case(tmp_path, None)
    spec = f"model:{tmp_path / 'tiny.json'}"
    out = segment.cached_labels(case, spec, tmp_path / "cache")
    labels, aff = read_volume(out, dtype=None)
    assert labels.shape == case.grid().shape and np.allclose(aff, case.grid().affine)
    mtime = out.stat().st_mtime_ns
    assert segment.cached_labels(case, spec, tmp_path / "cache") == out and out.stat().st_mtime_ns == mtime
    table = metrics.organ_metrics([case], segmenter=spec, cache_dir=tmp_path / "cache", progress=False)
    assert len(table) == 9


def test_default_segmenter_prefers_labels(tmp_path):
    _, _, labels = toy_volumes(shape=(24, 20, 22))
    path = write_volume(labels, toy_affine(), tmp_path / "l.nii.gz")
    assert segment.default_segmenter([_case(tmp_path, path)]) == "labels"


def test_bundled_segmenter_on_fresh_phantoms(tmp_path):
    """The bundled phantom segmenter on phantoms of a seed it never saw (goals of TRAINING.md, with a margin)."""
    if not seg_model.bundled_model_path().is_file():
        pytest.skip("the bundled phantom segmenter's weights are not in totalgen_eval/weights/")
    from totalgen_eval import phantom
    from totalgen_eval.cohort import load_cohort
    from totalgen_eval.segmenter_training import evaluate

    cohort = load_cohort(phantom.make_cohort(tmp_path / "ph", n=3, seed=4242, progress=False))
    per_case = evaluate(seg_model.bundled_model_path(), cohort)
    res = per_case.groupby("organ").mean(numeric_only=True)  # per organ, over the cases
    large = ["brain", "lungs", "heart", "liver", "spleen", "kidneys", "muscle"]
    assert res.loc[large, "dice"].min() >= 0.85, res
    assert res.loc[["aorta", "urinary_bladder"], "dice"].min() >= 0.75, res
    assert res["suv_mean_diff_pct"].abs().max() < 5.0, res
    assert per_case["dice"].min() >= 0.6, per_case
    assert segment.make_segmenter("model:bundled").path == seg_model.bundled_model_path()


def test_label_cache_follows_the_input_not_its_size_and_mtime(tmp_path):
    """A CT rewritten in place with its old size and mtime put back gets new labels; names read <case>_<key>."""
    import os

    _tiny_model(tmp_path)
    spec = f"model:{tmp_path / 'tiny.json'}"
    case = _case(tmp_path, None)
    ct, aff = read_volume(case.ct)
    ct_nii = write_volume(ct.astype(np.float32), aff, tmp_path / "ct.nii")  # uncompressed: same size after edits
    case = Case(case.case_id, 50.0, "F", 1.7, 70.0, ct_nii, case.pet, None)
    first = segment.cached_labels(case, spec, tmp_path / "cache")
    assert first.parent == tmp_path / "cache" / "labels"
    assert first.name.startswith("c0_") and len(first.name) == len("c0_") + 8 + len(".nii.gz")
    before = os.stat(ct_nii)
    write_volume(np.full(ct.shape, -1000.0, np.float32), aff, ct_nii)  # air everywhere
    os.utime(ct_nii, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(ct_nii).st_size, os.stat(ct_nii).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = segment.cached_labels(case, spec, tmp_path / "cache")
    assert second != first and second.is_file() and first.is_file()
    assert second.name.startswith("c0_")


def test_segment_cohort_through_map_cases(tmp_path):
    _tiny_model(tmp_path)
    spec = f"model:{tmp_path / 'tiny.json'}"
    cases = [_case(tmp_path, None, name=f"c{i}") for i in range(2)]
    done = segment.segment_cohort(cases, spec, cache_dir=tmp_path / "seg", progress=False)
    assert list(done.labels) == ["c0", "c1"] and all(p.is_file() for p in done.labels.values())
    assert done.excluded.empty and (tmp_path / "seg" / "excluded.csv").is_file()
    for cid, path in done.labels.items():
        assert path == segment.cached_labels(next(c for c in cases if c.case_id == cid), spec, tmp_path / "seg")


def test_a_damaged_cached_label_file_is_segmented_again(tmp_path):
    _tiny_model(tmp_path)
    spec = f"model:{tmp_path / 'tiny.json'}"
    case = _case(tmp_path, None)
    labels, _ = segment.case_labels(case, spec, tmp_path / "cache")
    cached = segment.cached_labels(case, spec, tmp_path / "cache")
    cached.write_bytes(cached.read_bytes()[:40])  # cut short
    with pytest.warns(RuntimeWarning, match="unusable cache file.*recomputed"):
        again, _ = segment.case_labels(case, spec, tmp_path / "cache")
    np.testing.assert_array_equal(again, labels)
    assert read_volume(cached, dtype=None)[0].shape == labels.shape
