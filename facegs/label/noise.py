"""Deterministic noise models for ground-truth label maps: simulated coarse parser labels.

Used to measure how well multi-view fusion denoises labels when the truth is known. A spec string
combines models, e.g. ``"pixel:0.2,lr_swap:0.5"`` (see :class:`NoiseSpec`):

- ``pixel:r``: the Semantic-NeRF protocol: exactly ``round(r * n_valid)`` pixels of the view, drawn
  without replacement, are set to a class drawn uniformly from the label set's ``K`` classes (so a
  fraction ``r * (1 - 1/K)`` actually changes).
- ``lr_swap:p``: with probability ``p`` per view, every left/right flip pair of the label set is
  swapped in that view (no geometric flip): the failure of the public BiSeNet checkpoint.
- ``boundary:k``: every class region present is dilated or eroded by a random amount (a per-class
  offset in ``(-k, k)`` px applied to its signed distance field, :func:`boundary_noise`): every
  boundary moves by at most ``k`` px and every change lies within ``k`` px of an original boundary.
- ``pose:s``: degradation growing with |yaw| (:func:`pose_noise` gives the formula).

Models are applied in the fixed order boundary -> pose -> lr_swap -> pixel. Each model draws from
its own generator spawned from the caller's (one draw), so enabling one model does not change the
random pattern of another. Ignored pixels (255, or values >= K) are never changed.

Seeds: :func:`derive_seed` hashes (global seed, subject id, view id) with SHA-256, never Python's
salted ``hash()``, so the same inputs give identical labels on every machine and run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import cv2
import numpy as np

from facegs.core.labels import CANONICAL, IGNORE_INDEX, LabelSet, get_label_set

#: Inner face parts eroded by the pose model and relabelled near the occluding contour.
POSE_PARTS: tuple[str, ...] = ("l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


POSE_CONTOUR_PARTS: tuple[str, ...] = POSE_PARTS + ("l_ear", "r_ear")


@dataclass(frozen=True)
class NoiseSpec:
    """Strengths of each noise model (0 = off). ``str(spec)`` gives the canonical spec string.

    ``pixel``: ratio in [0, 1]; ``lr_swap``: probability in [0, 1]; ``boundary``: max radius in
    px (int >= 0); ``pose``: strength >= 0 (1 = the documented default severity).
    """

    pixel: float = 0.0
    lr_swap: float = 0.0
    boundary: int = 0
    pose: float = 0.0

    def __post_init__(self) -> None:
        for name, lo, hi in (("pixel", 0, 1), ("lr_swap", 0, 1), ("boundary", 0, math.inf), ("pose", 0, math.inf)):
            v = getattr(self, name)
            if not (lo <= v <= hi) or (isinstance(v, float) and not math.isfinite(v)):
                raise ValueError(f"noise '{name}' must lie in [{lo}, {hi}], got {v}")
        if int(self.boundary) != self.boundary:
            raise ValueError(f"noise 'boundary' must be a whole number of pixels, got {self.boundary}")

    @property
    def is_clean(self) -> bool:
        return not (self.pixel or self.lr_swap or self.boundary or self.pose)

    @classmethod
    def parse(cls, text: str | NoiseSpec | None) -> NoiseSpec:
        """Parse ``"name:value[,name:value...]"`` (names: pixel, lr_swap, boundary, pose).

        ``""``, ``"none"`` and ``"clean"`` mean no noise. Raises ``ValueError`` naming the bad part.
        """
        if isinstance(text, NoiseSpec):
            return text
        if text is None or text.strip().lower() in ("", "none", "clean"):
            return cls()
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, float | int] = {}
        for part in text.split(","):
            part = part.strip()
            name, sep, value = part.partition(":")
            name = name.strip().lower()
            if not sep or name not in known:
                raise ValueError(f"bad noise spec part '{part}' in '{text}': use name:value with name in {sorted(known)}")
            if name in values:
                raise ValueError(f"noise '{name}' given twice in '{text}'")
            try:
                num = float(value)
            except ValueError:
                raise ValueError(f"noise '{name}' needs a number, got '{value.strip()}' in '{text}'") from None
            if name == "boundary":
                if num != int(num):
                    raise ValueError(f"noise 'boundary' must be a whole number of pixels, got {value.strip()}")
                num = int(num)
            values[name] = num
        return cls(**values)

    def __str__(self) -> str:
        parts = [f"{f.name}:{getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name)]
        return ",".join(parts) if parts else "none"


def parse_noise_spec(text: str | NoiseSpec | None) -> NoiseSpec:
    """Function form of :meth:`NoiseSpec.parse`."""
    return NoiseSpec.parse(text)


# ---- helpers --------------------------------------------------------------------------------------
def _as_rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _valid(labels: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    return (labels < num_classes) & (labels != ignore_index)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _indices(label_set: LabelSet, names: tuple[str, ...]) -> list[int]:
    return [label_set.index(n) for n in names if n in label_set.classes]


def yaw_ramp(yaw: float | None) -> float:
    """``clip((|yaw| - 30) / 60, 0, 1)``: 0 up to 30 degrees, 1 from 90 degrees on (0 for None)."""
    if yaw is None:
        return 0.0
    return float(np.clip((abs(float(yaw)) - 30.0) / 60.0, 0.0, 1.0))


def boundary_distance(labels: np.ndarray) -> np.ndarray:
    """[H, W] float32 Euclidean distance (px) to the nearest pixel with a 4-neighbour of another label."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    dv = lab[1:] != lab[:-1]
    dh = lab[:, 1:] != lab[:, :-1]
    edge[1:] |= dv
    edge[:-1] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    if not edge.any():
        return np.full(lab.shape, np.float32(np.hypot(*lab.shape)), dtype=np.float32)
    return cv2.distanceTransform((~edge).astype(np.uint8), cv2.DIST_L2, 5)


