"""Ingestion against the upstream formats: fixtures written from each format's own reading code, and
known 3D points projected both ways (the upstream camera model vs the ingested K / world-to-camera).

The upstream facts (read with the search tool from nerfstudio's ``nerfstudio_dataparser.py`` and
``camera_utils.py``, nersemble-data's ``color_correction.py``, nersemble-benchmark's
``benchmark_data.py``, NeRSemble v1's ``multi_view_data.py`` / ``nersemble_dataset.py`` /
``nersemble_dataparser.py``, the FaceScape toolkit; summarised in
``/work/shared/reference/upstream-formats.md``) are restated at each fixture. The projection code
here is written from those facts, independently of facegs' loaders.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from fixtures_io import GL_FLIP, ring_cameras

from facegs.core.cameras import head_pose_to_w2c
from facegs.core.errors import InputError
from facegs.core.imageio import read_mask, read_rgb, write_rgb
from facegs.ingest import ingest

W, H = 160, 120
# known 3D points near the origin, far enough apart that their dots never overlap in any view
POINTS = np.array([[x, y, 0.1 * (x - y)] for x in (-0.45, 0.0, 0.45) for y in (-0.3, 0.0, 0.3)])


def project(K: np.ndarray, w2c: np.ndarray, X: np.ndarray) -> np.ndarray:
    """facegs pinhole projection, pixel centres at +0.5: [N, 3] world -> [N, 2] continuous (u, v)."""
    xc = (w2c[:3, :3] @ X.T).T + w2c[:3, 3]
    return np.column_stack([K[0, 0] * xc[:, 0] / xc[:, 2] + K[0, 2], K[1, 1] * xc[:, 1] / xc[:, 2] + K[1, 2]])


def blobs(uv: np.ndarray, w: int = W, h: int = H, sigma: float = 1.6) -> np.ndarray:
    """An [h, w, 3] uint8 image with a Gaussian dot centred at each continuous (u, v) (+0.5 centres)."""
    jj, ii = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    img = np.zeros((h, w), np.float64)
    for u, v in uv:
        img += np.exp(-((jj - u) ** 2 + (ii - v) ** 2) / (2 * sigma**2))
    return np.repeat(np.clip(img * 250, 0, 255).round().astype(np.uint8)[..., None], 3, axis=2)


def centroids(img: np.ndarray, uv_guess: np.ndarray, r: int = 5) -> np.ndarray:
    """Intensity centroids (continuous, +0.5 centres) of the dots near each guess."""
    g = img[..., 0].astype(np.float64)
    out = []
    for u, v in uv_guess:
        j0, i0 = int(u), int(v)
        sl = g[max(i0 - r, 0):i0 + r + 1, max(j0 - r, 0):j0 + r + 1]
        jj, ii = np.meshgrid(np.arange(max(j0 - r, 0), max(j0 - r, 0) + sl.shape[1]) + 0.5,
                             np.arange(max(i0 - r, 0), max(i0 - r, 0) + sl.shape[0]) + 0.5)
        out.append([(sl * jj).sum() / sl.sum(), (sl * ii).sum() / sl.sum()])
    return np.array(out)


def cams(n: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """(K, world-to-camera) of n cameras looking at the origin (pixel centres at +0.5)."""
    out = []
    for i in range(n):
        K = np.array([[150.0 + 4 * i, 0, W / 2 + 1.3 - i], [0, 152.0 + 4 * i, H / 2 - 0.7 + i], [0, 0, 1]])
        out.append((K, head_pose_to_w2c(-30 + 20 * i, 6 * (-1) ** i, 0.0, distance=2.5)))
    return out


# ----------------------------------------------------------------------------------------------
# nerfstudio: upstream nerfstudio_dataparser.py / camera_utils.py
# ----------------------------------------------------------------------------------------------


def ns_project(fx: float, fy: float, cx: float, cy: float, c2w_gl: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Where nerfstudio's camera sees world points: ``Cameras.generate_rays`` casts the ray of pixel
    (i, j) through (j + 0.5, i + 0.5) with direction ((u - cx) / fx, -(v - cy) / fy, -1) in the
    OpenGL camera frame, rotated by ``camera_to_worlds``; inverted here for points."""
    xc = (np.linalg.inv(c2w_gl) @ np.column_stack([X, np.ones(len(X))]).T).T[:, :3]
    return np.column_stack([cx + fx * xc[:, 0] / -xc[:, 2], cy - fy * xc[:, 1] / -xc[:, 2]])


