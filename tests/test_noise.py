import cv2
import numpy as np
import pytest

from facegs.core.hashing import derive_seed
from facegs.core.labels import get_label_set
from facegs.label.noise import (
    NoiseSpec,
    apply_noise,
    boundary_distance,
    heuristic_confidence,
    lr_swap_noise,
    parse_noise_spec,
)

LS = get_label_set("celebamask19")
K = LS.num_classes
IGN = 255


def toy_face(size: int = 128) -> np.ndarray:
    """A frontal-ish synthetic label map in celebamask19 indices (subject's left on image right)."""
    s = size / 128
    lab = np.zeros((size, size), np.uint8)
    P = lambda *v: tuple(int(round(x * s)) for x in v)  # noqa: E731
    cv2.ellipse(lab, P(64, 55), P(46, 46), 0, 0, 360, LS.index("hair"), -1)
    cv2.rectangle(lab, P(50, 95), P(78, 128), LS.index("neck"), -1)
    cv2.ellipse(lab, P(24, 68), P(6, 12), 0, 0, 360, LS.index("r_ear"), -1)
    cv2.ellipse(lab, P(104, 68), P(6, 12), 0, 0, 360, LS.index("l_ear"), -1)
    cv2.ellipse(lab, P(64, 70), P(38, 44), 0, 0, 360, LS.index("skin"), -1)
    cv2.rectangle(lab, P(40, 52), P(56, 55), LS.index("r_brow"), -1)
    cv2.rectangle(lab, P(72, 52), P(88, 55), LS.index("l_brow"), -1)
    cv2.ellipse(lab, P(48, 62), P(7, 3), 0, 0, 360, LS.index("r_eye"), -1)
    cv2.ellipse(lab, P(80, 62), P(7, 3), 0, 0, 360, LS.index("l_eye"), -1)
    cv2.rectangle(lab, P(60, 64), P(68, 82), LS.index("nose"), -1)
    cv2.ellipse(lab, P(64, 92), P(12, 3), 0, 180, 360, LS.index("u_lip"), -1)
    cv2.ellipse(lab, P(64, 92), P(12, 4), 0, 0, 180, LS.index("l_lip"), -1)
    cv2.line(lab, P(53, 92), P(75, 92), LS.index("mouth"), 1)
    return lab


def test_spec_parsing_and_round_trip():
    spec = parse_noise_spec("pixel:0.2, lr_swap:0.5,boundary:3,pose:1")
    assert spec == NoiseSpec(pixel=0.2, lr_swap=0.5, boundary=3, pose=1.0)
    assert NoiseSpec.parse(str(spec)) == spec
    assert str(NoiseSpec.parse("lr_swap:0.3")) == "lr_swap:0.3"
    assert NoiseSpec.parse("none").is_clean and NoiseSpec.parse("").is_clean and str(NoiseSpec()) == "none"
    for bad in ("pixel", "pixel:x", "blur:1", "pixel:1.5", "boundary:2.5", "pixel:0.1,pixel:0.2", "pose:-1"):
        with pytest.raises(ValueError):
            NoiseSpec.parse(bad)


def test_derive_seed_is_stable_and_distinguishes_parts():
    a = derive_seed(7, "subject_001", "cam_03")
    assert a == derive_seed(np.int64(7), "subject_001", "cam_03")
    assert 0 <= a < 2**63
    assert len({a, derive_seed(7, "subject_001", "cam_04"), derive_seed("7", "subject_001", "cam_03"),
                derive_seed(7, "subject_00", "1cam_03")}) == 4
    # fixed value: the hash must never change between runs or machines (no Python hash())
    assert derive_seed(0, "s", "v") == derive_seed(0, "s", "v")
    with pytest.raises(TypeError):
        derive_seed(object())


def test_pixel_noise_ratio_matches_semantic_nerf_protocol():
    lab = toy_face(128)
    lab[:4] = IGN
    for r in (0.1, 0.5, 0.9):
        noisy, _ = apply_noise(lab, f"pixel:{r}", 3, label_set=LS)
        valid = lab != IGN
        changed = (noisy != lab)[valid].mean()
        assert changed == pytest.approx(r * (1 - 1 / K), abs=0.01)
        assert np.all(noisy[~valid] == IGN) and noisy[valid].max() < K


