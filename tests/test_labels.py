import numpy as np
import pytest

from facegs.core import labels as L


def test_canonical_order_matches_bisenet():
    ls = L.get_label_set()
    assert ls.classes == (
        "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
        "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
    )
    assert ls.palette.shape == (19, 3)
    assert len({tuple(c) for c in ls.palette}) == 19  # distinguishable colours


@pytest.mark.parametrize("name", ["celebamask19", "celebamask_hq", "farl", "lapa11"])
def test_flip_permutation_is_an_involution_swapping_pairs(name):
    ls = L.get_label_set(name)
    perm = ls.flip_permutation
    assert np.array_equal(perm[perm], np.arange(ls.num_classes))
    for a, b in ls.flip_pairs:
        assert perm[ls.index(a)] == ls.index(b)
    assert (perm != np.arange(ls.num_classes)).sum() == 2 * len(ls.flip_pairs)


def test_official_order_round_trip_is_identity():
    for other in ("celebamask_hq", "farl"):
        fwd = L.mapping_lut("celebamask19", other)
        back = L.mapping_lut(other, "celebamask19")
        assert np.array_equal(back[fwd[:19]], np.arange(19))
    # spot checks from the reference tables
    lut = L.mapping_lut("celebamask_hq", "celebamask19")
    canon = L.get_label_set()
    assert lut[2] == canon.index("nose") and lut[13] == canon.index("hair") and lut[18] == canon.index("cloth")


def test_lapa_mapping_sends_missing_classes_where_documented():
    lut = L.mapping_lut("celebamask19", "lapa11")
    canon, lapa = L.get_label_set(), L.get_label_set("lapa11")
    assert lut[canon.index("l_ear")] == lapa.index("skin")
    assert lut[canon.index("cloth")] == lapa.index("background")
    assert lut[canon.index("u_lip")] == lapa.index("u_lip")
    assert lut[19] == L.IGNORE_INDEX and lut[255] == L.IGNORE_INDEX
    back = L.mapping_lut("lapa11", "celebamask19")
    assert back[lapa.index("mouth")] == canon.index("mouth")


def test_viewer_convention_swaps_pairs(tmp_path, monkeypatch):
    viewer = L.LabelSet(
        name="viewer19", version=1, classes=L.get_label_set().classes, palette=L.get_label_set().palette,
        flip_pairs=L.get_label_set().flip_pairs, left_convention="viewer",
    )
    lut = L.mapping_lut(viewer, "celebamask19")
    canon = L.get_label_set()
    assert lut[canon.index("l_eye")] == canon.index("r_eye")
    assert lut[canon.index("nose")] == canon.index("nose")


def test_estimate_left_convention():
    canon = L.get_label_set()
    lab = np.zeros((20, 40), np.uint8)
    lab[5:8, 25:30] = canon.index("l_eye")  # subject's left eye appears on the image right
    lab[5:8, 10:15] = canon.index("r_eye")
    assert L.estimate_left_convention([lab], canon)[0] == "subject"
    assert L.estimate_left_convention([lab[:, ::-1]], canon)[0] == "viewer"
    with pytest.raises(ValueError):
        L.estimate_left_convention([np.zeros((4, 4), np.uint8)], canon)


def test_unknown_label_set_names_alternatives():
    with pytest.raises(KeyError, match="available"):
        L.get_label_set("nope")
