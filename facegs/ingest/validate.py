"""Validate subject directories before anything expensive runs on them: ``facegs validate DIR``.

:func:`validate_subject` returns every :class:`Problem` it finds (it does not stop at the first),
each naming the subject, the view and the field, plus the file when there is one:

- ``subject.json`` missing, not JSON, not an object, or violating
  ``schemas/subject_manifest.schema.json`` (ids follow :mod:`facegs.core.ids`; a subject whose own
  id is invalid is reported under its directory name);
- paths that leave the subject directory (absolute, ``..``, or a symbolic link out), unless the
  user passes ``allow_external_paths`` (``--allow-external-paths``);
- duplicate view ids; fewer than ``min_views`` views;
- ``K`` non-finite or not a pinhole matrix (positive focal lengths, last row ``0 0 1``);
- ``world_to_camera`` (and ``world_from_head``) non-finite, last row not ``0 0 0 1``, rotation not
  orthonormal or a reflection (:func:`facegs.core.cameras.rotation_problem`);
- files named by a view (image, labels, confidence, mask, gt_labels, gt_depth) missing, corrupt,
  or of a size other than the view's ``width`` x ``height``;
- label maps (``labels``, ``gt_labels``) holding classes outside the label set (>= its size and
  not 255 = ignore), listing the offending values;
- ``points3d`` unreadable (``np.load(..., allow_pickle=False)``) or not ``xyz`` [P, 3].

Warnings (reported, exit code unaffected): non-zero skew in ``K``; a non-null ``distortion`` (the
pipeline assumes undistorted pinhole images); images that are not 8-bit RGB (grayscale, 16-bit,
RGBA: converted to 8-bit RGB when read), once per subject, naming the files. With ``check_images=False`` (``--quick``) pixels are
not decoded: files must exist and image headers must be readable and of the right size.

:func:`load_subject` is the gate later pipeline stages use: it raises the first error as an
:class:`facegs.core.errors.InputError` and returns the manifest otherwise.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

from facegs.core.cameras import rotation_problem
from facegs.core.errors import InputError
from facegs.core.ids import id_problem
from facegs.core.imageio import image_size, read_confidence, read_depth, read_labels, read_mask, read_rgb_noting
from facegs.core.labels import IGNORE_INDEX, get_label_set
from facegs.core.manifest import (
    MANIFEST_NAME,
    VIEW_FILE_FIELDS,
    SubjectManifest,
    find_subject_dirs,
    manifest_from_json,
    manifest_path_problems,
    schema_error_message,
)
from facegs.core.schemas import load_json_schema

ERROR = "error"


WARNING = "warning"


LABEL_FIELDS = ("labels", "gt_labels")


@dataclass(frozen=True)
class Problem:
    """One finding. ``severity`` is ``"error"`` (the subject is unusable) or ``"warning"``."""

    subject: str | None
    view: str | None
    field: str | None
    message: str
    path: str | None = None
    severity: str = ERROR

    def to_error(self) -> InputError:
        return InputError(self.message, subject=self.subject, view=self.view, field=self.field, path=self.path)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.severity}: {self.to_error()}"


class _Collector:
    """Accumulates problems for one subject."""

    def __init__(self, subject: str | None) -> None:
        self.subject = subject
        self.problems: list[Problem] = []

    def add(self, view: str | None, field: str | None, message: str, path: Any = None, severity: str = ERROR) -> None:
        self.problems.append(Problem(self.subject, view, field, message, None if path is None else str(path), severity))

    def add_error(self, e: InputError, view: str | None, field: str) -> None:
        self.add(e.view or view, e.field or field, e.message, e.path)


def _schema_problems(d: Any, col: _Collector, path: Path) -> None:
    validator = jsonschema.Draft202012Validator(load_json_schema("subject_manifest.schema.json"))
    for e in sorted(validator.iter_errors(d), key=lambda e: [str(p) for p in e.absolute_path]):
        p = list(e.absolute_path)
        view, fld = None, ".".join(str(x) for x in p) or "<root>"
        if len(p) >= 2 and p[0] == "views" and isinstance(p[1], int):
            vd = d["views"][p[1]]
            view = vd.get("view_id") if isinstance(vd, dict) and id_problem(vd.get("view_id")) is None else f"#{p[1]}"
            fld = ".".join(str(x) for x in p[2:]) or "<view>"
        col.add(view, fld, schema_error_message(e), path)


def _read_manifest_json(subject_dir: Path, col: _Collector) -> dict[str, Any] | None:
    path = subject_dir / MANIFEST_NAME
    if not path.is_file():
        col.add(None, MANIFEST_NAME, f"no {MANIFEST_NAME} in the subject directory", path)
        return None
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        col.add(None, MANIFEST_NAME, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path)
        return None
    except (OSError, UnicodeDecodeError) as e:
        col.add(None, MANIFEST_NAME, f"cannot read the manifest: {e}", path)
        return None
    if not isinstance(d, dict):
        col.add(None, MANIFEST_NAME, f"must hold a JSON object, got {type(d).__name__}", path)
        return None
    if id_problem(d.get("subject_id")) is None:
        col.subject = d["subject_id"]  # else: reported under the directory name
    n_before = len(col.problems)
    _schema_problems(d, col, path)
    return d if len(col.problems) == n_before else None


def _check_K(K: np.ndarray, view: str, col: _Collector, path: Path) -> None:
    if not np.all(np.isfinite(K)):
        col.add(view, "K", "intrinsics have non-finite entries (NaN or inf)", path)
        return
    if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9) or abs(K[1, 0]) > 1e-9:
        col.add(view, "K", f"not a pinhole intrinsic matrix (need [[fx, s, cx], [0, fy, cy], [0, 0, 1]]), got {K.tolist()}", path)
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        col.add(view, "K", f"focal lengths must be positive, got fx={K[0, 0]:g}, fy={K[1, 1]:g}", path)
    if abs(K[0, 1]) > 1e-9 * max(abs(K[0, 0]), 1.0):
        col.add(view, "K", f"non-zero skew {K[0, 1]:g} (renderers ignore it)", path, WARNING)


def _check_rigid(T: np.ndarray, view: str | None, field: str, col: _Collector, path: Path) -> None:
    if not np.all(np.isfinite(T)):
        col.add(view, field, "has non-finite entries (NaN or inf)", path)
        return
    if not np.allclose(T[3], [0.0, 0.0, 0.0, 1.0], atol=1e-9):
        col.add(view, field, f"last row must be [0, 0, 0, 1], got {T[3].tolist()}", path)
    why = rotation_problem(T[:3, :3])
    if why is not None:
        col.add(view, field, why, path)


def _resolved(m: SubjectManifest, rel: str, view: str | None, fld: str, col: _Collector) -> Path | None:
    """The file a manifest path names, or None (a problem recorded) when it leaves the subject."""
    try:
        return m.path(rel)
    except InputError as e:
        col.add(view, fld, e.message, m.root / MANIFEST_NAME if m.root else None)
        return None


def _check_points(m: SubjectManifest, col: _Collector) -> None:
    if m.points3d is None:
        return
    path = _resolved(m, m.points3d, None, "points3d", col)
    if path is None:
        return
    try:
        with np.load(path, allow_pickle=False) as z:
            if "xyz" not in z.files:
                col.add(None, "points3d", f"no 'xyz' array (arrays: {z.files})", path)
                return
            xyz = z["xyz"]
            rgb = z["rgb"] if "rgb" in z.files else None
    except FileNotFoundError:
        col.add(None, "points3d", "file does not exist", path)
        return
    except Exception as e:  # zip / format / pickle errors
        col.add(None, "points3d", f"unreadable ({type(e).__name__}: {e})", path)
        return
    if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.issubdtype(xyz.dtype, np.floating):
        col.add(None, "points3d", f"'xyz' must be a float [P, 3] array, got {xyz.dtype} {list(xyz.shape)}", path)
    elif not np.all(np.isfinite(xyz)):
        col.add(None, "points3d", "'xyz' has non-finite entries", path)
    if rgb is not None and (rgb.dtype != np.uint8 or rgb.shape != xyz.shape):
        col.add(None, "points3d", f"'rgb' must be uint8 {list(xyz.shape)}, got {rgb.dtype} {list(rgb.shape)}", path)


_READERS = {
    "labels": read_labels,
    "gt_labels": read_labels,
    "confidence": read_confidence,
    "mask": read_mask,
    "ignore": read_mask,
    "gt_depth": read_depth,
}


def _check_files(m: SubjectManifest, v: Any, col: _Collector, num_classes: int | None, check_images: bool,
                 converted: dict[str, list[str]]) -> None:
    """File checks of one view; ``converted``: conversion -> image paths (filled, for one warning)."""
    for fld in VIEW_FILE_FIELDS:
        rel = getattr(v, fld)
        if rel is None:
            continue
        path = _resolved(m, rel, v.view_id, fld, col)
        if path is None:
            continue
        if not path.is_file():
            col.add(v.view_id, fld, "file does not exist" if not path.exists() else "not a regular file", path)
            continue
        try:
            if fld == "image":
                if check_images:
                    rgb, note = read_rgb_noting(path)
                    h, w = rgb.shape[:2]
                    if note is not None:
                        converted.setdefault(note, []).append(rel)
                else:
                    w, h = image_size(path)
            elif not check_images:
                w, h = image_size(path)
            else:
                arr = _READERS[fld](path)
                h, w = arr.shape[:2]
                if fld in LABEL_FIELDS and num_classes is not None:
                    vals = np.unique(arr)
                    bad = vals[(vals >= num_classes) & (vals != IGNORE_INDEX)]
                    if bad.size:
                        col.add(
                            v.view_id, fld,
                            f"class values {bad.tolist()} are outside label set '{m.label_set}' "
                            f"(0..{num_classes - 1}, {IGNORE_INDEX} = ignore)",
                            path,
                        )
        except InputError as e:
            col.add_error(e, v.view_id, fld)
            continue
        if (w, h) != (v.width, v.height):
            what = "image" if fld == "image" else f"{fld} map"
            col.add(v.view_id, fld, f"{what} is {w}x{h} pixels but the view says {v.width}x{v.height}", path)


def check_subject(
    subject_dir: str | os.PathLike,
    *,
    check_images: bool = True,
    min_views: int = 4,
    label_set: str | None = None,
    allow_external_paths: bool = False,
    name: str | None = None,
) -> tuple[list[Problem], SubjectManifest | None]:
    """Every problem of one subject directory (empty list: valid) and its manifest (None when
    ``subject.json`` is missing, unreadable or violates the schema). ``subject.json`` is read once.

    ``check_images``: decode every image / map (label values are checked only then); otherwise
    read headers only. ``label_set`` overrides the manifest's label set for the class-range check.
    ``allow_external_paths``: the user's opt-in to paths outside the subject directory. ``name``:
    what to call the subject until its own id is known (default: the directory's name; a staged
    copy passes the original's).
    """
    subject_dir = Path(subject_dir)
    col = _Collector(name or subject_dir.name)
    d = _read_manifest_json(subject_dir, col)
    if d is None:
        return col.problems, None
    m = manifest_from_json(d, subject_dir, allow_external_paths=allow_external_paths)
    mpath = subject_dir / MANIFEST_NAME
    if not allow_external_paths:
        for view, fld, rel, why in manifest_path_problems(d):
            col.add(view, fld, f"path {rel!r} {why} (pass --allow-external-paths to read it anyway)", mpath)
    ids = [v.view_id for v in m.views]
    for vid in sorted({i for i in ids if ids.count(i) > 1}):
        col.add(vid, "view_id", f"duplicate view id (used by {ids.count(vid)} views)", mpath)
    if len(m.views) < min_views:
        col.add(None, "views", f"only {len(m.views)} views, need at least {min_views}", mpath)
    num_classes = None
    ls_name = label_set or m.label_set
    try:
        num_classes = get_label_set(ls_name).num_classes
    except KeyError as e:
        col.add(None, "label_set", str(e).strip("\"'"), mpath)
    if m.world_from_head is not None:
        _check_rigid(np.asarray(m.world_from_head), None, "world_from_head", col, mpath)
    lexical = {(view, fld) for view, fld, _, _ in manifest_path_problems(d)}
    if (None, "points3d") not in lexical:
        _check_points(m, col)
    converted: dict[str, list[str]] = {}
    for v in m.views:
        _check_K(np.asarray(v.K), v.view_id, col, mpath)
        _check_rigid(np.asarray(v.world_to_camera), v.view_id, "world_to_camera", col, mpath)
        if v.distortion is not None and np.any(np.asarray(v.distortion) != 0):
            col.add(v.view_id, "distortion", "image is distorted; facegs stages assume undistorted pinhole images", mpath, WARNING)
        if lexical and not allow_external_paths:
            v = replace(v, **{fld: None for view, fld in lexical if view == v.view_id})
        _check_files(m, v, col, num_classes, check_images, converted)
    if converted:  # one warning per subject, naming the files by kind of conversion
        parts = []
        for note, files in sorted(converted.items()):
            parts.append(f"{note}: " + ", ".join(files[:8]) + (f" and {len(files) - 8} more" if len(files) > 8 else ""))
        n = sum(len(f) for f in converted.values())
        col.add(None, "image", f"{n} image(s) are not 8-bit RGB and were converted to 8-bit RGB ({'; '.join(parts)})",
                mpath, WARNING)
    return col.problems, m


def validate_subject(subject_dir: str | os.PathLike, *, check_images: bool = True, min_views: int = 4,
                     label_set: str | None = None, allow_external_paths: bool = False) -> list[Problem]:
    """Every problem of one subject directory (empty list: valid); see :func:`check_subject`."""
    return check_subject(subject_dir, check_images=check_images, min_views=min_views, label_set=label_set,
                         allow_external_paths=allow_external_paths)[0]


def validate_tree(root: str | os.PathLike, *, check_images: bool = True, min_views: int = 4,
                  allow_external_paths: bool = False) -> dict[str, list[Problem]]:
    """Problems of every subject directory at or below ``root``, keyed by the directory's path
    relative to ``root`` (its name when ``root`` is itself a subject). Also reports subject ids used
    by more than one directory, and a root holding no subject at all.
    """
    root = Path(root)
    dirs = find_subject_dirs(root) if root.is_dir() else []
    if not dirs:
        return {root.name: [Problem(None, None, MANIFEST_NAME, f"no {MANIFEST_NAME} found at or below this directory", str(root))]}
    report: dict[str, list[Problem]] = {}
    owners: dict[str, list[str]] = {}
    for d in dirs:
        key = d.name if d == root else d.relative_to(root).as_posix()
        report[key], m = check_subject(d, check_images=check_images, min_views=min_views,
                                       allow_external_paths=allow_external_paths)
        if m is not None:
            owners.setdefault(m.subject_id, []).append(key)
    for sid, keys in owners.items():
        if len(keys) > 1:
            for k in keys:
                report[k].append(Problem(sid, None, "subject_id", f"subject id also used by {[o for o in keys if o != k]}", k))
    return report


def load_subject(
    subject_dir: str | os.PathLike, *, min_views: int = 4, check_images: bool = False, label_set: str | None = None,
    allow_external_paths: bool = False, name: str | None = None, warnings: list[Problem] | None = None,
) -> SubjectManifest:
    """Load a subject for a pipeline stage: raise the FIRST error as :class:`InputError`, else return
    the manifest. Headers only by default (``check_images=True`` decodes every file). The
    warnings found are appended to ``warnings`` when given (the factory reports them)."""
    problems, m = check_subject(subject_dir, check_images=check_images, min_views=min_views, label_set=label_set,
                                allow_external_paths=allow_external_paths, name=name)
    for p in problems:
        if p.severity == ERROR:
            raise p.to_error()
    if warnings is not None:
        warnings.extend(problems)
    assert m is not None  # no error means the manifest was readable
    return m
