import gzip

import numpy as np
import pytest

from totalgen_eval import volumes
from totalgen_eval.errors import InputError


def _affine(spacing, origin=(0.0, 0.0, 0.0)):
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = origin
    return a


def test_round_trip_with_and_without_isal(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 7, 8)).astype(np.float32)
    aff = _affine((2.0, 2.0, 3.0), (-5.0, 4.0, 10.0))
    path = volumes.write_volume(data, aff, tmp_path / "x.nii.gz")
    with gzip.open(path) as fh:  # really gzip
        assert len(fh.read()) > data.nbytes
    a, aff_a = volumes.read_volume(path)
    monkeypatch.setattr(volumes, "_gzip", None)
    b, aff_b = volumes.read_volume(path)
    np.testing.assert_array_equal(a, data)
    np.testing.assert_array_equal(b, data)
    np.testing.assert_allclose(aff_a, aff)
    np.testing.assert_allclose(aff_b, aff)
    assert not [p for p in tmp_path.iterdir() if p.name != "x.nii.gz"], "no temporary files left"


def test_label_dtype_kept(tmp_path):
    labels = np.zeros((4, 4, 4), np.uint8)
    labels[1, 2, 3] = 90
    volumes.write_volume(labels, np.eye(4), tmp_path / "l.nii.gz")
    got, _ = volumes.read_volume(tmp_path / "l.nii.gz", dtype=None)
    assert got.dtype == np.uint8 and got[1, 2, 3] == 90


def test_truncated_file_is_one_line_error(tmp_path):
    volumes.write_volume(np.ones((20, 20, 20), np.float32), np.eye(4), tmp_path / "x.nii.gz")
    raw = (tmp_path / "x.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as err:
        volumes.read_volume(tmp_path / "cut.nii.gz")
    assert "cut.nii.gz" in str(err.value) and "\n" not in str(err.value)


def test_grid_properties():
    g = volumes.Grid((10, 10, 10), _affine((2.0, 2.0, 3.0)))
    assert g.voxel_ml == pytest.approx(0.012)
    assert g.spacing_mm == (2.0, 2.0, 3.0)
    lo, hi = g.bounds_mm()
    np.testing.assert_allclose(lo, [0, 0, 0])
    np.testing.assert_allclose(hi, [18, 18, 27])


def test_resample_nearest_onto_finer_grid():
    # a 2 mm grid resampled onto a 1 mm grid with the same corner: each source voxel covers the target
    # voxels whose centres are nearest to it
    src = volumes.Grid((3, 1, 1), _affine((2.0, 1.0, 1.0)))
    dst = volumes.Grid((5, 1, 1), _affine((1.0, 1.0, 1.0)))
    labels = np.array([1, 2, 3], np.uint8).reshape(3, 1, 1)
    out = volumes.resample_to_grid(labels, src, dst, order=0)
    # target x = 0,1,2,3,4 mm -> source index 0, 0.5, 1, 1.5, 2 -> nearest (round half to even is not
    # guaranteed; check the unambiguous ones)
    assert out.dtype == np.uint8
    assert out[0, 0, 0] == 1 and out[2, 0, 0] == 2 and out[4, 0, 0] == 3


def test_resample_nearest_keeps_the_border_cells():
    # coarse 4 mm labels onto a 1 mm grid spanning the same cells: the outer half voxel keeps its label
    src = volumes.Grid((2, 1, 1), _affine((4.0, 1.0, 1.0)))  # centres 0 and 4 mm: cells -2..2, 2..6
    dst = volumes.Grid((8, 1, 1), _affine((1.0, 1.0, 1.0), (-1.5, 0.0, 0.0)))  # centres -1.5 .. 5.5 mm
    out = volumes.resample_to_grid(np.array([7, 9], np.uint8).reshape(2, 1, 1), src, dst, order=0)
    assert out[:, 0, 0].tolist() == [7, 7, 7, 7, 9, 9, 9, 9]


def test_resample_linear_matches_analytic_ramp():
    src = volumes.Grid((10, 1, 1), _affine((2.0, 1.0, 1.0)))
    dst = volumes.Grid((6, 1, 1), _affine((3.0, 1.0, 1.0), (1.0, 0.0, 0.0)))  # 1..16 mm, inside 0..18
    ramp = (np.arange(10, dtype=np.float32) * 2.0 * 5.0).reshape(10, 1, 1)  # value = 5 x (position in mm)
    out = volumes.resample_to_grid(ramp, src, dst, order=1)
    np.testing.assert_allclose(out[:, 0, 0], 5.0 * (1.0 + 3.0 * np.arange(6)), rtol=1e-5)


def test_resample_without_overlap_raises():
    a = volumes.Grid((4, 4, 4), _affine((1.0, 1.0, 1.0)))
    b = volumes.Grid((4, 4, 4), _affine((1.0, 1.0, 1.0), (100.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="do not overlap"):
        volumes.resample_to_grid(np.zeros((4, 4, 4)), a, b, order=0)