# ---- the noise models -----------------------------------------------------------------------------
def pixel_noise(labels: np.ndarray, ratio: float, rng: np.random.Generator | int, num_classes: int,
                ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Semantic-NeRF pixel noise: ``round(ratio * n_valid)`` valid pixels get a uniform random class."""
    rng = _as_rng(rng)
    out = np.array(labels, dtype=np.uint8, copy=True)
    idx = np.flatnonzero(_valid(out, num_classes, ignore_index))
    n = int(round(ratio * idx.size))
    if n == 0:
        return out
    pick = rng.choice(idx, size=n, replace=False)
    out.reshape(-1)[pick] = rng.integers(0, num_classes, size=n).astype(np.uint8)
    return out


def lr_swap_noise(labels: np.ndarray, prob: float, rng: np.random.Generator | int,
                  label_set: LabelSet | str = CANONICAL) -> tuple[np.ndarray, bool]:
    """With probability ``prob`` swap every left/right pair of ``label_set`` in the whole view.

    Returns ``(labels, swapped)``. Exactly one uniform draw per call.
    """
    ls = get_label_set(label_set) if isinstance(label_set, str) else label_set
    swapped = bool(_as_rng(rng).random() < prob)
    out = np.array(labels, dtype=np.uint8, copy=True)
    return (ls.flip_lut()[out] if swapped else out), swapped


def boundary_noise(labels: np.ndarray, max_shift: int, rng: np.random.Generator | int, num_classes: int,
                   ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Shift class boundaries by up to ``max_shift`` px with random per-class dilation or erosion.

    Each class ``c`` present gets an offset ``g_c ~ U(-k, k)`` (``k = max_shift``; > 0 dilates,
    < 0 erodes). With ``sd_c`` the signed Euclidean distance to class ``c``'s region (depth inside,
    minus the distance outside; OpenCV ``distanceTransform``), every valid pixel takes the class
    maximising ``sd_c + g_c``. The boundary between classes ``c`` and ``e`` therefore moves by
    ``(g_c - g_e) / 2`` px towards ``e``: regions stay solid (no rings), every boundary moves by at
    most ``k`` px, and a pixel changes only if it lies within ``k`` px of another class or an
    ignored pixel. Ignored pixels never change. Loops over the classes present (two distance
    transforms each), not pixels.
    """
    rng = _as_rng(rng)
    lab = np.asarray(labels, dtype=np.uint8)
    out = lab.copy()
    if max_shift <= 0:
        return out
    valid = _valid(lab, num_classes, ignore_index)
    classes = np.unique(lab[valid])
    offsets = rng.uniform(-float(max_shift), float(max_shift), size=classes.size)
    best = np.full(lab.shape, -np.inf, dtype=np.float32)
    for c, g in zip(classes, offsets):
        mask = (lab == c).astype(np.uint8)
        inside = cv2.distanceTransform(mask, cv2.DIST_L2, 5)  # depth inside c (0 outside)
        outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)  # distance to c (0 inside)
        score = inside - outside + np.float32(g)
        win = valid & (score > best)
        out[win] = c
        best = np.where(win, score, best)
    return out


@dataclass(frozen=True)
class PoseNoiseParams:
    """Constants of :func:`pose_noise` (fractions of ``S = min(H, W)``)."""

    erode_frac: float = 0.012  # inner-part erosion radius at severity 1 (about 6 px at 512)
    contour_frac: float = 0.03  # occluding-contour band width at severity 1 (about 15 px at 512)
    skin_to_bg: float = 1.0 / 3.0  # skin within this fraction of the band becomes background
    pixel_ratio: float = 0.10  # pixel-noise ratio at severity 1


