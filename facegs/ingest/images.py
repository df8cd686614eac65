"""Image operations of ingestion: undistortion, colour correction, video frames, pixel-centre conversion.

``K`` in facegs has pixel centres at +0.5; OpenCV's functions use integer centres, hence
:func:`k_to_opencv` before calling them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facegs.core.errors import InputError


def undistort(rgb: np.ndarray, K: np.ndarray, distortion: np.ndarray, fisheye: bool = False) -> np.ndarray:
    """Undistort an [H, W, 3] image keeping the same ``K`` (facegs convention, pixel centres +0.5).

    Plain models use ``cv2.undistort``; ``fisheye`` uses ``cv2.fisheye.undistortImage`` with
    ``Knew = K``. Both get ``K`` converted to OpenCV's integer pixel-centre convention.
    """
    Kcv = k_to_opencv(K)
    d = np.asarray(distortion, dtype=np.float64)
    if fisheye:
        return cv2.fisheye.undistortImage(rgb, Kcv, d.reshape(4, 1), Knew=Kcv)
    return cv2.undistort(rgb, Kcv, d, None, Kcv)


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def apply_color_matrix(rgb: np.ndarray, ccm: np.ndarray) -> np.ndarray:
    """Apply a colour-correction matrix to an [H, W, 3] uint8 sRGB image.

    The matrix acts on LINEAR RGB in [0, 1] (sRGB decoded first, re-encoded after), as NeRSemble's
    calibration does: ``[3, 3]`` maps (R, G, B); ``[3, 4]`` maps (R, G, B, 1). The result is clipped
    to [0, 1] and rounded to uint8.
    """
    ccm = np.asarray(ccm, dtype=np.float64)
    lin = _srgb_to_linear(rgb.reshape(-1, 3).astype(np.float64) / 255.0)
    if ccm.shape == (3, 4):
        lin = np.concatenate([lin, np.ones((lin.shape[0], 1))], axis=1)
    out = _linear_to_srgb(lin @ ccm.T)
    return np.rint(out * 255.0).astype(np.uint8).reshape(rgb.shape)


def read_video_frame(path: Path, frame: int) -> np.ndarray:
    """Frame ``frame`` (0-based) of a video as [H, W, 3] uint8 RGB; :class:`InputError` otherwise."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise InputError("cannot open video (OpenCV could not decode it)", path=str(path))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if frame < 0 or (n > 0 and frame >= n):
            raise InputError(f"frame {frame} is out of range (video has {n} frames)", path=str(path))
        cap.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, bgr = cap.read()
        if not ok or bgr is None:
            raise InputError(f"cannot read frame {frame}", path=str(path))
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


def k_to_opencv(K: np.ndarray) -> np.ndarray:
    """facegs ``K`` (pixel centres at +0.5) -> the ``K`` OpenCV's image functions expect."""
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    return K
