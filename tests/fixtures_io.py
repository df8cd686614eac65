"""Synthetic captures for the ingestion and validation tests (written by the tests themselves).

Cameras: OpenCV pinhole, world-to-camera 4x4, K with pixel centres at +0.5 (facegs conventions).
Each writer stores the truth in the SOURCE format's conventions, so a test can check that
ingestion converts back to the facegs truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

import facegs.cli.app
from facegs.core.cameras import head_pose_to_w2c
from facegs.core.imageio import write_confidence, write_labels, write_mask, write_rgb
from facegs.core.manifest import SubjectManifest, View, save_manifest

W, H = 96, 72


@dataclass
class Cam:
    """Truth of one camera: facegs conventions."""

    view_id: str
    K: np.ndarray
    w2c: np.ndarray
    image: np.ndarray = field(repr=False)


def texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """[h, w, 3] uint8 smooth random texture (blurred noise: resampling changes it measurably)."""
    noise = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3)).astype(np.uint8)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)


def ring_cameras(n: int = 6, w: int = W, h: int = H, seed: int = 0, shared_K: bool = False) -> list[Cam]:
    """``n`` cameras on a ring around the origin (yaw spread, pitch alternating), with images."""
    rng = np.random.default_rng(seed)
    cams = []
    K0 = np.array([[80.0, 0.0, w / 2 + 1.25], [0.0, 82.0, h / 2 - 0.75], [0.0, 0.0, 1.0]])
    for i in range(n):
        K = K0.copy()
        if not shared_K:
            K[0, 0] += 3 * i
            K[1, 1] += 3 * i
            K[0, 2] += 0.5 * i
        w2c = head_pose_to_w2c(-60 + 120 * i / max(n - 1, 1), 10 * (-1) ** i, 5 * (i % 3 - 1), distance=3.0 + 0.1 * i)
        cams.append(Cam(f"v{i:02d}", K, w2c, texture(h, w, rng)))
    return cams


def cv_K(K: np.ndarray) -> np.ndarray:
    """facegs K -> OpenCV's integer pixel-centre K."""
    K = K.copy()
    K[:2, 2] -= 0.5
    return K


