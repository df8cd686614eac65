import numpy as np
import pytest

from facegs.core.cameras import rotation_angle_deg
from facegs.core.labels import get_label_set, mapping_lut
from facegs.headframe.calibrate import backproject_depth
from facegs.headframe.estimate import estimate_head_frame, umeyama
from facegs.headframe.frame import HeadFrameError, frame_errors
from facegs.headframe.template import TEMPLATE

LS = get_label_set("celebamask19")
I = {n: i for i, n in enumerate(LS.classes)}  # noqa: E741
LANDMARK_CLASS = {"l_eye": "l_eye", "r_eye": "r_eye", "l_brow": "l_brow", "r_brow": "r_brow", "l_ear": "l_ear",
                  "r_ear": "r_ear", "nose": "nose", "mouth": "u_lip"}
BLOB_SIGMA = {"l_ear": (0.004, 0.015, 0.01), "r_ear": (0.004, 0.015, 0.01), "mouth": (0.012, 0.006, 0.004),
              "l_brow": (0.012, 0.003, 0.003), "r_brow": (0.012, 0.003, 0.003)}


def random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def synthetic_cloud(rng, ears=True, n_skin=6000, n_blob=300):
    """Labelled points of a cartoon head in the head frame: a skin/hair ellipsoid and part blobs."""
    d = rng.normal(size=(n_skin, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = [d * np.array([0.075, 0.11, 0.095])]
    labels = [np.where(pts[0][:, 1] > 0.06, I["hair"], I["skin"])]
    for name, cls in LANDMARK_CLASS.items():
        if not ears and name.endswith("ear"):
            continue
        sigma = np.array(BLOB_SIGMA.get(name, (0.006, 0.004, 0.003)))
        pts.append(np.array(TEMPLATE[name]) + rng.normal(size=(n_blob, 3)) * sigma)
        labels.append(np.full(n_blob, I[cls]))
    return np.concatenate(pts), np.concatenate(labels)


def pose(rng, scale=1.0):
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = random_rotation(rng), rng.uniform(-1, 1, 3)
    return T, scale


def to_world(pts_head, T, scale):
    return (pts_head * scale) @ T[:3, :3].T + T[:3, 3]


def one_hot(labels, C=19):
    p = np.zeros((labels.size, C), np.float32)
    p[np.arange(labels.size), labels] = 1
    return p


def randomise(labels, frac, rng):
    lab = labels.copy()
    m = rng.uniform(size=lab.size) < frac
    lab[m] = rng.integers(0, 19, m.sum())
    return lab


def test_umeyama_recovers_a_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(6, 3))
    R = random_rotation(rng)
    dst = 2.5 * src @ R.T + np.array([1.0, -2.0, 3.0])
    s, R2, t = umeyama(src, dst, np.ones(6))
    assert s == pytest.approx(2.5) and np.allclose(R2, R) and np.allclose(t, [1, -2, 3])
    with pytest.raises(HeadFrameError):
        umeyama(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0.0]]), np.zeros((3, 3)), np.ones(3))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_numpy_cloud_frame_recovered(seed, noise):
    rng = np.random.default_rng(seed)
    pts, lab = synthetic_cloud(rng)
    T, s = pose(rng, scale=rng.uniform(0.8, 1.2))
    lab = randomise(lab, noise, rng)
    hf = estimate_head_frame(to_world(pts, T, s), one_hot(lab))
    rot, org = frame_errors(hf.world_from_head, T)
    assert rot < 1.5 and org < 0.005
    assert hf.diagnostics["scale"] == pytest.approx(s, rel=0.03)
    assert hf.diagnostics["mirrored"] is False and hf.diagnostics["handedness"] > 0
    assert hf.diagnostics["origin_cue"] == "ears"
    assert hf.world_from_head.shape == (4, 4) and np.allclose(hf.world_from_head[3], [0, 0, 0, 1])


def test_missing_ears_fall_back_to_the_face():
    rng = np.random.default_rng(5)
    pts, lab = synthetic_cloud(rng, ears=False)
    T, s = pose(rng)
    hf = estimate_head_frame(to_world(pts, T, s), one_hot(randomise(lab, 0.25, rng)))
    rot, org = frame_errors(hf.world_from_head, T)
    assert rot < 2.0 and org < 0.008
    assert set(hf.diagnostics["missing"]) >= {"l_ear", "r_ear"} and hf.diagnostics["origin_cue"] == "face"


