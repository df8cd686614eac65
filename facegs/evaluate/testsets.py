"""Test sets for pose-binned evaluation: synthetic grid subjects, or a user's labelled views.

In: a directory of facegs subjects (``gt_labels``, else ``labels``) or a flat CelebAMask-HQ-style
directory (``images/`` + ``labels/`` in a declared label set, optional ``poses.csv``). Out: a list of
:class:`facegs.train.data.ViewItem` (image, label map, pose). :func:`make_test_set` renders held-out
synthetic subjects on a yaw x pitch grid.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from facegs.core.errors import InputError
from facegs.core.hashing import derive_seed
from facegs.core.imageio import read_labels, read_rgb
from facegs.core.labels import CANONICAL, IGNORE_INDEX, get_label_set, remap
from facegs.core.manifest import find_subject_dirs, load_manifest
from facegs.core.storage import atomic_write_bytes
from facegs.synth.generate import generate_subject
from facegs.synth.rigs import custom
from facegs.train.data import ViewItem, collect_views

#: Default synthetic grid (degrees, rig frame): yaw -90..90 every 15, three pitch rows.
DEFAULT_YAWS: tuple[float, ...] = tuple(float(y) for y in range(-90, 91, 15))


DEFAULT_PITCHES: tuple[float, ...] = (-30.0, 0.0, 30.0)


TEST_SET_META = "test_set.json"


IMAGE_EXTS = (".png", ".jpg", ".jpeg")


LABEL_DIRS = ("labels", "masks", "mask")


def make_test_set(
    out_dir: str | os.PathLike,
    n_subjects: int,
    seed: int = 0,
    res: int = 128,
    yaws: Sequence[float] = DEFAULT_YAWS,
    pitches: Sequence[float] = DEFAULT_PITCHES,
    background: str = "world",
    progress: bool = False,
) -> list[Path]:
    """Synthetic held-out subjects ``out_dir/test_XXXX`` rendered on a yaw x pitch grid; their dirs.

    Each subject has ``len(yaws) * len(pitches)`` views (``res`` x ``res`` px; pitch rows outer,
    yaw inner: ``cam_000`` is ``(pitches[0], yaws[0])``) with exact ground-truth labels
    (``gt_labels``). ``yaws``/``pitches`` are RIG angles in degrees (yaw +90 = camera on the
    subject's left); each subject's head is posed a few degrees off the rig centre, so the views'
    head-relative poses recorded in ``subject.json`` (which the reports bin by) differ from the grid
    by a few degrees. Seeds come from their own namespace (``derive_seed("eval-test", seed, i)``),
    so test subjects never coincide with the base parser's training subjects (``"base-train"``).

    Existing complete subjects are kept (an interrupted run resumes). ``out_dir/test_set.json``
    records the grid; asking for a different grid, seed, resolution or background in the same
    directory raises ``ValueError`` rather than mixing two test sets (a larger ``n_subjects`` extends
    the set).
    """

    if n_subjects < 1:
        raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
    yaws = [float(y) for y in yaws]
    pitches = [float(p) for p in pitches]
    if not yaws or not pitches:
        raise ValueError("the grid needs at least one yaw and one pitch")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec = {"format": "facegs.test_set", "version": 1, "seed": int(seed), "res": int(res), "yaws": yaws,
            "pitches": pitches, "background": background, "seed_namespace": "eval-test"}
    meta_path = out / TEST_SET_META
    if meta_path.is_file():
        old = json.loads(meta_path.read_text(encoding="utf-8"))
        diff = [k for k in spec if old.get(k) != spec[k]]
        if diff:
            raise ValueError(f"{out} holds a test set made with other settings ({', '.join(diff)}: "
                             f"{ {k: old.get(k) for k in diff} } != { {k: spec[k] for k in diff} }); "
                             f"use another directory")
    else:
        atomic_write_bytes(meta_path, json.dumps(spec, indent=1).encode("utf-8"))
    grid = list(itertools.product(pitches, yaws))
    views = custom([y for _, y in grid], [p for p, _ in grid], width=res, height=res)
    dirs = []
    for i in tqdm(range(n_subjects), desc="test subjects", disable=not progress, dynamic_ncols=True):
        sid = f"test_{i:04d}"
        d = out / sid
        if not (d / "subject.json").is_file():
            s = derive_seed("eval-test", int(seed), i) & 0x7FFFFFFF
            generate_subject(out, sid, s, rig=views, res=res, background=background, overwrite=d.exists())
        dirs.append(d)
    return dirs


def _read_poses_csv(path: Path) -> dict[str, tuple[float, float]]:
    """``name,yaw,pitch`` rows (header required) -> ``{name or stem: (yaw, pitch)}``."""
    poses: dict[str, tuple[float, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if not {"name", "yaw", "pitch"} <= cols:
            raise InputError(f"poses.csv needs the columns name,yaw,pitch; found {sorted(cols)}", path=str(path))
        for k, row in enumerate(reader, start=2):
            try:
                yaw, pitch = float(row["yaw"]), float(row["pitch"])
            except (TypeError, ValueError):
                raise InputError(f"line {k}: yaw/pitch must be numbers, got {row['yaw']!r}, {row['pitch']!r}",
                                 path=str(path)) from None
            name = row["name"].strip()
            poses[name] = poses[Path(name).stem] = (yaw, pitch)
    return poses


def _check_label_values(path: str, label_set: str) -> None:
    lab = read_labels(path)
    k = get_label_set(label_set).num_classes
    bad = np.unique(lab[(lab >= k) & (lab != IGNORE_INDEX)])
    if bad.size:
        raise InputError(f"label map holds values {bad[:10].tolist()} outside label set '{label_set}' "
                         f"({k} classes, 255 = ignore): wrong --label-set, or a colour-coded map?", path=path)


def _flat_items(root: Path, label_set: str | None) -> list[ViewItem]:
    img_dir = root / "images"
    lab_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    if lab_dir is None:
        raise InputError("no subject.json below it, and no images/ + labels/ (flat CelebAMask-HQ style) in it",
                         path=str(root))
    if label_set is None:
        raise InputError("a flat images/ + labels/ directory needs its label set declared (--label-set; "
                         "'celebamask_hq' = the official CelebAMask-HQ mask order, 'celebamask19' = BiSeNet order)",
                         field="label_set", path=str(root))
    get_label_set(label_set)  # unknown name -> KeyError listing the sets
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    labels = {p.stem: p for p in sorted(lab_dir.iterdir()) if p.suffix.lower() == ".png"}
    poses = _read_poses_csv(root / "poses.csv") if (root / "poses.csv").is_file() else {}
    items = []
    nan = float("nan")
    for stem in sorted(images.keys() & labels.keys()):
        yaw, pitch = poses.get(images[stem].name, poses.get(stem, (nan, nan)))
        items.append(ViewItem(root.name, stem, str(images[stem].resolve()), str(labels[stem].resolve()),
                              label_set, yaw, pitch))
    for it in items[:8]:  # catch a wrong --label-set early (values beyond the set would be ignored silently)
        _check_label_values(it.labels, label_set)
    return items


def _subject_items(subject_dir: Path, label_set: str | None, label_field: str | None) -> list[ViewItem]:
    m = load_manifest(subject_dir)
    if label_set is not None and label_set != m.label_set:
        raise InputError(f"--label-set '{label_set}' declared but the subject's manifest says '{m.label_set}'",
                         subject=m.subject_id, field="label_set", path=str(subject_dir / "subject.json"))
    field = label_field
    if field is None:
        for cand in ("gt_labels", "labels"):
            if m.views and all(getattr(v, cand) is not None for v in m.views):
                field = cand
                break
        else:
            raise InputError("no label field ('gt_labels' or 'labels') that every view has", subject=m.subject_id,
                             path=str(subject_dir / "subject.json"))
    return collect_views([subject_dir], label_field=field)


def load_test_items(
    source: str | os.PathLike | Iterable[str | os.PathLike],
    label_set: str | None = None,
    label_field: str | None = None,
) -> list[ViewItem]:
    """The labelled views of a test set as :class:`ViewItem` s (absolute paths, poses in degrees).

    ``source``: a directory (or several) holding either

    - facegs subject directories (any depth, each with ``subject.json``): reference labels are
      ``label_field`` (default: ``gt_labels`` when every view of a subject has it, else ``labels``);
      the manifest's label set is used (a ``label_set`` that contradicts it is an error); poses are
      the manifest's head-relative poses (NaN where a view has none); or
    - a flat CelebAMask-HQ-style directory: ``images/*.png|jpg`` and ``labels/*.png`` (or ``masks/``)
      matched by file stem, label maps as 8-bit class indices in the declared ``label_set``
      (required; e.g. ``celebamask_hq``). Pose is unknown (NaN) unless ``poses.csv`` (columns
      ``name,yaw,pitch``; name = file name or stem; facegs conventions) gives it. ``subject_id`` is
      the directory's name, ``view_id`` the file stem.

    Raises :class:`InputError` when a source does not exist or nothing labelled is found.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)

    items: list[ViewItem] = []
    for src in sources:
        root = Path(src)
        if not root.is_dir():
            raise InputError("test set directory does not exist", path=str(root))
        subject_dirs = find_subject_dirs(root)
        if subject_dirs:
            for sd in subject_dirs:
                items.extend(_subject_items(sd, label_set, label_field))
        else:
            items.extend(_flat_items(root, label_set))
    if not items:
        raise InputError("the test set is empty: no labelled views found", path=", ".join(str(s) for s in sources))
    return items


def read_canonical_labels(item: ViewItem) -> np.ndarray:
    """The reference label map of ``item`` [H, W] uint8 in ``celebamask19`` indices (255 = ignore)."""
    return remap(read_labels(item.labels), item.label_set, CANONICAL)


def read_pair(item: ViewItem) -> tuple[np.ndarray, np.ndarray]:
    """(RGB [H, W, 3] uint8 at the label map's size, canonical labels [H, W] uint8)."""
    rgb, gt = read_rgb(item.image), read_canonical_labels(item)
    h, w = gt.shape
    if rgb.shape[:2] != (h, w):
        shrink = rgb.shape[0] > h or rgb.shape[1] > w
        rgb = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return rgb, gt