def ns_distort(xy: np.ndarray, d: np.ndarray) -> np.ndarray:
    """camera_utils' perspective model with distortion_params [k1, k2, k3, k4, p1, p2]: r = x^2 + y^2,
    radial d = 1 + r (k1 + r (k2 + r (k3 + r k4))); xd = x d + 2 p1 x y + p2 (r + 2 x^2), yd likewise."""
    k1, k2, k3, k4, p1, p2 = d
    x, y = xy[:, 0], xy[:, 1]
    r = x * x + y * y
    rad = 1.0 + r * (k1 + r * (k2 + r * (k3 + r * k4)))
    return np.column_stack([x * rad + 2 * p1 * x * y + p2 * (r + 2 * x * x), y * rad + 2 * p2 * x * y + p1 * (r + 2 * y * y)])


def test_nerfstudio_top_level_intrinsics_win_over_per_frame(tmp_path):
    """Upstream: ``fx_fixed = "fl_x" in meta`` -- a top-level value is used for every frame and the
    per-frame ``fl_x``/``cx``/... are then ignored. Fixture: shared intrinsics at the top level,
    different (decoy) ones in each frame; projection by nerfstudio's ray model."""
    K = np.array([[150.0, 0, 81.3], [0, 149.0, 59.2], [0, 0, 1]])
    (tmp_path / "ns").mkdir()
    frames = []
    for i, (_, w2c) in enumerate(cams()):
        c2w_gl = np.linalg.inv(w2c) @ GL_FLIP
        frames.append({"file_path": f"f{i}.png", "transform_matrix": c2w_gl.tolist(), "fl_x": 99.0, "fl_y": 98.0,
                       "cx": 70.0, "cy": 50.0})
        write_rgb(tmp_path / "ns" / f"f{i}.png", np.zeros((H, W, 3), np.uint8))
    doc = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": W, "h": H, "frames": frames}
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    m = ingest("nerfstudio", tmp_path / "ns", tmp_path / "out")
    for v, fr in zip(m.views, frames):
        want = ns_project(K[0, 0], K[1, 1], K[0, 2], K[1, 2], np.array(fr["transform_matrix"]), POINTS)
        assert np.abs(project(v.K, v.world_to_camera, POINTS) - want).max() < 1e-6
    # with no top-level intrinsics the per-frame ones are used (upstream's other branch)
    for k in ("fl_x", "fl_y", "cx", "cy"):
        del doc[k]
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    m = ingest("nerfstudio", tmp_path / "ns", tmp_path / "out2")
    np.testing.assert_allclose(m.views[0].K, [[99, 0, 70], [0, 98, 50], [0, 0, 1]])