@pytest.mark.parametrize("ears", [True, False])
def test_mirrored_labelling_is_detected_and_the_physical_frame_returned(ears):
    rng = np.random.default_rng(6)
    pts, lab = synthetic_cloud(rng, ears=ears)
    T, s = pose(rng)
    flipped = LS.flip_lut()[lab]  # every l_* <-> r_*
    hf = estimate_head_frame(to_world(pts, T, s), one_hot(flipped))
    assert hf.diagnostics["mirrored"] is True and hf.diagnostics["handedness"] < 0
    assert frame_errors(hf.world_from_head, T)[0] < 1.5


def test_weights_and_other_label_sets():
    rng = np.random.default_rng(7)
    pts, lab = synthetic_cloud(rng)
    T, s = pose(rng)
    world = to_world(pts, T, s)
    # a cluster of bogus "l_eye" points far away with zero weight is ignored
    bogus = world[:400] + 0.3
    w = np.concatenate([np.ones(len(world)), np.zeros(400)])
    hf = estimate_head_frame(np.concatenate([world, bogus]), one_hot(np.concatenate([lab, np.full(400, I["l_eye"])])), w)
    assert frame_errors(hf.world_from_head, T)[0] < 1.5
    # the same points with probabilities in the FaRL class order
    farl = get_label_set("farl")
    to_farl = mapping_lut("celebamask19", "farl")
    hf2 = estimate_head_frame(world, one_hot(to_farl[lab], farl.num_classes), label_set="farl")
    assert np.allclose(hf2.world_from_head, estimate_head_frame(world, one_hot(lab)).world_from_head)


def test_too_few_landmarks_raise():
    rng = np.random.default_rng(8)
    pts, lab = synthetic_cloud(rng)
    keep = np.isin(lab, [I["skin"], I["hair"], I["nose"], I["u_lip"]])
    with pytest.raises(HeadFrameError, match="at least 3"):
        estimate_head_frame(pts[keep], one_hot(lab[keep]))


def test_backproject_depth_inverts_projection():
    K = np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
    w2c = np.eye(4)
    w2c[:3, :3] = random_rotation(np.random.default_rng(1))
    w2c[:3, 3] = [0.1, 0.2, 1.0]
    depth = np.zeros((48, 64), np.float32)
    depth[10:20, 30:40] = 1.5
    p, (ii, jj) = backproject_depth(depth, K, w2c, stride=2)
    assert len(p) == 25 and (ii % 2 == 0).all()
    x = p @ w2c[:3, :3].T + w2c[:3, 3]
    uv = (x @ K.T)[:, :2] / x[:, 2:]
    assert np.allclose(x[:, 2], 1.5) and np.allclose(uv, np.stack([jj + 0.5, ii + 0.5], 1))


# ----------------------------------------------------------------------------------------------
# on the synthetic generator (ground-truth labels and depth of rendered views)
# ----------------------------------------------------------------------------------------------



