"""Capture ingestion: every format round-trips cameras and images; bad input fails cleanly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from fixtures_io import (
    DIST5,
    GL_FLIP,
    cv_K,
    ring_cameras,
    run_cli,
    toolkit_undistorted,
    undistorted,
    write_colmap,
    write_facescape,
    write_nerfstudio,
    write_nersemble,
)

from facegs.core.errors import InputError
from facegs.core.imageio import read_rgb, write_rgb
from facegs.core.manifest import load_manifest
from facegs.ingest import available_formats, ingest
from facegs.ingest.colmap import camera_to_opencv
from facegs.ingest.compare import umeyama
from facegs.ingest.images import apply_color_matrix
from facegs.ingest.nerfstudio import gl_c2w_to_cv_w2c
from facegs.ingest.validate import validate_subject


def _check_cameras(m, cams, ids=None):
    got = {v.view_id: v for v in m.views}
    ids = ids or [c.view_id for c in cams]
    assert sorted(got) == sorted(ids)
    for vid, c in zip(ids, cams):
        v = got[vid]
        np.testing.assert_allclose(v.K, c.K, atol=1e-6, err_msg=vid)
        np.testing.assert_allclose(v.world_to_camera, c.w2c, atol=1e-6, err_msg=vid)
        assert v.distortion is None
        assert (v.width, v.height) == (c.image.shape[1], c.image.shape[0])


def _assert_valid(out):
    probs = validate_subject(out, min_views=3)
    assert probs == [], [str(p) for p in probs]


# ----------------------------------------------------------------------------------------------
# FaceScape
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K4", [True, False])
def test_facescape_roundtrip_undistorts_and_skips_invalid(tmp_path, K4):
    cams = ring_cameras(6)
    write_facescape(tmp_path / "fs", cams, invalid=(2,), K4=K4)
    m = ingest("facescape", tmp_path / "fs", tmp_path / "out", subject_id="fs1")
    kept = [c for i, c in enumerate(cams) if i != 2]
    _check_cameras(m, kept, ids=[str(i) for i in range(6) if i != 2])
    assert m.source["skipped_invalid"] == ["2"] and m.source["units"] == "mm"
    for i, c in enumerate(cams):
        if i == 2:
            continue
        img = read_rgb(m.path(m.view(str(i)).image))
        expect = toolkit_undistorted(c.image, c.K, DIST5)  # K as written: pixel centres at +0.5
        np.testing.assert_array_equal(img, expect)
        assert np.abs(img.astype(int) - c.image).mean() > 1.0  # undistortion really changed the pixels
    _assert_valid(tmp_path / "out")
    assert load_manifest(tmp_path / "out").subject_id == "fs1"


def test_facescape_scale_converts_units(tmp_path):
    cams = ring_cameras(4)
    write_facescape(tmp_path / "fs", cams)
    m = ingest("facescape", tmp_path / "fs", tmp_path / "out", scale=0.001)
    assert m.subject_id == "out" and m.source["world_scale"] == 0.001
    np.testing.assert_allclose(m.views[1].world_to_camera[:3, 3], cams[1].w2c[:3, 3] * 0.001, atol=1e-12)
    np.testing.assert_allclose(m.views[1].world_to_camera[:3, :3], cams[1].w2c[:3, :3], atol=1e-12)


def test_facescape_missing_K_names_view_and_field_and_writes_nothing(tmp_path):
    cams = ring_cameras(5)
    params = write_facescape(tmp_path / "fs", cams)
    del params["3_K"]
    (tmp_path / "fs" / "params.json").write_text(json.dumps(params))
    out = tmp_path / "subjects" / "fsX"
    with pytest.raises(InputError) as ei:
        ingest("facescape", tmp_path / "fs", out)
    e = ei.value
    assert (e.subject, e.view, e.field) == ("fsX", "3", "3_K")
    assert "view '3'" in str(e) and "field '3_K'" in str(e) and "params.json" in str(e)
    assert not out.exists()
    assert not any((tmp_path / "subjects").iterdir()) if (tmp_path / "subjects").exists() else True


def test_facescape_error_while_writing_leaves_nothing(tmp_path):
    """A failure after some images were written (corrupt image of a later view) rolls back."""
    cams = ring_cameras(5)
    write_facescape(tmp_path / "fs", cams)
    (tmp_path / "fs" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "subjects" / "fsY"
    with pytest.raises(InputError) as ei:
        ingest("facescape", tmp_path / "fs", out)
    assert (ei.value.view, ei.value.field) == ("4", "image") and "corrupt" in str(ei.value)
    assert list((tmp_path / "subjects").iterdir()) == []


def test_facescape_size_mismatch_and_bad_rotation(tmp_path):
    cams = ring_cameras(4)
    params = write_facescape(tmp_path / "fs", cams)
    params["1_width"] = 100
    (tmp_path / "fs" / "params.json").write_text(json.dumps(params))
    with pytest.raises(InputError) as ei:
        ingest("facescape", tmp_path / "fs", tmp_path / "o1")
    assert (ei.value.view, ei.value.field) == ("1", "1_width") and "96x72" in str(ei.value)
    params["1_width"] = 96
    params["2_Rt"][0][0] *= 1.5
    (tmp_path / "fs" / "params.json").write_text(json.dumps(params))
    with pytest.raises(InputError) as ei:
        ingest("facescape", tmp_path / "fs", tmp_path / "o2")
    assert (ei.value.view, ei.value.field) == ("2", "2_Rt") and "orthonormal" in str(ei.value)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_facescape_missing_image(tmp_path):
    cams = ring_cameras(4)
    write_facescape(tmp_path / "fs", cams)
    (tmp_path / "fs" / "2.png").unlink()
    with pytest.raises(InputError) as ei:
        ingest("facescape", tmp_path / "fs", tmp_path / "o")
    assert (ei.value.view, ei.value.field) == ("2", "image")


# ----------------------------------------------------------------------------------------------
# NeRSemble
# ----------------------------------------------------------------------------------------------


def _srgb_decode(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _srgb_encode(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def test_nersemble_roundtrip_with_color_correction(tmp_path):
    cams = ring_cameras(5, shared_K=True)
    ccm = {c.view_id: np.eye(3) for c in cams}
    ccm[cams[1].view_id] = np.array([[1.1, 0.05, 0.0], [0.0, 0.9, 0.02], [0.01, 0.0, 1.05]])
    ccm[cams[2].view_id] = np.hstack([np.eye(3) * 0.95, np.full((3, 1), 0.02)])  # 3x4: constant term
    write_nersemble(tmp_path / "p001", cams, ccm)
    m = ingest("nersemble", tmp_path / "p001", tmp_path / "out")
    _check_cameras(m, cams)
    assert m.source["color_correction"].endswith("color_calibration.json")
    # identity matrix: image unchanged up to rounding
    img0 = read_rgb(m.path(m.view(cams[0].view_id).image))
    assert np.abs(img0.astype(int) - cams[0].image).max() <= 1
    for c in cams[1:3]:
        M = ccm[c.view_id]
        lin = _srgb_decode(c.image.reshape(-1, 3) / 255.0)
        if M.shape[1] == 4:
            lin = np.hstack([lin, np.ones((len(lin), 1))])
        expect = np.rint(_srgb_encode(lin @ M.T) * 255).reshape(c.image.shape)
        got = read_rgb(m.path(m.view(c.view_id).image)).astype(int)
        assert np.abs(got - expect).max() <= 1
        assert np.abs(got - c.image).mean() > 1.0
    _assert_valid(tmp_path / "out")

    m2 = ingest("nersemble", tmp_path / "p001", tmp_path / "out2", color_correction=False)
    np.testing.assert_array_equal(read_rgb(m2.path(m2.view(cams[1].view_id).image)), cams[1].image)


def test_nersemble_calib_size_scales_K(tmp_path):
    cams = ring_cameras(4, shared_K=True)
    write_nersemble(tmp_path / "p", cams)
    # pretend the intrinsics were calibrated at twice the resolution of the images
    doc = json.loads((tmp_path / "p/calibration/camera_params.json").read_text())
    K2 = np.diag([2.0, 2.0, 1.0]) @ cams[0].K  # facegs convention at 2x
    doc["intrinsics"] = K2.tolist()
    (tmp_path / "p/calibration/camera_params.json").write_text(json.dumps(doc))
    m = ingest("nersemble", tmp_path / "p", tmp_path / "out", calib_size=(2 * 96, 2 * 72))
    np.testing.assert_allclose(m.views[0].K, cams[0].K, atol=1e-9)
    with pytest.raises(InputError) as ei:  # without the calibration size the principal point is off-image
        ingest("nersemble", tmp_path / "p", tmp_path / "out3")
    assert ei.value.field == "K" and "calibration size" in str(ei.value)


def test_nersemble_reads_video_frames(tmp_path):
    cams = ring_cameras(3, shared_K=True)
    write_nersemble(tmp_path / "p", cams)
    seq = tmp_path / "p" / "sequences" / "EXP-1" / "images"
    seq.mkdir(parents=True)
    for c in cams:
        (tmp_path / "p" / "images" / f"cam_{c.view_id}.png").unlink()
        vw = cv2.VideoWriter(str(seq / f"cam_{c.view_id}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 72))
        assert vw.isOpened()
        frames = [255 - c.image, c.image, np.roll(c.image, 40, axis=1)]
        for frame in frames:
            vw.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        vw.release()
    m = ingest("nersemble", tmp_path / "p", tmp_path / "out", sequence="EXP-1", frame=1)
    for c in cams:
        img = read_rgb(m.path(m.view(c.view_id).image))
        assert img.shape == c.image.shape
        err = [np.abs(img.astype(int) - f).mean() for f in (255 - c.image, c.image, np.roll(c.image, 40, axis=1))]
        assert err[1] < 0.5 * min(err[0], err[2]), err  # MJPG is lossy: frame 1 must be by far the closest
    with pytest.raises(InputError) as ei:
        ingest("nersemble", tmp_path / "p", tmp_path / "out2", sequence="EXP-1", frame=7)
    assert ei.value.field == "image" and "out of range" in str(ei.value)


def test_nersemble_missing_camera_image_and_ccm(tmp_path):
    cams = ring_cameras(3, shared_K=True)
    write_nersemble(tmp_path / "p", cams, {cams[0].view_id: np.eye(3), cams[1].view_id: np.eye(3)})
    with pytest.raises(InputError) as ei:
        ingest("nersemble", tmp_path / "p", tmp_path / "out")
    assert (ei.value.view, ei.value.field) == (cams[2].view_id, cams[2].view_id)
    (tmp_path / "p/calibration/color_calibration.json").unlink()
    (tmp_path / "p/images" / f"cam_{cams[1].view_id}.png").unlink()
    with pytest.raises(InputError) as ei:
        ingest("nersemble", tmp_path / "p", tmp_path / "out")
    assert (ei.value.view, ei.value.field) == (cams[1].view_id, "image")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# nerfstudio
# ----------------------------------------------------------------------------------------------


def test_gl_to_cv_conversion_by_projection():
    """A point in front of an OpenGL camera (negative z) projects in front of the OpenCV camera."""
    cam = ring_cameras(1)[0]
    c2w_gl = np.linalg.inv(cam.w2c) @ GL_FLIP
    w2c = gl_c2w_to_cv_w2c(c2w_gl)
    p_gl = np.array([0.1, 0.2, -2.0, 1.0])  # GL camera: up is +y, forward is -z
    x_world = c2w_gl @ p_gl
    x_cv = w2c @ x_world
    np.testing.assert_allclose(x_cv[:3], [0.1, -0.2, 2.0], atol=1e-12)


@pytest.mark.parametrize("distort", [False, True])
def test_nerfstudio_roundtrip(tmp_path, distort):
    cams = ring_cameras(5)
    write_nerfstudio(tmp_path / "ns", cams, DIST5 if distort else None)
    m = ingest("nerfstudio", tmp_path / "ns", tmp_path / "out")
    _check_cameras(m, cams)
    for c in cams:
        img = read_rgb(m.path(m.view(c.view_id).image))
        np.testing.assert_array_equal(img, undistorted(c.image, c.K, DIST5) if distort else c.image)
    assert m.source["applied_transform"] == np.eye(4)[:3].tolist()
    _assert_valid(tmp_path / "out")


def test_nerfstudio_blender_camera_angle(tmp_path):
    cams = ring_cameras(3, shared_K=True)
    (tmp_path / "bl" / "train").mkdir(parents=True)
    fov = 0.9
    frames = []
    for c in cams:
        write_rgb(tmp_path / "bl" / "train" / f"{c.view_id}.png", c.image)
        frames.append({"file_path": f"./train/{c.view_id}", "transform_matrix": (np.linalg.inv(c.w2c) @ GL_FLIP).tolist()})
    (tmp_path / "bl" / "transforms.json").write_text(json.dumps({"camera_angle_x": fov, "frames": frames}))
    m = ingest("nerfstudio", tmp_path / "bl" / "transforms.json", tmp_path / "out")
    f = 0.5 * 96 / np.tan(fov / 2)
    np.testing.assert_allclose(m.views[0].K, [[f, 0, 48], [0, f, 36], [0, 0, 1]], atol=1e-9)
    np.testing.assert_allclose(m.views[2].world_to_camera, cams[2].w2c, atol=1e-9)


def test_nerfstudio_bad_frame_names_field(tmp_path):
    cams = ring_cameras(3)
    write_nerfstudio(tmp_path / "ns", cams)
    doc = json.loads((tmp_path / "ns/transforms.json").read_text())
    doc["frames"][1]["transform_matrix"][0][0] = float("nan")
    (tmp_path / "ns/transforms.json").write_text(json.dumps(doc))
    with pytest.raises(InputError) as ei:
        ingest("nerfstudio", tmp_path / "ns", tmp_path / "out")
    assert (ei.value.view, ei.value.field) == ("v01", "frames[1].transform_matrix") and "non-finite" in str(ei.value)


# ----------------------------------------------------------------------------------------------
# COLMAP
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_colmap_roundtrip_undistorts_and_writes_points(tmp_path, binary):
    cams = ring_cameras(5)
    extra = (0.05, -0.02, 0.001, 0.002)
    xyz, rgb = write_colmap(tmp_path / "proj", cams, binary=binary, extra=extra)
    m = ingest("colmap", tmp_path / "proj" / "sparse" / "0", tmp_path / "out")
    _check_cameras(m, cams)
    assert m.source["num_registered"] == 5 and m.source["unregistered"] == []
    for c in cams:
        img = read_rgb(m.path(m.view(c.view_id).image))
        np.testing.assert_array_equal(img, undistorted(c.image, c.K, np.array(extra)))
    with np.load(m.path(m.points3d), allow_pickle=False) as z:
        assert z["xyz"].dtype == np.float32 and z["rgb"].dtype == np.uint8
        np.testing.assert_allclose(z["xyz"], xyz, atol=1e-6)
        np.testing.assert_array_equal(z["rgb"], rgb)
    _assert_valid(tmp_path / "out")


def test_colmap_pinhole_copies_bytes(tmp_path):
    cams = ring_cameras(4)
    write_colmap(tmp_path / "proj", cams, model="PINHOLE")
    m = ingest("colmap", tmp_path / "proj" / "sparse" / "0", tmp_path / "out", images=tmp_path / "proj" / "images")
    for c in cams:
        assert (m.path(m.view(c.view_id).image)).read_bytes() == (tmp_path / "proj/images" / f"{c.view_id}.png").read_bytes()


def test_colmap_missing_model_file(tmp_path):
    cams = ring_cameras(3)
    write_colmap(tmp_path / "proj", cams)
    (tmp_path / "proj/sparse/0/points3D.txt").unlink()
    with pytest.raises(InputError) as ei:
        ingest("colmap", tmp_path / "proj/sparse/0", tmp_path / "out")
    assert ei.value.field == "points3D" and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "model,params",
    [
        ("SIMPLE_RADIAL", [90, 40, 30, 0.07]),
        ("RADIAL", [90, 40, 30, 0.07, -0.02]),
        ("OPENCV", [90, 95, 40, 30, 0.07, -0.02, 0.003, -0.002]),
        ("FULL_OPENCV", [90, 95, 40, 30, 0.07, -0.02, 0.003, -0.002, 0.01, 0.02, -0.01, 0.005]),
        ("OPENCV_FISHEYE", [90, 95, 40, 30, 0.05, -0.01, 0.002, -0.001]),
        ("SIMPLE_RADIAL_FISHEYE", [90, 40, 30, 0.05]),
        ("RADIAL_FISHEYE", [90, 40, 30, 0.05, -0.01]),
    ],
)
def test_colmap_camera_models_match_opencv_projection(model, params):
    """Our COLMAP -> OpenCV parameter mapping projects points exactly like COLMAP does."""
    import pycolmap

    cam = pycolmap.Camera(model=model, width=80, height=60, params=params)
    rng = np.random.default_rng(0)
    pts = np.column_stack([rng.uniform(-0.3, 0.3, (20, 2)), np.ones(20)]) * rng.uniform(1, 3, (20, 1))
    ref = cam.img_from_cam(pts)
    K, dist, fisheye = camera_to_opencv(model, np.array(params, dtype=float))
    Kc = cv_K(K)
    if fisheye:
        uv, _ = cv2.fisheye.projectPoints(pts.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), Kc, dist.reshape(4, 1))
    else:
        uv, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), Kc, dist)
    np.testing.assert_allclose(uv.reshape(-1, 2) + 0.5, ref, atol=1e-6)


def test_colmap_unsupported_model_is_refused():
    with pytest.raises(ValueError, match="image_undistorter"):
        camera_to_opencv("FOV", np.array([90, 95, 40, 30, 0.1]))


# ----------------------------------------------------------------------------------------------
# Registry, helpers, CLI
# ----------------------------------------------------------------------------------------------


def test_registry_and_bad_subject_id(tmp_path):
    assert available_formats() == ["facescape", "nersemble", "colmap", "nerfstudio", "images"]
    with pytest.raises(ValueError, match="unknown capture format"):
        ingest("blender", tmp_path, tmp_path / "o")
    write_facescape(tmp_path / "fs", ring_cameras(3))
    with pytest.raises(InputError) as ei:
        ingest("facescape", tmp_path / "fs", tmp_path / "o", subject_id="bad.id")
    assert ei.value.field == "subject_id"


def test_existing_out_needs_overwrite(tmp_path):
    write_facescape(tmp_path / "fs", ring_cameras(3))
    ingest("facescape", tmp_path / "fs", tmp_path / "o")
    with pytest.raises(FileExistsError):
        ingest("facescape", tmp_path / "fs", tmp_path / "o")
    m = ingest("facescape", tmp_path / "fs", tmp_path / "o", overwrite=True)
    assert len(m.views) == 3


def test_color_matrix_identity_is_lossless_within_rounding():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 9, 3)).astype(np.uint8)
    assert np.abs(apply_color_matrix(img, np.eye(3)).astype(int) - img).max() <= 1


def test_umeyama_recovers_similarity():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(10, 3))
    ang = 0.7
    R = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1]])
    dst = 2.5 * src @ R.T + [1, 2, 3]
    s, R2, t = umeyama(src, dst)
    assert abs(s - 2.5) < 1e-9
    np.testing.assert_allclose(R2, R, atol=1e-9)
    np.testing.assert_allclose(t, [1, 2, 3], atol=1e-9)


def test_ingest_cli(tmp_path, monkeypatch, capsys):
    cams = ring_cameras(4)
    write_facescape(tmp_path / "fs", cams, invalid=(0,))
    rc = run_cli(["ingest", "--format", "facescape", str(tmp_path / "fs"), str(tmp_path / "s1"), "--subject-id", "s1"], monkeypatch)
    out = capsys.readouterr().out
    assert rc == 0 and "3 views" in out and "skipped 1 invalid" in out
    assert (tmp_path / "s1" / "subject.json").is_file()
    rc = run_cli(["ingest", "--format", "facescape", str(tmp_path / "fs"), str(tmp_path / "s1")], monkeypatch)
    assert rc == 1 and "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="does not apply"):
        run_cli(["ingest", "-f", "facescape", "--frame", "2", str(tmp_path / "fs"), str(tmp_path / "s2")], monkeypatch)
    params = json.loads((tmp_path / "fs/params.json").read_text())
    del params["2_Rt"]
    (tmp_path / "fs/params.json").write_text(json.dumps(params))
    rc = run_cli(["ingest", "-f", "facescape", str(tmp_path / "fs"), str(tmp_path / "s3")], monkeypatch)
    err = capsys.readouterr().err
    assert rc == 1 and "view '2'" in err and "field '2_Rt'" in err and not (tmp_path / "s3").exists()


def test_ingest_help_describes_every_format(monkeypatch, capsys):
    with pytest.raises(SystemExit):
        run_cli(["ingest", "--help"], monkeypatch)
    text = capsys.readouterr().out
    for fmt in available_formats():
        assert f"{fmt}:" in text
    assert "params.json" in text and "camera_params.json" in text and "transforms.json" in text