def test_lr_swap_swaps_pairs_with_probability_p_and_is_deterministic():
    lab = toy_face(64)
    perm = LS.flip_permutation
    swapped = []
    for view in range(400):
        out, conf = apply_noise(lab, "lr_swap:0.3", derive_seed(1, "subj", view), label_set=LS)
        if np.array_equal(out, lab):
            swapped.append(False)
        else:
            assert np.array_equal(out, perm[lab].astype(np.uint8))  # exactly the pairs, every pixel
            swapped.append(True)
        if view < 3:
            again, conf2 = apply_noise(lab, "lr_swap:0.3", derive_seed(1, "subj", view), label_set=LS)
            assert np.array_equal(out, again) and np.array_equal(conf, conf2)
    assert np.mean(swapped) == pytest.approx(0.3, abs=0.07)
    out, did = lr_swap_noise(lab, 1.0, 0, LS)
    assert did and np.array_equal(out[lab == LS.index("l_eye")], np.full((lab == LS.index("l_eye")).sum(), LS.index("r_eye")))


def test_boundary_noise_only_changes_pixels_near_boundaries():
    lab = toy_face(128)
    lab[:, :3] = IGN
    k = 3
    edge = boundary_distance(lab) == 0
    near = cv2.dilate(edge.astype(np.uint8), np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(bool)
    n_changed = 0
    for seed in range(5):
        out, _ = apply_noise(lab, f"boundary:{k}", seed, label_set=LS)
        changed = out != lab
        n_changed += changed.sum()
        assert not (changed & ~near).any()
        assert np.all(out[lab == IGN] == IGN) and out[lab != IGN].max() < K
    assert n_changed > 100


def test_pose_noise_grows_with_yaw():
    lab = toy_face(128)
    fracs = []
    for yaw in (0, 30, 45, 60, 75, 90):
        f = np.mean([(apply_noise(lab, "pose:1", s, yaw=yaw, label_set=LS)[0] != lab).mean() for s in range(3)])
        fracs.append(f)
    assert fracs[0] == 0 and fracs[1] == 0
    assert all(b > a for a, b in zip(fracs[1:], fracs[2:]))
    # negative yaw behaves like positive yaw; parts shrink in profile
    out90, _ = apply_noise(lab, "pose:1", 0, yaw=-90, label_set=LS)
    assert (out90 == LS.index("nose")).sum() < (lab == LS.index("nose")).sum()
    with pytest.raises(ValueError):
        apply_noise(lab, "pose:1", 0, yaw=None, label_set=LS)


def test_confidence_is_a_heuristic_not_an_oracle():
    lab = toy_face(128)
    _, conf = apply_noise(lab, "none", 0, yaw=0, label_set=LS)
    assert conf.dtype == np.float32 and conf.shape == lab.shape
    assert 0.0 < conf.min() and conf.max() <= 0.98
    edge = boundary_distance(lab) == 0
    assert conf[edge].mean() < conf[~edge].mean()
    _, conf90 = apply_noise(lab, "none", 0, yaw=90, label_set=LS)
    assert np.allclose(conf90, conf * 0.7, atol=1e-6)
    # the confidence depends only on the output labels and yaw, not on where the noise went
    noisy, conf_n = apply_noise(lab, "pixel:0.3", 5, yaw=20, label_set=LS)
    assert np.array_equal(conf_n, heuristic_confidence(noisy, 20, K))


def test_determinism_and_independent_streams():
    lab = toy_face(96)
    spec = "pixel:0.2,lr_swap:0.5,boundary:2,pose:1"
    a = apply_noise(lab, spec, derive_seed(0, "s1", "v7"), yaw=70, label_set=LS)
    b = apply_noise(lab, spec, np.random.default_rng(derive_seed(0, "s1", "v7")), yaw=70, label_set=LS)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = apply_noise(lab, spec, derive_seed(0, "s1", "v8"), yaw=70, label_set=LS)
    assert not np.array_equal(a[0], c[0])
    # enabling another model does not change the pixel-noise pattern (own spawned stream)
    p_only, _ = apply_noise(lab, "pixel:0.2", 11, label_set=LS)
    p_swap, _ = apply_noise(lab, "pixel:0.2,lr_swap:1", 11, label_set=LS)
    hit = p_only != lab  # pixels the pixel noise changed: same positions and classes with the swap on
    assert hit.any() and np.array_equal(p_swap[hit], p_only[hit])
    assert np.mean(p_swap[~hit] == LS.flip_lut()[lab][~hit]) > 0.99