def toolkit_undistorted(img: np.ndarray, K_raw: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """What the FaceScape toolkit makes of a distorted image: ``cv2.undistort(img, K, dist)`` with K as
    stored in params.json."""
    return cv2.undistort(img, np.asarray(K_raw, dtype=np.float64), np.asarray(dist, dtype=np.float64))


def undistorted(img: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """What ingestion must produce for a distorted source image (same K, facegs convention)."""
    Kc = cv_K(K)
    return cv2.undistort(img, Kc, np.asarray(dist, dtype=np.float64), None, Kc)


# ----------------------------------------------------------------------------------------------
# Source formats
# ----------------------------------------------------------------------------------------------

DIST5 = np.array([0.08, -0.03, 0.002, -0.001, 0.01])


def write_facescape(folder: Path, cams: list[Cam], *, invalid: tuple[int, ...] = (), K4: bool = True,
                    centers: str = "half") -> dict:
    """FaceScape tuple: ``{i}.jpg``-style images (PNG here, lossless) + params.json with distortion.

    K is written with pixel centres at +0.5 (``centers="half"``: as FaceScape's own renderer uses it,
    the facegs default) or in OpenCV's integer convention (``"integer"``); Rt is 3x4 world-to-camera.
    """
    folder.mkdir(parents=True, exist_ok=True)
    params: dict = {}
    for i, c in enumerate(cams):
        Kc = cv_K(c.K) if centers == "integer" else c.K.copy()
        if K4:
            K = np.eye(4)
            K[:3, :3] = Kc
        else:
            K = Kc
        params[f"{i}_K"] = K.tolist()
        params[f"{i}_Rt"] = c.w2c[:3, :].tolist()
        params[f"{i}_distortion"] = DIST5.tolist()
        params[f"{i}_width"] = c.image.shape[1]
        params[f"{i}_height"] = c.image.shape[0]
        params[f"{i}_valid"] = i not in invalid
        params[f"{i}_matches"] = 1000
        params[f"{i}_sn"] = f"SN{i:04d}"
        params[f"{i}_ori"] = f"IMG_{i}.JPG"
        write_rgb(folder / f"{i}.png", c.image)
    (folder / "params.json").write_text(json.dumps(params), encoding="utf-8")
    return params


def write_nersemble(folder: Path, cams: list[Cam], ccm: dict[str, np.ndarray] | None = None) -> None:
    """NeRSemble participant folder: calibration/camera_params.json, images/cam_SERIAL.png (K with
    pixel centres at +0.5, the facegs default for NeRSemble)."""
    (folder / "calibration").mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    doc = {"world_2_cam": {c.view_id: c.w2c.tolist() for c in cams}, "intrinsics": cams[0].K.tolist()}
    (folder / "calibration" / "camera_params.json").write_text(json.dumps(doc), encoding="utf-8")
    if ccm is not None:
        (folder / "calibration" / "color_calibration.json").write_text(
            json.dumps({k: np.asarray(v).tolist() for k, v in ccm.items()}), encoding="utf-8"
        )
    for c in cams:
        write_rgb(folder / "images" / f"cam_{c.view_id}.png", c.image)


GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def write_nerfstudio(folder: Path, cams: list[Cam], dist: np.ndarray | None = None, per_frame_K: bool = True) -> None:
    """transforms.json with OpenGL camera-to-world matrices (+y up, +z backward). ``per_frame_K``:
    intrinsics per frame only (nerfstudio reads per-frame values only for keys the top level lacks);
    else shared at the top level."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    K0 = cams[0].K
    doc: dict = {
        "camera_model": "OPENCV", "w": cams[0].image.shape[1], "h": cams[0].image.shape[0], "frames": [],
        "applied_transform": np.eye(4)[:3].tolist(),
    }
    if not per_frame_K:
        doc.update({"fl_x": K0[0, 0], "fl_y": K0[1, 1], "cx": K0[0, 2], "cy": K0[1, 2]})
    if dist is not None:
        doc.update(k1=dist[0], k2=dist[1], p1=dist[2], p2=dist[3], k3=dist[4])
    for c in cams:
        c2w_gl = np.linalg.inv(c.w2c) @ GL_FLIP
        fr = {"file_path": f"images/{c.view_id}.png", "transform_matrix": c2w_gl.tolist()}
        if per_frame_K:
            fr.update(fl_x=c.K[0, 0], fl_y=c.K[1, 1], cx=c.K[0, 2], cy=c.K[1, 2])
        doc["frames"].append(fr)
        write_rgb(folder / "images" / f"{c.view_id}.png", c.image)
    (folder / "transforms.json").write_text(json.dumps(doc), encoding="utf-8")


def write_colmap(project: Path, cams: list[Cam], *, model: str = "OPENCV", extra=(0.05, -0.02, 0.001, 0.002),
                 binary: bool = False, n_points: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """COLMAP project: project/sparse/0 (written by pycolmap) + project/images. Returns points."""
    import pycolmap

    model_dir = project / "sparse" / "0"
    model_dir.mkdir(parents=True, exist_ok=True)
    (project / "images").mkdir(parents=True, exist_ok=True)
    rec = pycolmap.Reconstruction()
    for i, c in enumerate(cams):
        K = c.K
        if model == "OPENCV":
            params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2], *extra]
        elif model == "PINHOLE":
            params = [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]
        else:
            raise ValueError(model)
        cam = pycolmap.Camera(model=model, width=c.image.shape[1], height=c.image.shape[0], params=params, camera_id=i + 1)
        rec.add_camera_with_trivial_rig(cam)
        img = pycolmap.Image(name=f"{c.view_id}.png", camera_id=i + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d(pycolmap.Rotation3d(c.w2c[:3, :3]), c.w2c[:3, 3]))
        write_rgb(project / "images" / f"{c.view_id}.png", c.image)
    rng = np.random.default_rng(1)
    xyz = rng.normal(size=(n_points, 3)) * 0.2
    rgb = rng.integers(0, 256, (n_points, 3)).astype(np.uint8)
    for p, col in zip(xyz, rgb):
        rec.add_point3D(p, pycolmap.Track(), col)
    (rec.write if binary else rec.write_text)(str(model_dir))
    return xyz, rgb


# ----------------------------------------------------------------------------------------------
# A valid facegs subject, for the validation tests
# ----------------------------------------------------------------------------------------------


def write_subject(root: Path, subject_id: str = "S1", n: int = 5, labels: bool = True) -> SubjectManifest:
    """A valid subject directory with images, labels, confidence and masks for ``n`` views."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    cams = ring_cameras(n)
    views = []
    for c in cams:
        write_rgb(root / "images" / f"{c.view_id}.png", c.image)
        kw = {}
        if labels:
            lab = (np.arange(W * H).reshape(H, W) % 19).astype(np.uint8)
            lab[0, 0] = 255
            write_labels(root / "labels" / f"{c.view_id}.png", lab)
            write_confidence(root / "labels" / f"{c.view_id}_conf.png", np.full((H, W), 0.5, np.float32))
            write_mask(root / "labels" / f"{c.view_id}_mask.png", np.ones((H, W), bool))
            kw = dict(labels=f"labels/{c.view_id}.png", confidence=f"labels/{c.view_id}_conf.png",
                      mask=f"labels/{c.view_id}_mask.png")
        views.append(View(view_id=c.view_id, image=f"images/{c.view_id}.png", width=W, height=H, K=c.K, world_to_camera=c.w2c, **kw))
    np.savez(root / "points3d.npz", xyz=np.zeros((4, 3), np.float32), rgb=np.zeros((4, 3), np.uint8))
    m = SubjectManifest(subject_id=subject_id, label_set="celebamask19", views=tuple(views), points3d="points3d.npz", root=root)
    save_manifest(m, root)
    return m


def edit_manifest(root: Path, fn) -> None:
    """Apply ``fn(dict)`` to ``root/subject.json`` in place (NaN allowed, as Python's json writes it)."""
    p = root / "subject.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def run_cli(argv: list[str], monkeypatch) -> int:
    """``facegs.cli.app.main(argv)`` with only the ingest and validate commands registered."""
    monkeypatch.setattr(facegs.cli.app, "COMMAND_MODULES", ("facegs.cli.ingest", "facegs.cli.validate"))
    return facegs.cli.app.main(argv)


def write_textured_scene_subject(root: Path, n: int = 12, res: int = 128, seed: int = 0) -> SubjectManifest:
    """A calibrated subject of a block-textured sphere inside a block-textured room (ray-cast).

    Rigid, static and strongly textured: structure-from-motion must recover its cameras. Cameras
    orbit the sphere (yaw -60..60, pitch wobbling), 3 units away, 40 degree field of view.
    """
    from facegs.core.cameras import intrinsics_from_fov, pixel_rays

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    table = np.random.default_rng(seed).random((64, 64, 64, 3))

    def tex(p: np.ndarray, cells: float) -> np.ndarray:
        c = np.floor(p * cells).astype(int) % 64
        return table[c[..., 0], c[..., 1], c[..., 2]]

    K = intrinsics_from_fov(res, res, 40.0)
    views = []
    for i in range(n):
        w2c = head_pose_to_w2c(-60 + 120 * i / (n - 1), 12 * np.sin(1.7 * i), 0.0, distance=3.0)
        o, d = pixel_rays(K, w2c, res, res)
        b = d @ o
        disc = b * b - (o @ o - 1.0)
        t_sphere = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0.0)), np.inf)
        with np.errstate(divide="ignore"):
            t_far = np.maximum((6.0 - o) / d, (-6.0 - o) / d)
        t_room = np.min(np.where(t_far > 0, t_far, np.inf), axis=-1)
        hit = o + d * np.minimum(t_sphere, t_room)[..., None]
        rgb = np.where((t_sphere < t_room)[..., None], tex(hit + 10, 8.0), tex(hit + 10, 2.0))
        vid = f"v{i:02d}"
        write_rgb(root / "images" / f"{vid}.png", (rgb * 255).astype(np.uint8))
        views.append(View(view_id=vid, image=f"images/{vid}.png", width=res, height=res, K=K, world_to_camera=w2c))
    m = SubjectManifest(subject_id="scene", label_set="celebamask19", views=tuple(views), root=root)
    save_manifest(m, root)
    return m
