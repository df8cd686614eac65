import numpy as np
import pytest

from facegs.core.cameras import head_pose_to_w2c
from facegs.core.labels import get_label_set
from facegs.render.cleanup import CleanupConfig, clean_labels, projected_left_axis, to_probabilities

LS = get_label_set("celebamask19")
I = {n: i for i, n in enumerate(LS.classes)}  # noqa: E741
H = W = 128


def _ellipse(cy, cx, ry, rx):
    ii, jj = np.mgrid[0:H, 0:W]
    return ((ii + 0.5 - cy) / ry) ** 2 + ((jj + 0.5 - cx) / rx) ** 2 <= 1.0


def face_labels():
    """A frontal cartoon face: the subject's left parts at larger x (image right)."""
    lab = np.zeros((H, W), np.uint8)
    lab[_ellipse(64, 64, 52, 40)] = I["skin"]
    lab[_ellipse(44, 84, 3, 9)] = I["l_brow"]
    lab[_ellipse(44, 44, 3, 9)] = I["r_brow"]
    lab[_ellipse(54, 84, 5, 8)] = I["l_eye"]
    lab[_ellipse(54, 44, 5, 8)] = I["r_eye"]
    lab[_ellipse(70, 64, 10, 6)] = I["nose"]
    lips = _ellipse(92, 64, 8, 16)
    lab[lips & (np.mgrid[0:H, 0:W][0] < 92)] = I["u_lip"]
    lab[lips & (np.mgrid[0:H, 0:W][0] >= 92)] = I["l_lip"]
    lab[_ellipse(92, 64, 3, 10)] = I["mouth"]  # inner mouth, fully enclosed by the lips
    return lab


def probs_from(lab, p=0.8):
    C = LS.num_classes
    P = np.full((C, H, W), (1 - p) / (C - 1), np.float32)
    np.put_along_axis(P, lab[None].astype(np.int64), p, axis=0)
    return P


def alpha_from(lab):
    return np.where(lab > 0, 1.0, 0.0).astype(np.float32)


FRONTAL = head_pose_to_w2c(0.0, 0.0, 0.0, 1.0)  # identity head frame


def test_clean_face_is_left_alone_and_outputs_have_right_types():
    lab = face_labels()
    r = clean_labels(probs_from(lab), alpha_from(lab), w2c=FRONTAL)
    assert r.labels.shape == (H, W) and r.labels.dtype == np.uint8
    assert r.confidence.shape == (H, W) and r.confidence.dtype == np.float32
    assert r.ignore.shape == (H, W) and r.ignore.dtype == bool
    assert np.array_equal(r.labels, lab)
    assert r.report["changed_px"] == 0 and r.report["lr_actions"] == []
    assert np.allclose(r.confidence[lab > 0], 0.8) and np.allclose(r.confidence[lab == 0], 1.0)
    assert not r.ignore.any()
    assert r.labels_with_ignore().dtype == np.uint8


def test_logits_and_unnormalised_probs_give_the_same_result():
    lab = face_labels()
    P = probs_from(lab)
    a = alpha_from(lab)
    ref = clean_labels(P, a)
    assert np.array_equal(clean_labels(np.log(P) * 3.0, a).labels, ref.labels)  # logits (negative)
    assert np.array_equal(clean_labels(P * 0.5, a).labels, ref.labels)  # alpha-composited probs
    assert np.allclose(to_probabilities(P * 0.5).sum(0), 1.0)


def test_speckles_are_removed_and_take_the_surrounding_class():
    lab = face_labels()
    noisy = lab.copy()
    noisy[30:32, 60:62] = I["hair"]  # 4 px of hair in the forehead skin
    noisy[80:82, 40:42] = I["l_eye"]  # a second, tiny l_eye blob in the cheek
    noisy[100, 80] = I["cloth"]  # single pixel
    P = probs_from(noisy)
    # the second most probable class under the speckles is skin
    P[I["skin"], 30:32, 60:62] = P[I["skin"], 80:82, 40:42] = 0.15
    # the mechanism at the former defaults (8 px speckles, relabelled pixels ignored)
    r = clean_labels(P, alpha_from(lab), CleanupConfig(min_component_px=8, ignore_changed=True))
    assert np.array_equal(r.labels, lab)
    assert r.report["components_removed"] == {"hair": 1, "l_eye": 1, "cloth": 1}
    assert r.report["component_px"] == 9
    changed = noisy != lab
    assert r.ignore[changed].all() and not r.ignore[~changed].any()


