"""Label sets (``schemas/labels/*.json``) and mappings between them.

facegs' canonical set is ``celebamask19``: the 19 CelebAMask-HQ classes in the BiSeNet order
(0 background, 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye, 6 eye_g, 7 l_ear, 8 r_ear, 9 ear_r,
10 nose, 11 mouth, 12 u_lip, 13 l_lip, 14 neck, 15 neck_l, 16 cloth, 17 hair, 18 hat).

Left and right: in facegs ``l_*`` always means the SUBJECT's own (anatomical) left. In a frontal
image the subject's left eye therefore appears on the image's right-hand side (larger x). A source
set whose ``left_convention`` is ``"viewer"`` has its pairs swapped when mapped to or from a set of
the other convention. :func:`estimate_left_convention` decides a data set's convention empirically.

Unmapped classes: every mapping goes through the canonical set. A source class without a canonical
counterpart and a canonical class without a target counterpart map to the target's explicit choice
in ``from_canonical`` (documented in the JSON); if a set gives none, it maps to ``IGNORE_INDEX``
(255), never silently to background. Values outside a set's range also map to ``IGNORE_INDEX``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from facegs.core.schemas import schema_dir

CANONICAL = "celebamask19"
IGNORE_INDEX = 255


@dataclass(frozen=True)
class LabelSet:
    """One label set: class names in index order, a display palette and left/right flip pairs."""

    name: str
    version: int
    classes: tuple[str, ...]
    palette: np.ndarray = field(repr=False)  # [K, 3] uint8 RGB
    flip_pairs: tuple[tuple[str, str], ...]
    left_convention: str = "subject"
    to_canonical: dict[str, str | None] | None = field(default=None, repr=False)
    from_canonical: dict[str, str | None] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        """Index of class ``name``; raises ``KeyError`` naming the set's classes otherwise."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise KeyError(f"label set '{self.name}' has no class '{name}'; classes: {self.classes}") from None

    @property
    def flip_permutation(self) -> np.ndarray:
        """[K] int64: class index -> class index after a horizontal image flip (pairs swapped)."""
        perm = np.arange(self.num_classes, dtype=np.int64)
        for a, b in self.flip_pairs:
            ia, ib = self.index(a), self.index(b)
            perm[ia], perm[ib] = ib, ia
        return perm

    def flip_lut(self) -> np.ndarray:
        """[256] uint8 lookup table implementing :attr:`flip_permutation` (255 stays 255)."""
        lut = np.arange(256, dtype=np.uint8)
        lut[: self.num_classes] = self.flip_permutation.astype(np.uint8)
        return lut

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """[H, W] uint8 class indices -> [H, W, 3] uint8 RGB using the palette (ignore = white)."""
        pal = np.full((256, 3), 255, dtype=np.uint8)
        pal[: self.num_classes] = self.palette
        return pal[labels]


def available_label_sets() -> list[str]:
    """Names of the label sets shipped in ``schemas/labels``."""
    return sorted(p.stem for p in (schema_dir() / "labels").glob("*.json"))


def get_label_set(name: str | LabelSet | None = CANONICAL) -> LabelSet:
    """Load a label set by name (``celebamask19``, ``celebamask_hq``, ``farl``, ``lapa11``).

    ``None`` means the canonical set; a :class:`LabelSet` is returned as it is.
    """
    if isinstance(name, LabelSet):
        return name
    return _load_label_set(CANONICAL if name is None else name)


@cache
def _load_label_set(name: str) -> LabelSet:
    path = schema_dir() / "labels" / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"unknown label set '{name}'; available: {available_label_sets()}")
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    classes = tuple(d["classes"])
    palette = np.asarray(d["palette"], dtype=np.uint8)
    if palette.shape != (len(classes), 3):
        raise ValueError(f"{path}: palette must be [{len(classes)}, 3], got {list(palette.shape)}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path}: duplicate class names")
    return LabelSet(
        name=d["name"],
        version=int(d["version"]),
        classes=classes,
        palette=palette,
        flip_pairs=tuple((a, b) for a, b in d.get("flip_pairs", [])),
        left_convention=d.get("left_convention", "subject"),
        to_canonical=d.get("to_canonical"),
        from_canonical=d.get("from_canonical"),
    )


def _canonical_swap(canon: LabelSet) -> dict[str, str]:
    swap = {}
    for a, b in canon.flip_pairs:
        swap[a], swap[b] = b, a
    return swap


def mapping_lut(src: LabelSet | str, dst: LabelSet | str) -> np.ndarray:
    """[256] uint8 lookup table: a ``src`` class index -> the ``dst`` class index.

    Goes src -> canonical -> dst. Indices >= src.num_classes and 255 map to ``IGNORE_INDEX``.
    Left/right pairs are swapped when the two sets declare different ``left_convention``.
    """
    src, dst = get_label_set(src), get_label_set(dst)
    canon = get_label_set(CANONICAL)
    swap = _canonical_swap(canon) if src.left_convention != dst.left_convention else {}
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for i, name in enumerate(src.classes):
        cname = name if src.to_canonical is None else src.to_canonical.get(name)
        if cname is None:
            continue
        if cname not in canon.classes:
            raise ValueError(f"label set '{src.name}' maps '{name}' to unknown canonical class '{cname}'")
        cname = swap.get(cname, cname)
        dname = cname if dst.from_canonical is None else dst.from_canonical.get(cname)
        if dname is None:
            continue
        lut[i] = dst.index(dname)
    return lut


def remap(labels: np.ndarray, src: LabelSet | str, dst: LabelSet | str) -> np.ndarray:
    """Map a uint8 label map (any shape) from ``src`` to ``dst`` indices (see :func:`mapping_lut`)."""
    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError("label maps must hold values in 0..255")
        labels = labels.astype(np.uint8)
    return mapping_lut(src, dst)[labels]


def estimate_left_convention(label_maps: list[np.ndarray], label_set: LabelSet | str) -> tuple[str, float]:
    """Decide empirically whether ``l_*`` means the subject's or the viewer's left.

    ``label_maps``: [H, W] uint8 maps of near-frontal images. For each flip pair the mean
    x-centroid of the "left" class is compared with the "right" class. On a frontal image the
    subject's left appears at larger x. Returns ``("subject" | "viewer", fraction_agreeing)``,
    where the fraction counts (image, pair) votes where both classes were present.
    """
    ls = get_label_set(label_set)
    votes_subject = votes = 0
    for lab in label_maps:
        xs = np.arange(lab.shape[1])[None, :]
        for a, b in ls.flip_pairs:
            ma, mb = lab == ls.index(a), lab == ls.index(b)
            if ma.any() and mb.any():
                cx_a = (np.broadcast_to(xs, lab.shape)[ma]).mean()
                cx_b = (np.broadcast_to(xs, lab.shape)[mb]).mean()
                votes += 1
                votes_subject += int(cx_a > cx_b)
    if votes == 0:
        raise ValueError("no image holds both classes of any left/right pair: cannot decide")
    frac = votes_subject / votes
    return ("subject", frac) if frac >= 0.5 else ("viewer", 1.0 - frac)
