"""Background replacement for training on renders: composite the subject over a random background.

The factory's renders show the subject over black (the rasterizer's background), while the images a
parser meets have cluttered backgrounds; a parser fine-tuned on black-background renders learns a
shortcut ("black = background") that costs accuracy on real images. Replacing the background per
sample, with a fresh draw every epoch, removes the shortcut. This is a training-time augmentation:
the shards keep the plain render, so a user can switch it off or bring their own backgrounds.

Compositing (all arrays [H, W, ...], pixel centres at +0.5, same size):

- with ``alpha`` [H, W] float32 in [0, 1] (the render's coverage, shard member ``alpha.png``):
  ``out = rgb + (1 - alpha) * bg``. Exact for renders, whose RGB is premultiplied over black
  (``rgb = sum_i c_i a_i T_i``, background black), up to 8-bit rounding.
- without ``alpha``: the pixels labelled background (class 0) and not ignored are replaced,
  ``out = where(mask, bg, rgb)``, with the mask eroded by nothing and no feathering (a hard edge).

Background sources:

- ``"procedural"``: a random mix of a smooth colour field (a coarse random colour grid upsampled
  bicubically), a linear gradient, random filled rectangles, ellipses and lines, and grain; drawn
  from the generator given. Written here rather than taken from a library because no maintained
  package makes seeded, dependency-free clutter images; it is ~60 lines of OpenCV calls.
- a directory of images (``*.jpg|*.jpeg|*.png``, e.g. indoor/outdoor scene photos without people):
  a random crop (at least half the shorter side) resized to the sample's size, randomly mirrored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facegs.core.errors import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
PROCEDURAL = "procedural"


@dataclass(frozen=True)
class BackgroundConfig:
    """``prob``: probability that a sample's background is replaced; ``source``: ``"procedural"``
    or a local directory of background images."""

    prob: float = 0.0
    source: str = PROCEDURAL

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"background probability must be in [0, 1], got {self.prob}")


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    """[3] uint8 colour; saturation and value spread so that greys, darks and vivid colours occur."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(20, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]


def procedural_background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random clutter image, [height, width, 3] uint8 RGB, deterministic for a given generator state."""
    h, w = int(height), int(width)
    # smooth colour field: a coarse grid of random colours, upsampled bicubically
    gh, gw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    grid = np.stack([_random_colour(rng) for _ in range(gh * gw)]).reshape(gh, gw, 3)
    img = cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC if min(gh, gw) > 1
                     else cv2.INTER_LINEAR)
    if rng.random() < 0.5:  # linear gradient in a random direction
        ang = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = ((xx + 0.5) / w - 0.5) * np.cos(ang) + ((yy + 0.5) / h - 0.5) * np.sin(ang)
        img = img + (t[..., None] * rng.uniform(-120, 120, size=3)).astype(np.float32)
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 8))):  # clutter: rectangles, ellipses, lines
        col = tuple(int(v) for v in _random_colour(rng))
        kind = int(rng.integers(0, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if kind == 0:
            x1, y1 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.rectangle(canvas, (x0, y0), (x1, y1), col, thickness=-1)
        elif kind == 1:
            axes = (int(rng.integers(2, max(3, w // 2))), int(rng.integers(2, max(3, h // 2))))
            cv2.ellipse(canvas, (x0, y0), axes, float(rng.uniform(0, 180)), 0, 360, col, thickness=-1)
        else:
            x1, y1 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.line(canvas, (x0, y0), (x1, y1), col, thickness=int(rng.integers(1, max(2, w // 16))))
    sigma = rng.uniform(0, 2.0)
    if sigma > 0.3:
        canvas = cv2.GaussianBlur(canvas, (0, 0), sigma)
    grain = rng.normal(0, rng.uniform(0, 12), size=canvas.shape).astype(np.float32)
    return np.clip(canvas.astype(np.float32) + grain, 0, 255).astype(np.uint8)


def list_background_images(directory: str | os.PathLike) -> list[Path]:
    """Sorted image files of a background directory (recursive); raises InputError when there are none."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError("background directory not found", field="backgrounds", path=str(d))
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise InputError(f"no {'/'.join(IMAGE_EXTS)} images in the background directory", field="backgrounds",
                         path=str(d))
    return files


def image_background(path: Path, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of the image at ``path`` resized to [height, width, 3] uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError("cannot decode background image", field="backgrounds", path=str(path))
    img = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    H, W = img.shape[:2]
    side = int(rng.integers(max(1, min(H, W) // 2), min(H, W) + 1))
    y0, x0 = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
    crop = img[y0:y0 + side, x0:x0 + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (int(width), int(height)), interpolation=cv2.INTER_AREA)


class BackgroundSampler:
    """Draws backgrounds per :class:`BackgroundConfig` (picklable; a directory is listed lazily)."""

    def __init__(self, cfg: BackgroundConfig) -> None:
        self.cfg = cfg
        self._files: list[Path] | None = None
        if cfg.source != PROCEDURAL:
            self._files = list_background_images(cfg.source)  # fail early, on the driver too

    def draw(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """One background, [height, width, 3] uint8."""
        if self._files is None:
            return procedural_background(height, width, rng)
        return image_background(self._files[int(rng.integers(len(self._files)))], height, width, rng)


def composite(rgb: np.ndarray, bg: np.ndarray, alpha: np.ndarray | None = None,
              seg: np.ndarray | None = None, ignore: np.ndarray | None = None,
              background_class: int = 0) -> np.ndarray:
    """Put ``rgb`` [H, W, 3] uint8 over ``bg`` [H, W, 3] uint8 (see the module docstring).

    Uses ``alpha`` [H, W] float in [0, 1] when given (premultiplied-over-black RGB), else the mask
    ``seg == background_class`` (and not ``ignore``). Returns [H, W, 3] uint8.
    """
    if bg.shape != rgb.shape:
        raise ValueError(f"background {list(bg.shape)} and image {list(rgb.shape)} differ in size")
    if alpha is not None:
        a = np.clip(np.asarray(alpha, np.float32), 0.0, 1.0)[..., None]
        out = rgb.astype(np.float32) + (1.0 - a) * bg.astype(np.float32)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if seg is None:
        raise ValueError("composite needs alpha or seg")
    mask = np.asarray(seg) == background_class
    if ignore is not None:
        mask &= ~np.asarray(ignore, dtype=bool)
    return np.where(mask[..., None], bg, rgb)
