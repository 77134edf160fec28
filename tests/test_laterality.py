"""Anatomy in patient coordinates (NIfTI RAS+: x grows toward the patient's right).

Centroids are computed here in world coordinates (voxel indices through the file's affine): the liver, every
``*_right`` class and the right lung lobes at x > 0; the spleen, every ``*_left`` class and the heart at x < 0.
Checked on phantom files, on the bundled segmenter's labels of a phantom and on volumes from the bundled
generator; the x-mirror equivalence behind the bundled weights (``mirror_x``) is checked against the unflipped
networks.
"""
from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from generator import CheckpointError, load_cascade, random_cascade, tiny_lowres, tiny_sr
from totalgen_eval.cohort import load_cohort
from totalgen_eval.metrics import case_metrics
from totalgen_eval.organs import CLASSES, organ
from totalgen_eval.phantom import make_cohort
from totalgen_eval.segment.model import bundled_model_path, load_model, predict_labels
from totalgen_eval.volumes import Grid

from conftest import require_bundled_generator

RIGHT_CLASSES = {cid for cid, name in CLASSES.items() if name.endswith("_right")} | {5}  # + liver
LEFT_CLASSES = {cid for cid, name in CLASSES.items() if name.endswith("_left")} | {1, 51}  # + spleen, heart
MIDLINE_CLASSES = {90, 21}  # brain, urinary bladder


pytestmark = pytest.mark.usefixtures("one_thread")


