"""Reading and writing the images of a subject: RGB, label maps, confidence, masks, depth.

- RGB: [H, W, 3] uint8, RGB order (OpenCV's BGR is converted at the boundary).
- Label maps: [H, W] uint8 class indices, stored as palette PNGs (index = pixel value; the palette is
  only for people looking at the file). Read with Pillow, never with OpenCV (which would expand a
  palette PNG to colours).
- Confidence: [H, W] float32 in [0, 1], stored as 8-bit PNG (value * 255, rounded).
- Masks: [H, W] bool, stored as 8-bit PNG (0 / 255).
- Depth: [H, W] float32 metres along the camera z axis, 0 where nothing is hit; stored as 16-bit PNG
  in units of 1/``DEPTH_SCALE`` (0.1 mm).
Every reader raises :class:`facegs.core.errors.InputError` naming the file when it cannot decode it.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from facegs.core.errors import InputError
from facegs.core.labels import LabelSet, get_label_set

DEPTH_SCALE = 10000.0


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError("file does not exist", path=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read file: {e.strerror}", path=str(path)) from None


def decode_rgb(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """Decode PNG/JPEG bytes to [H, W, 3] uint8 RGB."""
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if arr is None:
        raise InputError("corrupt or unreadable image (OpenCV could not decode it)", path=path)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8 RGB."""
    return decode_rgb(_read_bytes(path), str(path))


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels."""
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise InputError("file does not exist", path=str(path)) from None
    except Exception as e:  # Pillow raises many types for corrupt files
        raise InputError(f"corrupt or unreadable image ({type(e).__name__}: {e})", path=str(path)) from None


def encode_rgb(rgb: np.ndarray, ext: str = ".png", jpeg_quality: int = 95) -> bytes:
    """Encode [H, W, 3] uint8 RGB as PNG or JPEG bytes (deterministic)."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, bgr, params)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image as {ext}")
    return buf.tobytes()


def write_rgb(path: str | os.PathLike, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    Path(path).write_bytes(encode_rgb(rgb, Path(path).suffix or ".png", jpeg_quality))


def encode_label_png(labels: np.ndarray, label_set: LabelSet | str | None = None) -> bytes:
    """Encode [H, W] uint8 class indices as a palette PNG (pixel value = class index)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"label map must be [H, W] uint8, got {labels.dtype} {list(labels.shape)}")
    ls = get_label_set(label_set)
    im = Image.fromarray(labels, mode="P")
    pal = np.full((256, 3), 255, dtype=np.uint8)
    pal[: ls.num_classes] = ls.palette
    im.putpalette(pal.reshape(-1).tolist())
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=False)
    return out.getvalue()


def decode_label_png(data: bytes, path: str = "<bytes>") -> np.ndarray:
    """Decode a label PNG (palette or 8-bit grayscale) to [H, W] uint8 class indices."""
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:
        raise InputError(f"corrupt or unreadable label map ({type(e).__name__}: {e})", path=path) from None
    if im.mode not in ("P", "L"):
        raise InputError(f"label map must be a palette or 8-bit grayscale PNG, got mode {im.mode}", path=path)
    return np.array(im, dtype=np.uint8)


def read_labels(path: str | os.PathLike) -> np.ndarray:
    return decode_label_png(_read_bytes(path), str(path))


def write_labels(path: str | os.PathLike, labels: np.ndarray, label_set: LabelSet | str | None = None) -> None:
    Path(path).write_bytes(encode_label_png(labels, label_set))


def encode_gray_png(arr: np.ndarray) -> bytes:
    """Encode [H, W] uint8 or uint16 as a grayscale PNG."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:
        raise ValueError("OpenCV could not encode a grayscale PNG")
    return buf.tobytes()


def _read_gray(path: str | os.PathLike, dtype: type) -> np.ndarray:
    data = _read_bytes(path)
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != dtype:
        got = "undecodable" if arr is None else f"{arr.dtype} {list(arr.shape)}"
        raise InputError(f"expected a single-channel {np.dtype(dtype).name} PNG, got {got}", path=str(path))
    return arr


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] -> uint8 ``round(x * 255)`` (confidence, alpha: how they are stored)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def dequantize_unit(q: np.ndarray) -> np.ndarray:
    """uint8 [H, W] -> float32 ``q / 255`` (how a stored confidence or alpha map is read back)."""
    return np.asarray(q, dtype=np.uint8).astype(np.float32) / 255.0


def write_confidence(path: str | os.PathLike, conf: np.ndarray) -> None:
    Path(path).write_bytes(encode_gray_png(quantize_unit(conf)))


def read_confidence(path: str | os.PathLike) -> np.ndarray:
    return dequantize_unit(_read_gray(path, np.uint8))


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    Path(path).write_bytes(encode_gray_png(np.where(np.asarray(mask, dtype=bool), 255, 0).astype(np.uint8)))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    return _read_gray(path, np.uint8) >= 128


def write_depth(path: str | os.PathLike, depth: np.ndarray) -> None:
    d = np.clip(np.rint(np.asarray(depth, dtype=np.float64) * DEPTH_SCALE), 0, 65535).astype(np.uint16)
    Path(path).write_bytes(encode_gray_png(d))


def read_depth(path: str | os.PathLike) -> np.ndarray:
    return _read_gray(path, np.uint16).astype(np.float32) / DEPTH_SCALE


def decode_gray_png(data: bytes, where: str) -> np.ndarray:
    """8-bit single-channel PNG bytes -> [H, W] uint8."""
    arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != np.uint8:
        got = "undecodable" if arr is None else f"{arr.dtype} {list(arr.shape)}"
        raise InputError(f"expected an 8-bit single-channel PNG, got {got}", path=where)
    return arr
