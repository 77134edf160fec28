import numpy as np
import pytest

from totalgen_eval import organs


def test_class_ids_match_installed_totalsegmentator():
    map_to_binary = pytest.importorskip("totalsegmentator.map_to_binary", reason="totalsegmentator not installed")
    total = map_to_binary.class_map["total"]
    assert len(total) == organs.N_TOTAL_CLASSES
    for class_id, name in organs.CLASSES.items():
        assert total[class_id] == name


def test_every_organ_class_is_named():
    for o in organs.ORGANS:
        assert o.classes and all(c in organs.CLASSES for c in o.classes)
    used = [c for o in organs.ORGANS for c in o.classes]
    assert len(used) == len(set(used)), "a class belongs to at most one organ"
    assert organs.ORGAN_NAMES == ("brain", "lungs", "heart", "aorta", "liver", "spleen", "kidneys",
                                  "urinary_bladder", "muscle")


def test_organ_label_map_unites_classes():
    labels = np.array([[0, 2, 3, 5], [10, 14, 90, 117]], dtype=np.uint8)
    mapped = organs.organ_label_map(labels, ("kidneys", "lungs", "brain"))
    assert mapped.tolist() == [[0, 1, 1, 0], [2, 2, 3, 0]]


def test_parse_organs():
    assert organs.parse_organs(None) == organs.ORGAN_NAMES
    assert organs.parse_organs("liver, spleen") == ("liver", "spleen")
    with pytest.raises(ValueError, match="unknown organ 'livr'"):
        organs.parse_organs("livr")
