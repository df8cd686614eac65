import numpy as np
import pytest

from facegs.core import cameras as C
from facegs.core.manifest import SubjectManifest, View
from facegs.render.poses import cameras_for_poses, match_capture_intrinsics, sample_poses, yaw_pitch_grid


def random_pose(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                  [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                  [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, rng.normal(size=3)
    return T


def test_grid_covers_every_combination():
    yaws, pitches = [-90, -45, 0, 45, 90], [-30, 0, 30]
    g = yaw_pitch_grid(yaws, pitches)
    assert g.shape == (15, 3) and g.dtype == np.float64
    assert {(a, b) for a, b, _ in g} == {(a, b) for a in yaws for b in pitches}
    assert np.all(g[:, 2] == 0)
    assert tuple(g[1]) == (-90, 0, 0)  # yaw-major order


@pytest.mark.parametrize("dist", ["uniform", "extreme-weighted"])
def test_sampled_poses_in_range_and_deterministic(dist):
    p = sample_poses(2000, 7, yaw_range=(-80, 60), pitch_range=(-30, 20), roll_jitter_deg=5, distribution=dist)
    assert p.shape == (2000, 3)
    assert p[:, 0].min() >= -80 and p[:, 0].max() <= 60
    assert p[:, 1].min() >= -30 and p[:, 1].max() <= 20
    assert np.abs(p[:, 2]).max() <= 5
    assert np.array_equal(p, sample_poses(2000, np.random.default_rng(7), (-80, 60), (-30, 20), 5, dist))
    assert not np.array_equal(p, sample_poses(2000, 8, (-80, 60), (-30, 20), 5, dist))
    # both ends of the range are reached
    assert p[:, 0].min() < -70 and p[:, 0].max() > 50


def test_extreme_weighted_prefers_large_angles():
    u = sample_poses(20000, 1, distribution="uniform")
    e = sample_poses(20000, 1, distribution="extreme-weighted")
    frac = lambda p: np.mean(np.abs(p[:, 0]) > 60)  # noqa: E731
    assert abs(frac(u) - 1 / 3) < 0.02
    # density 1 + 3 (a/90)^2: P(|a| > 60) = (30 + (90^3 - 60^3)/90^2) / (90 + 90) = 0.519
    assert abs(frac(e) - 0.519) < 0.02


def test_bad_arguments():
    with pytest.raises(ValueError):
        sample_poses(3, 0, distribution="gaussian")
    with pytest.raises(ValueError):
        sample_poses(3, 0, yaw_range=(10, -10))
    with pytest.raises(ValueError):
        cameras_for_poses([[0, 0, 0]], None, -1.0, (64, 64, 50.0))


@pytest.mark.parametrize("seed", range(3))
def test_cameras_round_trip_and_look_at_head_origin(seed):
    rng = np.random.default_rng(seed)
    T = random_pose(rng)
    poses = sample_poses(20, rng, roll_jitter_deg=10)
    cams = cameras_for_poses(poses, T, 1.3, (320, 240, 400.0))
    assert len(cams) == 20
    origin = np.append(T[:3, 3], 1.0)
    for (yaw, pitch, roll), (w2c, K) in zip(poses, cams):
        assert w2c.shape == (4, 4) and K.shape == (3, 3)
        assert C.rotation_problem(w2c[:3, :3]) is None
        assert np.allclose(C.w2c_to_head_pose(w2c, T), (yaw, pitch, roll), atol=1e-6)
        x = (w2c @ origin)[:3]
        assert x[2] == pytest.approx(1.3)  # head origin straight ahead at the distance
        uv = (K @ x)[:2] / x[2]
        assert np.allclose(uv, (160.0, 120.0), atol=1e-6)  # ... and at the image centre


def test_cameras_with_shared_K_and_two_column_poses():
    K = C.intrinsics_from_fov(100, 80, 30)
    cams = cameras_for_poses(np.array([[90.0, 0.0], [0.0, 0.0]]), None, 2.0, K)
    assert np.array_equal(cams[0][1], K)
    # yaw +90: the camera sits on the subject's left (+x of the head frame)
    assert np.allclose(C.camera_center(cams[0][0]), [2.0, 0.0, 0.0])
    assert cameras_for_poses(np.zeros((0, 3)), None, 1.0, K) == []


def _manifest(T, dists, focals, size=(640, 480)):
    views = []
    for i, (d, f) in enumerate(zip(dists, focals)):
        w2c = C.head_pose_to_w2c(-60 + 30 * i, 10.0, 0.0, d, T)
        K = np.array([[f, 0, size[0] / 2], [0, f, size[1] / 2], [0, 0, 1.0]])
        views.append(View(f"v{i}", f"v{i}.png", size[0], size[1], K, w2c))
    return SubjectManifest("s", "celebamask19", tuple(views), world_from_head=T)


def test_match_capture_intrinsics():
    T = random_pose(np.random.default_rng(3))
    m = _manifest(T, [1.0, 1.2, 1.1, 5.0, 0.9], [800, 900, 1000, 1100, 1200])
    d, f, w, h = match_capture_intrinsics(m)
    assert (d, f, w, h) == (pytest.approx(1.1), pytest.approx(1000), 640, 480)
    # output 320x320: the 640x480 capture is fitted inside it (scale min(0.5, 0.667) = 0.5)
    d2, f2, w2, h2 = match_capture_intrinsics(m, 320, 320)
    assert (d2, f2, w2, h2) == (pytest.approx(1.1), pytest.approx(500), 320, 320)
    # an explicit head frame overrides the manifest's
    T2 = T.copy()
    T2[:3, 3] += T[:3, :3] @ np.array([0.0, 0.0, 0.1])
    assert match_capture_intrinsics(m, world_from_head=T2)[0] < 1.1
    with pytest.raises(ValueError, match="world_from_head"):
        match_capture_intrinsics(SubjectManifest("s", "celebamask19", m.views))