def _rot_about(axis, deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(deg)
    Kx = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * Kx + (1 - np.cos(a)) * Kx @ Kx


# (generator seed, pose seed): long hair and a hat hiding the ears (origin from the face alone);
# buzz cut with glasses hiding the eyes
SYNTH_SUBJECTS = [(6, 0), (105, 1)]


@pytest.fixture(scope="module")
def synth_subjects(tmp_path_factory):
    gen = pytest.importorskip("facegs.synth.generate")
    from facegs.synth import rigs
    from facegs.synth.params import sample_head_params

    out = tmp_path_factory.mktemp("synth")
    rig = rigs.custom([-90, -45, 0, 45, 90, -45, 0, 45, 0], [0] * 5 + [30, 30, 30, -25], 0.0, 1.0, 64, 64)
    subjects = []
    for seed, pose_seed in SYNTH_SUBJECTS:
        rng = np.random.default_rng(pose_seed)
        T = np.eye(4)  # a head turned and tilted by up to ~20 deg, still facing the rig
        T[:3, :3] = _rot_about([0, 1, 0], rng.uniform(-20, 20)) @ _rot_about([1, 0, 0], rng.uniform(-15, 15)) \
            @ _rot_about([0, 0, 1], rng.uniform(-15, 15))
        T[:3, 3] = rng.uniform(-0.02, 0.02, 3)
        params = sample_head_params(seed).with_overrides(world_from_head=tuple(map(tuple, T)))
        m = gen.generate_subject(out, f"s{seed}", seed, rig=rig, res=64, background="plain", params=params,
                                 write_masks=False)
        subjects.append(m)
    return subjects


def _regauge(points, T, rng):
    """Express points and the true head pose in another, arbitrary world frame."""
    G = np.eye(4)
    G[:3, :3], G[:3, 3] = random_rotation(rng), rng.uniform(-2, 2, 3)
    return points @ G[:3, :3].T + G[:3, 3], G @ T


@pytest.mark.slow
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_synthetic_subjects_frame_within_3_degrees(synth_subjects, noise):
    from facegs.headframe.calibrate import labelled_points_from_views

    rng = np.random.default_rng(11)
    for m in synth_subjects:
        pts, probs = labelled_points_from_views(m, "gt_labels", stride=1)
        assert pts.shape[0] == probs.shape[0] > 1000 and probs.shape[1] == 19
        lab = randomise(np.argmax(probs, 1), noise, rng)
        world, T = _regauge(pts, m.world_from_head, rng)
        hf = estimate_head_frame(world, one_hot(lab))
        rot, org = frame_errors(hf.world_from_head, T)
        print(f"{m.subject_id} noise {noise}: rotation error {rot:.2f} deg, origin error {org * 1000:.1f} mm, "
              f"used {hf.diagnostics['used']}")
        assert rot < 3.0 and org < 0.01
        assert hf.diagnostics["mirrored"] is False
        assert rotation_angle_deg(hf.world_from_head[:3, :3], T[:3, :3]) == pytest.approx(rot)


@pytest.mark.slow
def test_synthetic_subject_with_mirrored_labels(synth_subjects):
    from facegs.headframe.calibrate import labelled_points_from_views

    m = synth_subjects[0]
    pts, probs = labelled_points_from_views(m, "gt_labels", stride=1)
    hf = estimate_head_frame(pts, probs[:, LS.flip_permutation])  # every l_* <-> r_*
    assert hf.diagnostics["mirrored"] is True
    assert frame_errors(hf.world_from_head, m.world_from_head)[0] < 3.0


def test_head_frame_from_cameras_is_the_rig_prior():
    """Cameras of the facescape rig around the rig centre: origin at the centre, forward towards the
    cameras' mean position, up = image up, +x = the subject's left (a yaw +90 camera's side)."""
    from facegs.core.cameras import head_pose_to_w2c
    from facegs.headframe.frame import HeadFrameError
    from facegs.headframe.priors import head_frame_from_cameras
    from facegs.synth.rigs import RIG_CENTER, get_rig

    views = get_rig("facescape", 64, 64)
    hf = head_frame_from_cameras(np.stack([w2c for _, _, w2c in views]))
    M = hf.world_from_head
    assert np.allclose(M[:3, :3] @ M[:3, :3].T, np.eye(3), atol=1e-9) and np.linalg.det(M[:3, :3]) > 0
    assert np.linalg.norm(M[:3, 3] - RIG_CENTER) < 0.02
    # the rig's yaw +90 camera sits on the frame's +x side, the frontal one on +z
    left = head_pose_to_w2c(90.0, 0.0, 0.0, 1.0, target_head=RIG_CENTER)
    c_left = -left[:3, :3].T @ left[:3, 3]
    assert (np.linalg.inv(M) @ np.append(c_left, 1.0))[0] > 0.9
    front = head_pose_to_w2c(0.0, 0.0, 0.0, 1.0, target_head=RIG_CENTER)
    c_front = -front[:3, :3].T @ front[:3, 3]
    assert (np.linalg.inv(M) @ np.append(c_front, 1.0))[2] > 0.9
    ring = [head_pose_to_w2c(y, 0.0, 0.0, 1.0, target_head=RIG_CENTER) for y in range(0, 360, 45)]
    with pytest.raises(HeadFrameError):
        head_frame_from_cameras(np.stack(ring))
