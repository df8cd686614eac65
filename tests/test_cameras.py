import math

import numpy as np
import pytest

from facegs.core import cameras as C


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


@pytest.mark.parametrize("seed", range(5))
def test_pose_round_trip_under_arbitrary_head_pose(seed):
    rng = np.random.default_rng(seed)
    T = random_pose(rng)
    for _ in range(10):
        yaw, pitch, roll = rng.uniform(-170, 170), rng.uniform(-80, 80), rng.uniform(-170, 170)
        w2c = C.head_pose_to_w2c(yaw, pitch, roll, 2.5, T)
        assert C.rotation_problem(w2c[:3, :3]) is None
        got = C.w2c_to_head_pose(w2c, T)
        assert np.allclose(got, (yaw, pitch, roll), atol=1e-6)
        # the camera sits at distance 2.5 from the head origin, on the yaw/pitch direction
        c_head = (np.linalg.inv(T) @ np.append(C.camera_center(w2c), 1.0))[:3]
        assert np.allclose(c_head, 2.5 * C.direction_from_yaw_pitch(yaw, pitch), atol=1e-9)


def test_conventions_left_right_up_down():
    K = C.intrinsics_from_fov(200, 100, 40)
    assert K[0, 2] == 100 and K[1, 2] == 50
    w2c = C.head_pose_to_w2c(0, 0, 0, 2.0)

    def project(p):
        q = K @ (w2c[:3, :3] @ p + w2c[:3, 3])
        return q[:2] / q[2]

    # frontal view: the subject's left (+x in the head frame) appears at larger u, up at smaller v
    assert project(np.array([0.1, 0, 0]))[0] > 100
    assert project(np.array([0, 0.1, 0]))[1] < 50
    # yaw +90: the camera is on the subject's left (+x)
    assert C.camera_center(C.head_pose_to_w2c(90, 0, 0, 2.0))[0] == pytest.approx(2.0)
    # pitch > 0: camera above
    assert C.camera_center(C.head_pose_to_w2c(0, 30, 0, 2.0))[1] > 0


def test_pixel_rays_pass_through_pixel_centres():
    K = C.intrinsics_from_fov(8, 6, 60)
    w2c = C.look_at(np.array([0.3, -0.2, 3.0]), np.zeros(3))
    o, d = C.pixel_rays(K, w2c, 6, 8)
    p = o + 2.0 * d[2, 5]
    q = K @ (w2c[:3, :3] @ p + w2c[:3, 3])
    assert np.allclose(q[:2] / q[2], (5.5, 2.5))


def test_rotation_problems_are_named():
    assert C.rotation_problem(np.eye(3)) is None
    assert "non-finite" in C.rotation_problem(np.full((3, 3), np.nan))
    assert "orthonormal" in C.rotation_problem(np.eye(3) * 1.1)
    assert "reflection" in C.rotation_problem(np.diag([1.0, 1.0, -1.0]))
    assert C.rotation_angle_deg(C.rot_z(30), np.eye(3)) == pytest.approx(30)
    assert math.isclose(C.rotation_angle_deg(np.eye(3), np.eye(3)), 0.0, abs_tol=1e-6)
