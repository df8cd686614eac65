"""Training augmentations for face parsers: scale, crop, rotation, colour jitter, horizontal flip.

All functions take and return numpy arrays: ``rgb`` [H, W, 3] uint8 and ``labels`` [H, W] uint8
(class indices, 255 = ignore). Geometric transforms move both with the same warp: bilinear for
the image, nearest for the labels, and pixels that come from outside the source become 255 in the
labels (ignored by the loss) and black in the image. A horizontal flip swaps left/right classes
(the bug of the reference BiSeNet trainer, which flipped without swapping, is avoided here).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facegs.core.labels import IGNORE_INDEX, LabelSet, get_label_set


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation ranges. ``out_size`` is the square training resolution."""

    out_size: int = 128
    scale: tuple[float, float] = (0.75, 1.5)  # zoom factor relative to fitting the image in out_size
    max_rotation_deg: float = 15.0
    max_shift: float = 0.1  # fraction of out_size
    flip_prob: float = 0.5
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue_deg: float = 8.0


def hflip(rgb: np.ndarray, labels: np.ndarray, label_set: LabelSet | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mirror horizontally and swap left/right classes ([H,W,3] uint8, [H,W] uint8)."""
    ls = get_label_set(label_set)
    return np.ascontiguousarray(rgb[:, ::-1]), ls.flip_lut()[labels[:, ::-1]]


def color_jitter(rgb: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Random brightness, contrast, saturation and hue on [H, W, 3] uint8 RGB."""
    img = rgb.astype(np.float32) / 255.0
    b = 1.0 + rng.uniform(-cfg.brightness, cfg.brightness)
    c = 1.0 + rng.uniform(-cfg.contrast, cfg.contrast)
    s = 1.0 + rng.uniform(-cfg.saturation, cfg.saturation)
    img = img * b
    mean = img.mean()
    img = (img - mean) * c + mean
    gray = img.mean(axis=2, keepdims=True)
    img = np.clip((img - gray) * s + gray, 0.0, 1.0)
    if cfg.hue_deg > 0:
        hsv = cv2.cvtColor((img * 255).astype(np.uint8), cv2.COLOR_RGB2HSV)
        shift = int(round(rng.uniform(-cfg.hue_deg, cfg.hue_deg) / 2.0))  # OpenCV hue is 0..179
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return (img * 255 + 0.5).astype(np.uint8)


def random_affine(
    rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Random scale + rotation + shift + crop to ``cfg.out_size`` (square)."""
    h, w = labels.shape
    base = cfg.out_size / max(h, w)
    scale = base * rng.uniform(*cfg.scale)
    angle = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)
    shift = rng.uniform(-cfg.max_shift, cfg.max_shift, size=2) * cfg.out_size
    # Map the source centre to the output centre (+ shift), rotating and scaling about it.
    # Pixel centres at +0.5 on both sides: centre of an n-pixel axis is n / 2.
    M = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
    M[:, 2] += np.array([cfg.out_size / 2.0 - w / 2.0, cfg.out_size / 2.0 - h / 2.0]) + shift
    M = _half_pixel(M)
    size = (cfg.out_size, cfg.out_size)
    out_rgb = cv2.warpAffine(rgb, M, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out_lab = cv2.warpAffine(labels, M, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=IGNORE_INDEX)
    return out_rgb, out_lab


def _half_pixel(M: np.ndarray) -> np.ndarray:
    """Convert an affine map between continuous coordinates (centres at +0.5) to OpenCV's
    integer-centre convention: x_cv = x - 0.5 on both sides."""
    A, t = M[:, :2], M[:, 2]
    return np.concatenate([A, (t + A @ np.array([0.5, 0.5]) - 0.5)[:, None]], axis=1)


def resize_pair(rgb: np.ndarray, labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic resize to ``size`` x ``size`` (no augmentation) for evaluation."""
    if labels.shape == (size, size):
        return rgb, labels
    return (
        cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if rgb.shape[0] > size else cv2.INTER_LINEAR),
        cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST),
    )


def augment(
    rgb: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    label_set: LabelSet | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Full training augmentation: affine crop, colour jitter, flip with left/right swap."""
    rgb, labels = random_affine(rgb, labels, rng, cfg)
    rgb = color_jitter(rgb, rng, cfg)
    if rng.random() < cfg.flip_prob:
        rgb, labels = hflip(rgb, labels, label_set)
    return rgb, labels

