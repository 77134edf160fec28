"""cache.py: checked JSON files (digest, atomic write) and tables kept as JSON records."""
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest

from totalgen_eval import cache
from totalgen_eval.cache import frame_from_record, frame_record
from totalgen_eval.provenance import read_checked_json, write_checked_json


def test_checked_json_round_trip_keeps_nan_and_numpy_numbers(tmp_path):
    path = tmp_path / "sub" / "c.json"
    write_checked_json({"a": [1.5, float("nan")], "b": np.int64(7), "c": np.float32(0.25)}, path)
    got = read_checked_json(path)
    assert got["a"][0] == 1.5 and math.isnan(got["a"][1]) and got["b"] == 7 and got["c"] == 0.25
    head, text = path.read_text().split("\n", 1)  # the first line: the blake2b of the rest
    assert head.endswith(hashlib.blake2b(text.encode(), digest_size=16).hexdigest())
    assert [p.name for p in path.parent.iterdir()] == ["c.json"]  # no temporary file left


def test_absent_file_is_none_without_warning(tmp_path, recwarn):
    assert read_checked_json(tmp_path / "absent.json") is None
    assert not recwarn.list


@pytest.mark.parametrize("damage", ["cut", "altered", "empty", "plain_json"])
def test_a_damaged_file_is_never_trusted(tmp_path, damage):
    path = tmp_path / "c.json"
    write_checked_json({"passed": ["k1", "k2", "k3"]}, path)
    raw = path.read_bytes()
    if damage == "cut":  # a copy or write cut short: still parseable up to a point, but not whole
        path.write_bytes(raw[: len(raw) - 8])
    elif damage == "altered":
        path.write_bytes(raw.replace(b"k2", b"k9"))
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # valid JSON without the digest line
        path.write_text(json.dumps({"passed": ["k1"]}))
    with pytest.warns(RuntimeWarning, match="unusable cache file"):
        assert read_checked_json(path) is None


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    write_checked_json({"v": 1}, path)

    def killed(src, dst):
        raise KeyboardInterrupt  # the run stopped between writing the temporary file and the rename

    monkeypatch.setattr(cache.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        write_checked_json({"v": 2}, path)
    monkeypatch.undo()
    assert read_checked_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_an_unserialisable_object_writes_nothing(tmp_path):
    path = tmp_path / "c.json"
    with pytest.raises(TypeError):
        write_checked_json({"v": object()}, path)
    assert not any(tmp_path.iterdir())


def _table() -> pd.DataFrame:
    frame = pd.DataFrame({
        "case_id": pd.Series(["a", "b", "c"], dtype="str"),
        "sex": pd.Series(["F", None, "M"], dtype="str"),
        "age": [30.1, float("nan"), 0.1 + 0.2],
        "n_voxels": np.array([3, 0, 12], dtype=np.int64),
        "touches_border": [True, False, False],
    })
    frame.attrs = {"n_computed": 3, "excluded": [{"case_id": "d", "cohort": "real", "reason": "truncated"}]}
    return frame


def test_a_table_comes_back_exactly_through_a_checked_file(tmp_path):
    frame = _table()
    write_checked_json(frame_record(frame), tmp_path / "t.json")
    back = frame_from_record(read_checked_json(tmp_path / "t.json"), list(frame.columns))
    pd.testing.assert_frame_equal(back, frame, check_exact=True)
    assert back["age"].iloc[2] == 0.30000000000000004  # the float itself, not a rounded text
    assert pd.isna(back["sex"].iloc[1]) and back["n_voxels"].dtype == np.int64 and back["touches_border"].dtype == bool
    assert back.attrs == frame.attrs


def test_a_record_of_other_columns_or_no_record_is_refused():
    record = frame_record(_table())
    assert frame_from_record(record, ["case_id", "sex"]) is None
    assert frame_from_record({"columns": ["x"]}, ["x"]) is None
    assert frame_from_record(["not", "a", "record"], ["x"]) is None