def pose_noise(labels: np.ndarray, strength: float, yaw: float | None, rng: np.random.Generator | int,
               label_set: LabelSet | str = CANONICAL, params: PoseNoiseParams = PoseNoiseParams(),
               ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Pose-dependent degradation, zero up to |yaw| = 30 degrees and growing linearly to 90.

    Severity ``t = strength * clip((|yaw| - 30) / 60, 0, 1)``; ``S = min(H, W)``:

    1. inner parts (brows, eyes, nose, mouth, lips) are eroded by ``round(t * erode_frac * S)`` px and
       the removed band becomes skin (small parts shrink or vanish in profile views);
    2. near the occluding contour, i.e. within ``w = t * contour_frac * S`` px (Euclidean) of the
       background, inner parts and ears become skin, and skin within ``skin_to_bg * w`` px becomes
       background (the silhouette is eaten);
    3. pixel noise (:func:`pixel_noise`) at ratio ``min(1, t * pixel_ratio)``.

    Classes a label set lacks are skipped. ``yaw=None`` with ``strength > 0`` raises ``ValueError``.
    """
    ls = get_label_set(label_set) if isinstance(label_set, str) else label_set
    rng = _as_rng(rng)
    out = np.array(labels, dtype=np.uint8, copy=True)
    if strength <= 0:
        return out
    if yaw is None:
        raise ValueError("pose noise needs the view's yaw")
    t = strength * yaw_ramp(yaw)
    if t <= 0:
        return out
    S = min(out.shape)
    skin = ls.index("skin") if "skin" in ls.classes else None
    bg = ls.index("background") if "background" in ls.classes else None
    parts = np.isin(out, _indices(ls, POSE_PARTS))
    k = int(round(t * params.erode_frac * S))
    if k > 0 and skin is not None and parts.any():
        kept = np.zeros_like(parts)
        for c in _indices(ls, POSE_PARTS):  # erode each part on its own (adjacent parts stay apart)
            m = out == c
            if m.any():
                kept |= cv2.erode(m.astype(np.uint8), _disk(k)).astype(bool)
        out[parts & ~kept] = skin
    w = t * params.contour_frac * S
    if w > 0 and bg is not None and (out == bg).any():
        dist = cv2.distanceTransform((out != bg).astype(np.uint8), cv2.DIST_L2, 5)
        if skin is not None:
            out[(dist <= w) & np.isin(out, _indices(ls, POSE_CONTOUR_PARTS))] = skin
            out[(dist <= params.skin_to_bg * w) & (out == skin)] = bg
    ratio = min(1.0, t * params.pixel_ratio)
    return pixel_noise(out, ratio, rng, ls.num_classes, ignore_index)


def heuristic_confidence(labels: np.ndarray, yaw: float | None = None, num_classes: int | None = None,
                         ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """A plausible per-pixel confidence [H, W] float32 computed from the (noisy) labels alone.

    Not an oracle: it never looks at where noise was injected, only at what a parser could know
    about its own output. With ``d`` the distance (px) to the nearest label boundary of ``labels``,
    ``tau = max(1, 0.01 * min(H, W))`` and the yaw ramp of :func:`yaw_ramp`:
    ``conf = (0.5 + 0.48 * (1 - exp(-d / tau))) * (1 - 0.3 * ramp(yaw))``, i.e. 0.5 on boundaries,
    up to 0.98 deep inside regions of frontal views, 30 % lower in profile. Ignored pixels get 0.
    """
    lab = np.asarray(labels)
    tau = max(1.0, 0.01 * min(lab.shape))
    d = boundary_distance(lab)
    conf = (0.5 + 0.48 * (1.0 - np.exp(-d / tau))) * (1.0 - 0.3 * yaw_ramp(yaw))
    invalid = lab == ignore_index
    if num_classes is not None:
        invalid |= lab >= num_classes
    conf[invalid] = 0.0
    return conf.astype(np.float32)


def apply_noise(
    labels: np.ndarray,
    spec: NoiseSpec | str,
    rng: np.random.Generator | int,
    yaw: float | None = None,
    label_set: LabelSet | str = CANONICAL,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply a noise spec to one ground-truth view. Returns ``(noisy [H, W] uint8, confidence [H, W] float32)``.

    ``labels`` [H, W] uint8 in ``label_set`` indices; ``rng`` a numpy Generator or an int seed (use
    :func:`derive_seed` for per-view seeds); ``yaw`` in degrees (needed by ``pose``, also lowers
    the heuristic confidence). The same (labels, spec, seed, yaw) always gives the same output.
    Order: boundary -> pose -> lr_swap -> pixel; each model uses its own spawned generator.
    """
    spec = NoiseSpec.parse(spec)
    ls = get_label_set(label_set) if isinstance(label_set, str) else label_set
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be [H, W], got shape {list(lab.shape)}")
    if lab.dtype != np.uint8:
        if lab.size and (lab.min() < 0 or lab.max() > 255):
            raise ValueError("label maps must hold values in 0..255")
        lab = lab.astype(np.uint8)
    base = int(_as_rng(rng).integers(0, 2**63 - 1))
    sub = {name: np.random.default_rng([base, i]) for i, name in enumerate(("boundary", "pose", "lr_swap", "pixel"))}
    K = ls.num_classes
    out = lab.copy()
    if spec.boundary:
        out = boundary_noise(out, int(spec.boundary), sub["boundary"], K, ignore_index)
    if spec.pose:
        out = pose_noise(out, spec.pose, yaw, sub["pose"], ls, ignore_index=ignore_index)
    if spec.lr_swap:
        out, _ = lr_swap_noise(out, spec.lr_swap, sub["lr_swap"], ls)
    if spec.pixel:
        out = pixel_noise(out, spec.pixel, sub["pixel"], K, ignore_index)
    return out, heuristic_confidence(out, yaw, K, ignore_index)