@pytest.mark.parametrize("layout", ["distortion_params_k4", "named_keys", "per_frame_array", "fisheye"])
def test_nerfstudio_distortion_undistorts_to_the_pinhole_projection(tmp_path, layout):
    """Distortion as upstream reads it: a top-level ``distortion_params`` array [k1 k2 k3 k4 p1 p2]
    (with a non-zero k4, which OpenCV cannot express), the named keys, a per-frame array (no
    top-level distortion key), or OPENCV_FISHEYE's k1..k4. Each source image has dots where the
    upstream model puts known 3D points; after ingestion they sit at the pinhole projection of the
    ingested camera."""
    d = np.array([0.12, -0.05, 0.02, 0.03, 0.004, -0.003])  # k1 k2 k3 k4 p1 p2
    if layout == "named_keys":
        d[3] = 0.0  # named keys without k4: the cv2.undistort path
    (tmp_path / "ns").mkdir()
    frames = []
    for i, (K, w2c) in enumerate(cams(3)):
        xc = (w2c[:3, :3] @ POINTS.T).T + w2c[:3, 3]
        xy = xc[:, :2] / xc[:, 2:]
        if layout == "fisheye":  # OpenCV fisheye model on k1..k4 (what nerfstudio's FISHEYE camera uses)
            uv = cv2.fisheye.distortPoints(xy.reshape(-1, 1, 2), np.eye(3), d[:4].reshape(4, 1)).reshape(-1, 2)
        else:
            uv = ns_distort(xy, d)
        src = np.column_stack([K[0, 0] * uv[:, 0] + K[0, 2], K[1, 1] * uv[:, 1] + K[1, 2]])
        write_rgb(tmp_path / "ns" / f"f{i}.png", blobs(src))
        fr = {"file_path": f"f{i}.png", "transform_matrix": (np.linalg.inv(w2c) @ GL_FLIP).tolist(),
              "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": W, "h": H}
        if layout == "per_frame_array":
            fr["distortion_params"] = d.tolist()
        frames.append(fr)
    doc: dict = {"frames": frames, "camera_model": "OPENCV_FISHEYE" if layout == "fisheye" else "OPENCV"}
    if layout in ("distortion_params_k4", "fisheye"):
        doc["distortion_params"] = d.tolist()
    elif layout == "named_keys":
        doc.update(k1=d[0], k2=d[1], k3=d[2], p1=d[4], p2=d[5])
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    m = ingest("nerfstudio", tmp_path / "ns", tmp_path / "out")
    for v in m.views:
        want = project(v.K, v.world_to_camera, POINTS)
        got = centroids(read_rgb(m.path(v.image)), want)
        err = np.linalg.norm(got - want, axis=1)
        assert err.max() < 0.15, (layout, v.view_id, err.max())
        assert v.distortion is None


def test_nerfstudio_mask_path_becomes_the_views_mask(tmp_path):
    """Upstream: ``mask_path`` per frame (relative to the data folder), one channel, non-zero =
    foreground (``get_image_mask_tensor_from_path``), given for every frame or none. A distorted
    frame's mask is undistorted with its image: the mask's disk stays centred on its dot."""
    d = [0.1, -0.03, 0.0, 0.02, 0.0, 0.0]
    (tmp_path / "ns" / "masks").mkdir(parents=True)
    K, w2c = cams(1)[0]
    X = np.array([[0.3, 0.2, 0.0]])
    xc = w2c[:3, :3] @ X[0] + w2c[:3, 3]
    src = np.array([K[0, 0], K[1, 1]]) * ns_distort((xc[:2] / xc[2])[None], d)[0] + K[:2, 2]
    write_rgb(tmp_path / "ns" / "f0.png", blobs(src[None]))
    jj, ii = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    mask = (((jj - src[0]) ** 2 + (ii - src[1]) ** 2) < 36).astype(np.uint8) * 7  # non-zero = foreground
    cv2.imwrite(str(tmp_path / "ns" / "masks" / "f0.png"), mask)
    doc = {"fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": W, "h": H, "distortion_params": d,
           "frames": [{"file_path": "f0.png", "mask_path": "masks/f0.png",
                       "transform_matrix": (np.linalg.inv(w2c) @ GL_FLIP).tolist()}]}
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    m = ingest("nerfstudio", tmp_path / "ns", tmp_path / "out")
    v = m.views[0]
    assert v.mask == "masks/f0.png"
    fg = read_mask(m.path(v.mask))
    want = project(v.K, v.world_to_camera, X)[0]
    c = np.array([(jj * fg).sum() / fg.sum(), (ii * fg).sum() / fg.sum()])
    assert np.linalg.norm(c - want) < 0.3 and 90 < fg.sum() < 135  # a ~113 px disk, moved with the image
    # a mask for some frames only is refused, naming the frame (upstream asserts the same)
    write_rgb(tmp_path / "ns" / "f1.png", np.zeros((H, W, 3), np.uint8))
    doc["frames"].append({"file_path": "f1.png", "transform_matrix": doc["frames"][0]["transform_matrix"]})
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="every frame or none") as ei:
        ingest("nerfstudio", tmp_path / "ns", tmp_path / "out3")
    assert ei.value.field == "frames[1].mask_path"