def world_x_map(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World x (mm) of every voxel centre, through the affine (no assumption on its axes)."""
    i, j, k = np.indices(shape, sparse=True)
    return i * affine[0, 0] + j * affine[0, 1] + k * affine[0, 2] + affine[0, 3]


def world_x(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """World x (mm) of the voxels in ``mask``."""
    return world_x_map(mask.shape, affine)[mask]


def centroids_x(labels: np.ndarray, affine: np.ndarray) -> dict[int, float]:
    return {int(c): float(world_x(affine, labels == c).mean()) for c in np.unique(labels) if c}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    return make_cohort(tmp_path_factory.mktemp("lat") / "ph", n=3, seed=31, progress=False)


@pytest.fixture(scope="module")
def bundled_segmenter():
    if not bundled_model_path().is_file():
        pytest.skip("the bundled phantom segmenter's weights are not in totalgen_eval/weights/")
    return load_model(bundled_model_path())


def test_phantom_files_are_ras_with_the_liver_on_the_right(phantoms):
    table = pd.read_csv(phantoms / "cohort.csv")
    assert RIGHT_CLASSES >= {2, 5, 12, 13, 14, 81, 89} and LEFT_CLASSES >= {1, 3, 10, 11, 51, 80, 88}
    for rel in table["labels"]:
        image = nib.load(phantoms / rel)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        labels = np.asanyarray(image.dataobj)
        x = centroids_x(labels, image.affine)
        assert set(x) == RIGHT_CLASSES | LEFT_CLASSES | MIDLINE_CLASSES | {52}
        for cid in RIGHT_CLASSES:
            assert x[cid] > 0, CLASSES[cid]
        for cid in LEFT_CLASSES:
            assert x[cid] < 0, CLASSES[cid]
        assert -40 < x[51] < 0, "heart just left of the midline"
        assert all(abs(x[cid]) < 8 for cid in MIDLINE_CLASSES)
        liver = world_x(image.affine, labels == 5)
        assert np.mean(liver > 0) > 0.8, "most of the liver on the patient's right"


def _predict(segmenter, case):
    net, cfg = segmenter
    ct, affine = case.read_ct()
    pet, _ = case.read_pet()
    grid = Grid(tuple(ct.shape), affine)
    return predict_labels(net, cfg, ct, grid, grid, pet=pet, pet_grid=grid), ct, pet, affine


def test_bundled_segmenter_labels_the_right_side(phantoms, bundled_segmenter):
    """Unilateral organs by centroid sign; the bilateral ones (labelled with one representative id each) by
    agreement with the truth's named sides: predicted organ voxels at x > 0 against the ``*_right`` classes."""
    for case in load_cohort(phantoms):
        pred, _, _, affine = _predict(bundled_segmenter, case)
        truth, _ = case.read_labels()
        x = centroids_x(pred, affine)
        assert x[5] > 0 and x[1] < 0 and x[51] < 0, x
        right = world_x_map(pred.shape, affine) > 0
        for name, right_ids in (("lungs", (12, 13, 14)), ("kidneys", (2,)), ("muscle", (81, 89))):
            got = np.isin(pred, organ(name).classes) & right
            want = np.isin(truth, right_ids)
            dice = 2 * np.sum(got & want) / (got.sum() + want.sum())
            assert dice > 0.85, (case.case_id, name, dice)


def test_segmenter_mirror_is_the_unflipped_network_on_the_mirrored_case(phantoms, bundled_segmenter):
    """predict(mirror_x)(case) == flip(predict(plain)(flip(case))): the old phantoms were this case flipped."""
    net, cfg = bundled_segmenter
    assert cfg.mirror_x, "the bundled weights were trained on x-mirrored phantoms"
    case = load_cohort(phantoms)[0]
    pred, ct, pet, affine = _predict(bundled_segmenter, case)
    grid = Grid(tuple(ct.shape), affine)
    plain = predict_labels(net, dataclasses.replace(cfg, mirror_x=False), ct[::-1].copy(), grid, grid,
                           pet=pet[::-1].copy(), pet_grid=grid)
    np.testing.assert_array_equal(pred, plain[::-1])
    truth, _ = case.read_labels()
    unmirrored = predict_labels(net, dataclasses.replace(cfg, mirror_x=False), ct, grid, grid, pet=pet, pet_grid=grid)
    dice = lambda a, b: 2 * np.sum(a & b) / (a.sum() + b.sum())  # noqa: E731
    assert dice(pred == 1, truth == 1) > 0.9 > 0.5 > dice(unmirrored == 1, truth == 1), "spleen"


def test_generator_mirror_flips_the_output_and_nothing_else(tmp_path):
    lo, sr = tiny_lowres(), tiny_sr()
    plain = random_cascade(lo, sr, seed=4)
    mirrored = random_cascade(dataclasses.replace(lo, mirror_x=True), dataclasses.replace(sr, mirror_x=True), seed=4)
    demo = {"age": [40.0, 70.0], "sex": ["F", "M"], "height_m": [1.6, 1.85], "weight_kg": [60.0, 90.0]}
    for (ct, pet, aff), (ct_m, pet_m, aff_m) in zip(plain.generate(demo, seed=2), mirrored.generate(demo, seed=2)):
        np.testing.assert_array_equal(ct_m, ct[::-1])
        np.testing.assert_array_equal(pet_m, pet[::-1])
        np.testing.assert_array_equal(aff_m, aff)
        assert not np.array_equal(ct, ct[::-1])
    assert mirrored.checkpoint_id != plain.checkpoint_id
    with pytest.raises(CheckpointError, match="mirror_x"):
        random_cascade(dataclasses.replace(lo, mirror_x="yes"), sr)


def stage2_first_input(cascade, demo: dict) -> torch.Tensor:
    """The input stage 2's network receives at its first call (noisy residual, upsampled low-res, positions)."""
    seen = []
    handle = cascade.sr.net.register_forward_pre_hook(lambda _module, args: seen.append(args[0].clone()))
    try:
        cascade.generate(demo, seed=2)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("lowres_mirrored", [True, False])
def test_stages_in_opposite_frames_see_stage_1_flipped(lowres_mirrored):
    """A stage 1 trained in one x frame feeds a stage 2 trained in the other: stage 2 gets stage 1's output
    reversed along x (same weights and noise as the cascade of two plain stages)."""
    lo, sr = tiny_lowres(), tiny_sr()
    demo = {"age": [40.0], "sex": ["F"], "height_m": [1.6], "weight_kg": [60.0]}
    plain_in = stage2_first_input(random_cascade(lo, sr, seed=4), demo)
    mixed = random_cascade(dataclasses.replace(lo, mirror_x=lowres_mirrored),
                           dataclasses.replace(sr, mirror_x=not lowres_mirrored), seed=4)
    mixed_in = stage2_first_input(mixed, demo)
    c = lo.network.out_channels
    torch.testing.assert_close(mixed_in[:, :c], plain_in[:, :c], rtol=0, atol=0)  # the noisy residual
    torch.testing.assert_close(mixed_in[:, c:2 * c], plain_in[:, c:2 * c].flip(2), rtol=0, atol=1e-6)  # upsampled
    torch.testing.assert_close(mixed_in[:, 2 * c:], plain_in[:, 2 * c:], rtol=0, atol=0)  # positions
    assert not torch.equal(plain_in[:, c:2 * c], plain_in[:, c:2 * c].flip(2))
    assert mixed.checkpoint_id != random_cascade(lo, sr, seed=4).checkpoint_id


@pytest.fixture(scope="module")
def generated():
    """Two volumes of the bundled cascade (RAS+)."""
    require_bundled_generator()
    cascade = load_cascade()
    demo = pd.DataFrame({"age": [35.0, 68.0], "sex": ["F", "M"], "height_m": [1.62, 1.80], "weight_kg": [58.0, 88.0]})
    return cascade, cascade.generate(demo, seed=11)


@pytest.mark.slow  # its fixture generates with the bundled cascade: ~20-50 s
def test_generated_volumes_have_the_liver_on_the_right(generated, bundled_segmenter):
    cascade, volumes = generated
    assert not cascade.mirror_x and not cascade.frames_differ, "both bundled stages are trained on the RAS+ phantom"
    net, cfg = bundled_segmenter
    for ct, pet, affine in volumes:
        assert nib.aff2axcodes(affine) == ("R", "A", "S")
        grid = Grid(tuple(ct.shape), affine)
        labels = predict_labels(net, cfg, ct, grid, grid, pet=pet, pet_grid=grid)
        x = centroids_x(labels, affine)
        assert x[5] > 30 and x[1] < -30 and -60 < x[51] < 0, x
        assert np.mean(world_x(affine, labels == 5) > 0) > 0.8


@pytest.mark.slow  # the same generated volumes
def test_generated_organ_values_differ_only_by_the_mirror(generated, bundled_segmenter):
    """Fidelity unchanged: before the fix the cascade wrote these volumes unflipped (``flip_x`` is its last
    step, checked above) and the segmenter ran without the mirror; both give the same organ table."""
    _, volumes = generated
    net, cfg = bundled_segmenter
    plain_cfg = dataclasses.replace(cfg, mirror_x=False)
    for ct, pet, affine in volumes:
        ct_old, pet_old = ct[::-1].copy(), pet[::-1].copy()
        grid = Grid(tuple(ct.shape), affine)
        now = case_metrics(pet, ct, predict_labels(net, cfg, ct, grid, grid, pet=pet, pet_grid=grid), grid)
        old_labels = predict_labels(net, plain_cfg, ct_old, grid, grid, pet=pet_old, pet_grid=grid)
        before = case_metrics(pet_old, ct_old, old_labels, grid)
        cols = ["volume_ml", "suv_mean", "suv_max", "hu_mean"]
        assert (now["volume_ml"] > 0).all()
        np.testing.assert_allclose(now.set_index("organ")[cols].to_numpy(float),
                                   before.set_index("organ")[cols].to_numpy(float), rtol=1e-5)
