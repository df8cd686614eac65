"""Image operations of ingestion: undistortion, colour correction, video frames, pixel-centre conversion.

``K`` in facegs has pixel centres at +0.5; OpenCV's functions use integer centres, hence
:func:`k_to_opencv` before calling them.

Distortion models (``model`` of :func:`undistort`):

- ``"opencv"``: OpenCV's ``k1 k2 p1 p2 [k3 [k4 k5 k6]]`` (``cv2.undistort``);
- ``"fisheye"``: ``cv2.fisheye``'s ``k1 k2 k3 k4``;
- ``"radial4"``: nerfstudio's perspective model ``[k1, k2, k3, k4, p1, p2]``
  (``nerfstudio.cameras.camera_utils``): radial factor ``1 + k1 r2 + k2 r2^2 + k3 r2^3 + k4 r2^4``
  (``r2 = x^2 + y^2``) and OpenCV's tangential terms. OpenCV has no ``r2^4`` term, so the image is
  resampled through maps computed here (``cv2.remap``, bilinear).

Colour correction: :func:`apply_color_matrix` is NeRSemble v2's (linear RGB, Cheung 2004 polynomial
terms, :func:`cheung2004_terms`); :func:`apply_affine_color` is NeRSemble v1's (gamma-encoded RGB).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facegs.core.errors import InputError
from facegs.core.imageio import ImageHeader, check_pixels, read_header


def undistort(rgb: np.ndarray, K: np.ndarray, distortion: np.ndarray, fisheye: bool = False,
              model: str = "opencv", opencv_K: np.ndarray | None = None) -> np.ndarray:
    """Undistort an [H, W, 3] image keeping the same ``K`` (facegs convention, pixel centres +0.5).

    ``opencv`` uses ``cv2.undistort``; ``fisheye`` (or ``fisheye=True``) uses
    ``cv2.fisheye.undistortImage`` with ``Knew = K``; both get ``K`` converted to OpenCV's integer
    pixel-centre convention, or ``opencv_K`` when given (the matrix a format's own tools pass to
    OpenCV, e.g. FaceScape's ``cv2.undistort(img, K, dist)``). ``radial4`` resamples through
    :func:`radial4_maps`.
    """
    Kcv = k_to_opencv(K) if opencv_K is None else np.asarray(opencv_K, dtype=np.float64)
    d = np.asarray(distortion, dtype=np.float64)
    if model == "radial4":
        mx, my = radial4_maps(K, d, rgb.shape[1], rgb.shape[0])
        return cv2.remap(rgb, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    if fisheye or model == "fisheye":
        return cv2.fisheye.undistortImage(rgb, Kcv, d.reshape(4, 1), Knew=Kcv)
    return cv2.undistort(rgb, Kcv, d, None, Kcv)


def undistort_mask(mask: np.ndarray, K: np.ndarray, distortion: np.ndarray, fisheye: bool = False,
                   model: str = "opencv", opencv_K: np.ndarray | None = None) -> np.ndarray:
    """Undistort an [H, W] uint8 mask like :func:`undistort` does the image (nearest neighbour)."""
    h, w = mask.shape
    Kcv = k_to_opencv(K) if opencv_K is None else np.asarray(opencv_K, dtype=np.float64)
    d = np.asarray(distortion, dtype=np.float64)
    if model == "radial4":
        mx, my = radial4_maps(K, d, w, h)
    elif fisheye or model == "fisheye":
        mx, my = cv2.fisheye.initUndistortRectifyMap(Kcv, d.reshape(4, 1), np.eye(3), Kcv, (w, h), cv2.CV_32FC1)
    else:
        mx, my = cv2.initUndistortRectifyMap(Kcv, d, None, Kcv, (w, h), cv2.CV_32FC1)
    return cv2.remap(mask, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)


def radial4_distort(xy: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """nerfstudio's perspective distortion of normalised coordinates [..., 2]; ``dist`` =
    ``[k1, k2, k3, k4, p1, p2]``."""
    k1, k2, k3, k4, p1, p2 = (float(c) for c in dist)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + 2.0 * p2 * x * y + p1 * (r2 + 2.0 * y * y)
    return np.stack([xd, yd], axis=-1)


def radial4_maps(K: np.ndarray, dist: np.ndarray, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """``cv2.remap`` maps (float32 [h, w], pixel-index coordinates) taking the undistorted image
    (same ``K``) to the distorted source under :func:`radial4_distort`."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)  # pixel centres, facegs convention
    xy = np.stack([(u - cx) / fx, (v - cy) / fy], axis=-1)
    d = radial4_distort(xy, dist)
    return ((fx * d[..., 0] + cx - 0.5).astype(np.float32), (fy * d[..., 1] + cy - 0.5).astype(np.float32))


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


# Cheung et al. (2004) polynomial terms, as the colour-science package defines them for each term
# count (colour.characterisation.matrix_augmented_Cheung2004, which NeRSemble v2's colour correction
# calls). Each term is a product of powers of R, G, B: (pR, pG, pB); (0, 0, 0) is the constant 1.
_C = {"R": (1, 0, 0), "G": (0, 1, 0), "B": (0, 0, 1), "RG": (1, 1, 0), "RB": (1, 0, 1), "GB": (0, 1, 1),
      "R2": (2, 0, 0), "G2": (0, 2, 0), "B2": (0, 0, 2), "RGB": (1, 1, 1), "R2G": (2, 1, 0), "G2B": (0, 2, 1),
      "B2R": (1, 0, 2), "R2B": (2, 0, 1), "G2R": (1, 2, 0), "B2G": (0, 1, 2), "R3": (3, 0, 0), "G3": (0, 3, 0),
      "B3": (0, 0, 3), "R2GB": (2, 1, 1), "RG2B": (1, 2, 1), "RGB2": (1, 1, 2), "R3G": (3, 1, 0), "R3B": (3, 0, 1),
      "G3R": (1, 3, 0), "G3B": (0, 3, 1), "B3R": (1, 0, 3), "B3G": (0, 1, 3), "R2G2": (2, 2, 0), "R2B2": (2, 0, 2),
      "G2B2": (0, 2, 2), "R4": (4, 0, 0), "G4": (0, 4, 0), "B4": (0, 0, 4), "1": (0, 0, 0)}
_BASE = "R G B RG RB GB R2 G2 B2".split()
_CUBIC = "RGB R2G G2B B2R".split()
_SIX = "RGB R2G G2B B2R R2B G2R B2G".split()
CHEUNG2004_TERMS: dict[int, tuple[str, ...]] = {
    3: ("R", "G", "B"),
    4: ("R", "G", "B", "1"),
    5: ("R", "G", "B", "RGB", "1"),
    7: ("R", "G", "B", "RG", "RB", "GB", "1"),
    8: ("R", "G", "B", "RG", "RB", "GB", "RGB", "1"),
    10: (*_BASE, "1"),
    11: (*_BASE, "RGB", "1"),
    14: (*_BASE, "RGB", "R3", "G3", "B3", "1"),
    16: (*_BASE, *_CUBIC, "R3", "G3", "B3"),
    17: (*_BASE, *_CUBIC, "R3", "G3", "B3", "1"),
    19: (*_BASE, *_SIX, "R3", "G3", "B3"),
    20: (*_BASE, *_SIX, "R3", "G3", "B3", "1"),
    22: (*_BASE, *_SIX, "R3", "G3", "B3", "R2GB", "RG2B", "RGB2"),
    35: (*_BASE, *_SIX, "R3", "G3", "B3", "R3G", "R3B", "G3R", "G3B", "B3R", "B3G", "R2GB", "RG2B", "RGB2",
         "R2G2", "R2B2", "G2B2", "R4", "G4", "B4", "1"),
}


def cheung2004_terms(rgb: np.ndarray, n_terms: int) -> np.ndarray:
    """[N, 3] RGB -> [N, n_terms] polynomial expansion of Cheung et al. (2004) (:data:`CHEUNG2004_TERMS`)."""
    if n_terms not in CHEUNG2004_TERMS:
        raise ValueError(f"a Cheung 2004 colour correction has {sorted(CHEUNG2004_TERMS)} terms, not {n_terms}")
    R, G, B = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    return np.stack([R ** _C[t][0] * G ** _C[t][1] * B ** _C[t][2] for t in CHEUNG2004_TERMS[n_terms]], axis=1)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def apply_color_matrix(rgb: np.ndarray, ccm: np.ndarray) -> np.ndarray:
    """Apply a NeRSemble v2 colour-correction matrix to an [H, W, 3] uint8 sRGB image.

    As nersemble-data's ``correct_color``: sRGB decoded to linear RGB in [0, 1], expanded to the
    matrix's number of Cheung 2004 terms (``ccm`` is [3, T]; T = 3: (R, G, B), T = 4: (R, G, B, 1),
    ...), ``ccm @ terms``, sRGB encoded, clipped to [0, 1] and truncated to uint8 (``* 255``, then
    ``astype``, as upstream does).
    """
    ccm = np.asarray(ccm, dtype=np.float64)
    lin = _srgb_to_linear(rgb.reshape(-1, 3).astype(np.float64) / 255.0)
    out = _linear_to_srgb(cheung2004_terms(lin, ccm.shape[1]) @ ccm.T)
    return (np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(rgb.shape)


def apply_affine_color(rgb: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Apply a NeRSemble v1 colour correction (``color_correction/{serial}.npy``, [3, 4] or [4, 4])
    to an [H, W, 3] uint8 image as its dataset class does: on gamma-encoded values in [0, 1],
    ``img @ A[:3, :3] + A[:3, 3]`` (row vectors: transposed relative to v2), clipped, ``* 255``
    truncated to uint8."""
    A = np.asarray(A, dtype=np.float64)
    x = rgb.reshape(-1, 3).astype(np.float64) / 255.0
    out = np.clip(x @ A[:3, :3] + A[:3, 3][None], 0.0, 1.0)
    return (out * 255.0).astype(np.uint8).reshape(rgb.shape)


def read_video_frame(path: Path, frame: int) -> np.ndarray:
    """Frame ``frame`` (0-based) of a video as [H, W, 3] uint8 RGB; :class:`InputError` otherwise."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError("cannot open video (OpenCV could not decode it)", path=str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        check_pixels(ImageHeader(w, h, "RGB", "RGB", "video"), str(path))  # the cap, before a frame is decoded
        if frame < 0 or (n > 0 and frame >= n):
            raise InputError(f"frame {frame} is out of range (video has {n} frames)", path=str(path))
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, bgr = cap.read()
        if not ok or bgr is None:
            raise InputError(f"cannot read frame {frame}", path=str(path))
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def read_nonzero_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """[h, w] bool foreground of a source mask as nerfstudio reads one (one channel, non-zero =
    foreground); ``size`` (w, h) is the image's, checked from the header before decoding."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read the mask: {e.strerror or e}", path=str(path)) from None
    hdr = read_header(data, str(path))
    if (hdr.width, hdr.height) != tuple(size):
        raise InputError(f"mask is {hdr.width}x{hdr.height} pixels but the image is {size[0]}x{size[1]}", path=str(path))
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise InputError(f"mask must have one channel, got shape {list(arr.shape)}", path=str(path))
    return arr != 0


def k_to_opencv(K: np.ndarray) -> np.ndarray:
    """facegs ``K`` (pixel centres at +0.5) -> the ``K`` OpenCV's image functions expect."""
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K