def test_nerfstudio_unsupported_camera_model_is_refused(tmp_path):
    (tmp_path / "ns").mkdir()
    write_rgb(tmp_path / "ns" / "f0.png", np.zeros((H, W, 3), np.uint8))
    doc = {"camera_model": "EQUIRECTANGULAR", "fl_x": 100, "cx": 80, "cy": 60, "w": W, "h": H,
           "frames": [{"file_path": "f0.png", "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "ns" / "transforms.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="EQUIRECTANGULAR") as ei:
        ingest("nerfstudio", tmp_path / "ns", tmp_path / "out")
    assert ei.value.field == "camera_model" and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# NeRSemble: nersemble-data (v2), nersemble-benchmark, NeRSemble v1
# ----------------------------------------------------------------------------------------------


def dreifus_project(K: np.ndarray, w2c: np.ndarray, X: np.ndarray) -> np.ndarray:
    """NeRSemble's cameras: dreifus ``Pose`` world_2_cam (OpenCV axes) and ``Intrinsics`` K; a point
    projects to ``K @ (R X + t)`` divided by depth, and its training hands cx, cy unchanged to
    nerfstudio (rays through pixel index + 0.5): coordinates with +0.5 pixel centres."""
    xc = (w2c[:3, :3] @ X.T).T + w2c[:3, 3]
    p = (K @ xc.T).T
    return p[:, :2] / p[:, 2:]


def test_nersemble_benchmark_per_serial_intrinsics(tmp_path):
    """nersemble-benchmark's ``load_camera_calibration``: ``intrinsics`` is ``{serial: 3x3}`` (one K per
    camera), ``world_2_cam`` ``{serial: 4x4}``; images ``cam_{serial}`` per camera."""
    (tmp_path / "p" / "calibration").mkdir(parents=True)
    (tmp_path / "p" / "images").mkdir()
    cs = cams(3)
    serials = ["220700191", "221501007", "222200036"]
    doc = {"world_2_cam": {s: w2c.tolist() for s, (_, w2c) in zip(serials, cs)},
           "intrinsics": {s: K.tolist() for s, (K, _) in zip(serials, cs)}}
    (tmp_path / "p" / "calibration" / "camera_params.json").write_text(json.dumps(doc))
    for s in serials:
        write_rgb(tmp_path / "p" / "images" / f"cam_{s}.png", np.zeros((H, W, 3), np.uint8))
    m = ingest("nersemble", tmp_path / "p", tmp_path / "out")
    for s, (K, w2c) in zip(serials, cs):
        v = m.view(s)
        assert np.abs(project(v.K, v.world_to_camera, POINTS) - dreifus_project(K, w2c, POINTS)).max() < 1e-9
    m2 = ingest("nersemble", tmp_path / "p", tmp_path / "out_int", pixel_centers="integer")  # the other case
    np.testing.assert_allclose(m2.view(serials[0]).K[:2, 2], cs[0][0][:2, 2] + 0.5)
    doc["intrinsics"].pop(serials[1])
    (tmp_path / "p" / "calibration" / "camera_params.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=serials[1]) as ei:
        ingest("nersemble", tmp_path / "p", tmp_path / "out2")
    assert ei.value.field == "intrinsics"


def cheung(rgb: np.ndarray, terms: int) -> np.ndarray:
    """The Cheung et al. (2004) expansions colour-science's ``matrix_augmented_Cheung2004`` defines
    (the function nersemble-data's ``correct_color`` calls), for the term counts tested here."""
    R, G, B = rgb.T
    one = np.ones_like(R)
    table = {
        5: [R, G, B, R * G * B, one],
        10: [R, G, B, R * G, R * B, G * B, R**2, G**2, B**2, one],
        20: [R, G, B, R * G, R * B, G * B, R**2, G**2, B**2, R * G * B, R**2 * G, G**2 * B, B**2 * R, R**2 * B,
             G**2 * R, B**2 * G, R**3, G**3, B**3, one],
    }
    return np.stack(table[terms], axis=1)


def srgb_decode(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def srgb_encode(x):
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(np.maximum(x, 0), 1 / 2.4) - 0.055)


@pytest.mark.parametrize("terms", [5, 10, 20])
def test_nersemble_v2_colour_matrices_of_any_cheung_term_count(tmp_path, terms):
    """nersemble-data ``correct_color``: image / 255 -> ``colour.cctf_decoding`` (sRGB) -> expanded to
    ``CCM.shape[-1]`` Cheung 2004 terms -> ``CCM @ terms`` -> ``cctf_encoding`` -> clip(x * 255) as uint8."""
    cams_ = ring_cameras(3, shared_K=True)
    (tmp_path / "p" / "calibration").mkdir(parents=True)
    (tmp_path / "p" / "images").mkdir()
    r = np.random.default_rng(terms)
    ccm = {c.view_id: np.hstack([np.eye(3) * 0.9, r.normal(0, 0.03, (3, terms - 3))]) for c in cams_}
    doc = {"world_2_cam": {c.view_id: c.w2c.tolist() for c in cams_}, "intrinsics": cams_[0].K.tolist()}
    (tmp_path / "p" / "calibration" / "camera_params.json").write_text(json.dumps(doc))
    (tmp_path / "p" / "calibration" / "color_calibration.json").write_text(
        json.dumps({k: v.tolist() for k, v in ccm.items()}))
    for c in cams_:
        write_rgb(tmp_path / "p" / "images" / f"cam_{c.view_id}.png", c.image)
    m = ingest("nersemble", tmp_path / "p", tmp_path / "out")
    for c in cams_:
        lin = srgb_decode(c.image.reshape(-1, 3) / 255.0)
        want = np.clip(srgb_encode(cheung(lin, terms) @ ccm[c.view_id].T) * 255, 0, 255).astype(np.uint8)
        got = read_rgb(m.path(m.view(c.view_id).image)).reshape(-1, 3)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float rounding at level boundaries
        assert (got == want).mean() > 0.999
    # a matrix whose width is no Cheung term count is refused, naming the camera
    bad = {k: np.zeros((3, 6)).tolist() for k in ccm}
    (tmp_path / "p" / "calibration" / "color_calibration.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"\[3, 6\]") as ei:
        ingest("nersemble", tmp_path / "p", tmp_path / "out2")
    assert ei.value.field == cams_[0].view_id


def test_nersemble_v1_layout_npy_colour_and_half_resolution(tmp_path):
    """NeRSemble v1 (``multi_view_data.py``): ``{pid}/camera_params.json`` with one shared K at the full
    2200 x 3208 resolution; frames at ``sequences/SEQ/frame_00000/images-2x/cam_{serial}.png``
    (half resolution: the dataparser calls ``cameras.rescale_output_resolution(1 / 2)``, K[:2] * 0.5);
    colour correction ``annotations/SEQ/color_correction/{serial}.npy`` applied by
    ``nersemble_dataset.py`` as ``image / 255 @ A[:3, :3] + A[:3, 3]``, clipped, ``* 255`` as uint8."""
    pid = tmp_path / "018"
    seq = "EMO-1-shout+laugh"
    frame_dir = pid / "sequences" / seq / "frame_00000" / "images-2x"
    cc_dir = pid / "annotations" / seq / "color_correction"
    frame_dir.mkdir(parents=True)
    cc_dir.mkdir(parents=True)
    cs = cams(3)
    serials = ["220700191", "221501007", "222200036"]
    K_full = np.diag([2.0, 2.0, 1.0]) @ cs[0][0]  # calibrated at twice the stored image size
    doc = {"world_2_cam": {s: w2c.tolist() for s, (_, w2c) in zip(serials, cs)}, "intrinsics": K_full.tolist()}
    (pid / "camera_params.json").write_text(json.dumps(doc))
    r = np.random.default_rng(3)
    imgs, affines = {}, {}
    for s in serials:
        imgs[s] = r.integers(0, 256, (H, W, 3)).astype(np.uint8)
        write_rgb(frame_dir / f"cam_{s}.png", imgs[s])
        affines[s] = np.vstack([np.hstack([np.eye(3) * 0.95 + r.normal(0, 0.02, (3, 3)), r.normal(0, 0.02, (3, 1))]),
                                [0, 0, 0, 1]])
        np.save(cc_dir / f"{s}.npy", affines[s])
    m = ingest("nersemble", pid, tmp_path / "out", sequence=seq, frame=0)
    assert m.source["intrinsics_scale"] == 0.5 and m.source["color_correction"].endswith("color_correction")
    K_half = np.diag([0.5, 0.5, 1.0]) @ K_full
    for s, (_, w2c) in zip(serials, cs):
        v = m.view(s)
        assert np.abs(project(v.K, v.world_to_camera, POINTS) - dreifus_project(K_half, w2c, POINTS)).max() < 1e-9
        A = affines[s]
        want = (np.clip(imgs[s] / 255.0 @ A[:3, :3] + A[np.newaxis, :3, 3], 0, 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(read_rgb(m.path(v.image)), want)
    # a pickled object array instead of a matrix is refused, never unpickled
    np.save(cc_dir / f"{serials[1]}.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="unreadable colour correction") as ei:
        ingest("nersemble", pid, tmp_path / "out2", sequence=seq)
    assert ei.value.view == serials[1]


# ----------------------------------------------------------------------------------------------
# FaceScape: the toolkit's params.json and its undistortion
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("centers", ["half", "integer"])
def test_facescape_projection_both_pixel_centre_conventions(tmp_path, centers):
    """FaceScape toolkit: ``{i}_K`` (3x3 or 4x4), ``{i}_Rt`` 3x4 world-to-camera (OpenCV axes),
    ``{i}_distortion`` k1 k2 p1 p2 k3, images ``{i}.jpg``; its mesh overlay renders with pyrender's
    ``IntrinsicsCamera(fx, fy, cx, cy)`` and K unchanged (OpenGL samples pixel centres at +0.5); it
    undistorts with ``cv2.undistort(img, K, dist)``.

    Fixture under each hypothesis: dots where the distorted camera puts known 3D points
    (``cv2.projectPoints`` with K), read as continuous coordinates with +0.5 centres ("half", the
    overlay's reading and the facegs default) or as OpenCV pixel indices ("integer": dots at + 0.5).
    Ingested with the matching ``pixel_centers``, the undistorted dots sit at the pinhole projection
    of the ingested camera (the toolkit's undistortion, used for both, moves the distortion centre by
    half a pixel under "half": a few hundredths of a pixel here)."""
    src = tmp_path / "fs"
    src.mkdir()
    dist = np.array([0.08, -0.03, 0.002, -0.001, 0.01])
    params = {}
    for i, (K, w2c) in enumerate(cams(3)):
        params.update({f"{i}_K": K.tolist(), f"{i}_Rt": w2c[:3].tolist(), f"{i}_distortion": dist.tolist(),
                       f"{i}_width": W, f"{i}_height": H, f"{i}_valid": True})
        rvec, _ = cv2.Rodrigues(w2c[:3, :3])
        uv, _ = cv2.projectPoints(POINTS, rvec, w2c[:3, 3], K, dist)
        write_rgb(src / f"{i}.png", blobs(uv.reshape(-1, 2) + (0.5 if centers == "integer" else 0.0)))
    (src / "params.json").write_text(json.dumps(params))
    kw = {} if centers == "half" else {"pixel_centers": "integer"}
    m = ingest("facescape", src, tmp_path / "out", **kw)
    assert m.source["pixel_centers"] == centers
    for i, (K, _) in enumerate(cams(3)):
        v = m.view(str(i))
        np.testing.assert_allclose(v.K[:2, 2], K[:2, 2] + (0.5 if centers == "integer" else 0.0))
        want = project(v.K, v.world_to_camera, POINTS)
        got = centroids(read_rgb(m.path(v.image)), want)
        assert np.linalg.norm(got - want, axis=1).max() < 0.15, (centers, i)