def test_holes_filled_but_mouth_inside_lips_kept():
    lab = face_labels()
    noisy = lab.copy()
    noisy[25:31, 55:61] = 0  # background predicted inside the forehead, alpha is high there
    noisy[100:103, 75:78] = I["hair"]  # a 9 px hair island inside the skin (above the speckle size)
    P = probs_from(noisy)
    r = clean_labels(P, alpha_from(lab), CleanupConfig(min_component_px=4, min_component_frac=0.0))
    assert np.array_equal(r.labels, lab)
    assert (r.labels == I["mouth"]).sum() == (lab == I["mouth"]).sum() > 0
    assert r.report["holes_filled"] == 1 and r.report["hole_px"] == 36
    assert r.report["islands_filled"] == 1 and r.report["island_px"] == 9
    # a see-through hole (low alpha) is real background and stays
    a = alpha_from(lab)
    a[25:31, 55:61] = 0.0
    r2 = clean_labels(P, a, CleanupConfig(min_component_px=4, min_component_frac=0.0))
    assert (r2.labels[25:31, 55:61] == 0).all() and r2.report["holes_filled"] == 0


def test_low_alpha_becomes_background_and_silhouette_band_is_ignored():
    lab = face_labels()
    a = alpha_from(lab)
    a[:, :20] = np.where(lab[:, :20] > 0, 0.3, 0.0)  # faint left edge of the head
    a[60:70, 90:100] = 0.7  # partially covered, above the threshold
    r = clean_labels(probs_from(lab), a)
    assert (r.labels[:, :20] == 0).all()
    assert r.report["alpha_background_px"] == int((lab[:, :20] > 0).sum())
    band = (a > 0.05) & (a < 0.8)
    assert np.array_equal(r.ignore, band)  # 0.3 (background now) and 0.7 (skin) are both ignored
    assert (r.labels[60:70, 90:100] == I["skin"]).all()
    assert np.allclose(r.confidence[:, :20][lab[:, :20] > 0], 0.7)  # q_bg = 1 - alpha (+ alpha * p_bg)


def test_low_confidence_is_ignored():
    lab = face_labels()
    P = probs_from(lab)
    P[:, 64:70, 30:40] = 1.0 / LS.num_classes
    P[I["skin"], 64:70, 30:40] += 0.1  # argmax skin but max probability ~0.15
    r = clean_labels(P, alpha_from(lab))
    assert (r.labels[64:70, 30:40] == I["skin"]).all()
    assert r.ignore[64:70, 30:40].all() and r.ignore.sum() == 60


def _mirror_eyes(lab):
    m = lab.copy()
    m[lab == I["l_eye"]], m[lab == I["r_eye"]] = I["r_eye"], I["l_eye"]
    return m


def test_mirrored_eye_pair_is_swapped_in_a_frontal_view():
    lab = face_labels()
    mirrored = _mirror_eyes(lab)
    r = clean_labels(probs_from(mirrored), alpha_from(lab), world_from_head=np.eye(4), w2c=FRONTAL)
    assert np.array_equal(r.labels, lab)
    assert len(r.report["lr_actions"]) == 1 and "l_eye/r_eye mirrored" in r.report["lr_actions"][0]
    assert np.allclose(r.confidence[lab == I["l_eye"]], 0.8)  # channels swapped with the labels
    assert not r.ignore.any()  # the geometric swap is trusted (ignore_lr_changed=False)
    r_ign = clean_labels(probs_from(mirrored), alpha_from(lab), CleanupConfig(ignore_lr_changed=True), w2c=FRONTAL)
    assert r_ign.ignore.sum() == int(np.isin(lab, [I["l_eye"], I["r_eye"]]).sum())
    # a head frame turned 180 deg about the optical axis (an upside-down head seen by the same
    # frontal camera) puts the subject's left on the image left: the mirrored eyes are then correct
    T = np.diag([-1.0, -1.0, 1.0, 1.0])
    r_back = clean_labels(probs_from(mirrored), alpha_from(lab), world_from_head=T, w2c=head_pose_to_w2c(0, 0, 0, 1.0, T))
    assert np.array_equal(r_back.labels, lab)  # camera follows the head: still frontal
    r_flip = clean_labels(probs_from(mirrored), alpha_from(lab), world_from_head=T, w2c=FRONTAL)
    eyes = np.isin(lab, [I["l_eye"], I["r_eye"]])
    assert np.array_equal(r_flip.labels[eyes], mirrored[eyes])  # now correct: left alone
    assert len(r_flip.report["lr_actions"]) == 1 and "l_brow/r_brow" in r_flip.report["lr_actions"][0]


def test_rolled_camera_uses_projected_axis():
    e = projected_left_axis(head_pose_to_w2c(0, 0, 90.0, 1.0))
    assert np.allclose(e, [0.0, 1.0], atol=1e-9)  # roll 90: the subject's left is image-down


def test_hidden_side_relabelled_at_extreme_yaw():
    lab = face_labels()
    only_l = lab.copy()
    only_l[lab == I["r_eye"]] = I["skin"]  # one eye visible, labelled "left"
    w2c = head_pose_to_w2c(-80.0, 0.0, 0.0, 1.0)  # camera on the subject's right
    r = clean_labels(probs_from(only_l), alpha_from(lab), w2c=w2c)
    assert not (r.labels == I["l_eye"]).any() and (r.labels == I["r_eye"]).sum() == (only_l == I["l_eye"]).sum()
    assert any("l_eye is hidden" in a for a in r.report["lr_actions"])
    assert r.report["view_yaw"] == pytest.approx(-80.0)
    # at yaw +80 the same label is plausible and stays
    r2 = clean_labels(probs_from(only_l), alpha_from(lab), view_yaw=80.0)
    eyes = np.isin(lab, [I["l_eye"], I["r_eye"]])
    assert np.array_equal(r2.labels[eyes], only_l[eyes])
    assert r2.report["lr_actions"] == ["yaw 80.0 > 75: r_brow is hidden, relabelled as l_brow"]


def test_lone_eye_on_the_wrong_side_near_frontal():
    lab = face_labels()
    lone = lab.copy()
    lone[lab == I["l_eye"]] = I["skin"]
    lone[lab == I["r_eye"]] = I["l_eye"]  # only one eye, image left of the nose, labelled left
    r = clean_labels(probs_from(lone), alpha_from(lab), view_yaw=10.0)
    assert (r.labels[lab == I["r_eye"]] == I["r_eye"]).all()
    r_off = clean_labels(probs_from(lone), alpha_from(lab), CleanupConfig(lr_check=False), view_yaw=10.0)
    assert np.array_equal(r_off.labels, lone)


def test_no_pose_skips_left_right_check():
    lab = _mirror_eyes(face_labels())
    r = clean_labels(probs_from(lab), alpha_from(lab))
    assert np.array_equal(r.labels, lab) and r.report["lr_actions"] == ["skipped: no camera pose given"]


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        clean_labels(np.zeros((5, 4, 4), np.float32), np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError):
        CleanupConfig(input_kind="softmax")


def test_removed_speckle_on_a_boundary_takes_the_more_probable_neighbour():
    lab = np.full((H, W), I["skin"], np.uint8)
    lab[:, :64] = I["hair"]
    noisy = lab.copy()
    noisy[40:42, 63:65] = I["hat"]  # straddles the hair | skin boundary: votes split evenly
    for second in ("hair", "skin"):
        P = probs_from(noisy)
        P[I[second], 40:42, 63:65] = 0.15
        r = clean_labels(P, np.ones((H, W), np.float32), CleanupConfig(min_component_px=8))
        assert (r.labels[40:42, 63:65] == I[second]).all()
        assert r.report["components_removed"] == {"hat": 1}


def test_defaults_keep_small_parts_and_label_rather_than_ignore():
    """At 128 px an eye is a few pixels: the defaults keep a 2x2 eye, remove single-pixel speckle,
    label the relabelled speckle (not ignored) and ignore only really uncertain pixels (q < 0.3)."""
    lab = face_labels()
    small = lab.copy()
    small[:] = np.where(np.isin(lab, [I["l_eye"], I["r_eye"]]), I["skin"], lab)
    small[50:52, 40:42] = I["r_eye"]  # a 2x2 right eye
    small[50:52, 86:88] = I["l_eye"]
    noisy = small.copy()
    noisy[100, 80] = I["cloth"]  # a single-pixel speckle in the skin
    P = probs_from(noisy)
    P[I["cloth"], 100, 80], P[I["skin"], 100, 80] = 0.45, 0.4  # the runner-up under the speckle: above conf_threshold
    r = clean_labels(P, alpha_from(lab))
    assert (r.labels[50:52, 40:42] == I["r_eye"]).all() and (r.labels[50:52, 86:88] == I["l_eye"]).all()
    assert r.labels[100, 80] == I["skin"] and not r.ignore[100, 80]
    unsure = probs_from(small)
    unsure[:, 60, 60] = 0.0
    unsure[I["skin"], 60, 60], unsure[I["nose"], 60, 60], unsure[I["hair"], 60, 60] = 0.4, 0.35, 0.25
    unsure[:, 61, 61] = 0.0
    unsure[I["skin"], 61, 61], unsure[I["nose"], 61, 61], unsure[I["hair"], 61, 61] = 0.28, 0.24, 0.48
    r2 = clean_labels(unsure, alpha_from(lab))
    assert not r2.ignore[60, 60]  # 0.4 for the label: labelled
    assert r2.labels[61, 61] == I["hair"] or r2.ignore[61, 61]
    r3 = clean_labels(unsure, alpha_from(lab), CleanupConfig(ignore_margin=0.1))
    assert r3.ignore[60, 60]  # leads the runner-up by 0.05 < 0.1
