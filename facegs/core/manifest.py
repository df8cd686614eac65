"""Subject manifests: one ``subject.json`` per subject directory.

A subject directory holds ``subject.json`` and the files it names (paths relative to the
directory). Schema: ``schemas/subject_manifest.schema.json`` (JSON Schema) and
:data:`VIEW_ARROW_SCHEMA` (one row per view, for catalogues of many subjects in Parquet).

Per view: ``K`` [3, 3] with pixel centres at +0.5, ``world_to_camera`` [4, 4] in OpenCV
convention, optional OpenCV ``distortion``, and optional ``labels`` / ``confidence`` / ``mask`` / ``ignore`` /
``gt_labels`` / ``gt_depth`` image paths.

Ids follow :mod:`facegs.core.ids`; every path (view files, ``points3d``) is relative to the subject
directory and stays inside it (:func:`manifest_path_problems`, :meth:`SubjectManifest.path`), unless
the manifest is loaded with ``allow_external_paths=True`` -- the user's opt-in, never the manifest's.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pyarrow as pa

from facegs.core.errors import InputError
from facegs.core.ids import id_problem, relative_path_problem, resolve_inside
from facegs.core.schemas import load_json_schema
from facegs.core.storage import atomic_write_bytes

MANIFEST_NAME = "subject.json"
SCHEMA_VERSION = 1
VIEW_FILE_FIELDS = ("image", "labels", "confidence", "mask", "ignore", "gt_labels", "gt_depth")


@dataclass(frozen=True)
class View:
    """One calibrated view. ``K`` [3, 3] float64; ``world_to_camera`` [4, 4] float64 (OpenCV)."""

    view_id: str
    image: str
    width: int
    height: int
    K: np.ndarray
    world_to_camera: np.ndarray
    distortion: np.ndarray | None = None
    labels: str | None = None
    confidence: str | None = None
    mask: str | None = None
    ignore: str | None = None
    gt_labels: str | None = None
    gt_depth: str | None = None
    pose: dict[str, float] | None = None  # {"yaw", "pitch", "roll"} in degrees, head-relative
    weight: float = 1.0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "view_id": self.view_id,
            "image": self.image,
            "width": int(self.width),
            "height": int(self.height),
            "K": np.asarray(self.K, dtype=np.float64).tolist(),
            "world_to_camera": np.asarray(self.world_to_camera, dtype=np.float64).tolist(),
        }
        if self.distortion is not None:
            d["distortion"] = np.asarray(self.distortion, dtype=np.float64).tolist()
        for k in ("labels", "confidence", "mask", "ignore", "gt_labels", "gt_depth"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.pose is not None:
            d["pose"] = {k: float(self.pose[k]) for k in ("yaw", "pitch", "roll")}
        if self.weight != 1.0:
            d["weight"] = float(self.weight)
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> View:
        return View(
            view_id=d["view_id"],
            image=d["image"],
            width=int(d["width"]),
            height=int(d["height"]),
            K=np.asarray(d["K"], dtype=np.float64),
            world_to_camera=np.asarray(d["world_to_camera"], dtype=np.float64),
            distortion=None if d.get("distortion") is None else np.asarray(d["distortion"], dtype=np.float64),
            labels=d.get("labels"),
            confidence=d.get("confidence"),
            mask=d.get("mask"),
            ignore=d.get("ignore"),
            gt_labels=d.get("gt_labels"),
            gt_depth=d.get("gt_depth"),
            pose=d.get("pose"),
            weight=float(d.get("weight", 1.0)),
        )


@dataclass(frozen=True)
class SubjectManifest:
    """A subject: id, label set of its label maps, views, optional ground-truth head pose and points.

    ``root`` is the subject directory that relative paths resolve against; ``allow_external_paths``
    lets :meth:`path` leave it (the user's opt-in). Neither is serialised.
    """

    subject_id: str
    label_set: str
    views: tuple[View, ...]
    world_from_head: np.ndarray | None = None  # [4, 4] head -> world, ground truth when known
    points3d: str | None = None
    source: dict[str, Any] = field(default_factory=dict)
    root: Path | None = field(default=None, compare=False)
    allow_external_paths: bool = field(default=False, compare=False)

    def path(self, rel: str) -> Path:
        """Resolve a path from the manifest against the subject directory; :class:`InputError` when
        it leaves the directory (absolute, ``..``, or a symbolic link out) unless
        ``allow_external_paths``."""
        if self.root is None:
            return Path(rel)
        return resolve_inside(self.root, rel, allow_outside=self.allow_external_paths, subject=self.subject_id,
                              path=str(self.root / MANIFEST_NAME))

    def view(self, view_id: str) -> View:
        for v in self.views:
            if v.view_id == view_id:
                return v
        raise KeyError(f"subject '{self.subject_id}' has no view '{view_id}'")

    def with_views(self, views: list[View] | tuple[View, ...]) -> SubjectManifest:
        return replace(self, views=tuple(views))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "subject_id": self.subject_id,
            "label_set": self.label_set,
        }
        if self.world_from_head is not None:
            d["world_from_head"] = np.asarray(self.world_from_head, dtype=np.float64).tolist()
        if self.points3d is not None:
            d["points3d"] = self.points3d
        if self.source:
            d["source"] = self.source
        d["views"] = [v.to_json() for v in self.views]
        return d

    def to_arrow(self) -> pa.Table:
        """One row per view, in :data:`VIEW_ARROW_SCHEMA`."""
        rows = []
        for v in self.views:
            rows.append(
                {
                    "subject_id": self.subject_id,
                    "label_set": self.label_set,
                    "view_id": v.view_id,
                    "image": v.image,
                    "width": v.width,
                    "height": v.height,
                    "K": np.asarray(v.K, dtype=np.float64).reshape(-1).tolist(),
                    "world_to_camera": np.asarray(v.world_to_camera, dtype=np.float64).reshape(-1).tolist(),
                    "distortion": None if v.distortion is None else np.asarray(v.distortion).tolist(),
                    "labels": v.labels,
                    "confidence": v.confidence,
                    "mask": v.mask,
                    "ignore": v.ignore,
                    "gt_labels": v.gt_labels,
                    "gt_depth": v.gt_depth,
                    "yaw": None if v.pose is None else v.pose["yaw"],
                    "pitch": None if v.pose is None else v.pose["pitch"],
                    "roll": None if v.pose is None else v.pose["roll"],
                    "weight": v.weight,
                }
            )
        return pa.Table.from_pylist(rows, schema=VIEW_ARROW_SCHEMA)


VIEW_ARROW_SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.string(), nullable=False),
        pa.field("label_set", pa.string(), nullable=False),
        pa.field("view_id", pa.string(), nullable=False),
        pa.field("image", pa.string(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("K", pa.list_(pa.float64(), 9), nullable=False),
        pa.field("world_to_camera", pa.list_(pa.float64(), 16), nullable=False),
        pa.field("distortion", pa.list_(pa.float64())),
        pa.field("labels", pa.string()),
        pa.field("confidence", pa.string()),
        pa.field("mask", pa.string()),
        pa.field("ignore", pa.string()),
        pa.field("gt_labels", pa.string()),
        pa.field("gt_depth", pa.string()),
        pa.field("yaw", pa.float64()),
        pa.field("pitch", pa.float64()),
        pa.field("roll", pa.float64()),
        pa.field("weight", pa.float64(), nullable=False),
    ],
    metadata={"facegs.schema": "subject_manifest_views", "facegs.schema_version": str(SCHEMA_VERSION)},
)


def _json_path(err: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in err.absolute_path) or "<root>"


def schema_error_message(e: jsonschema.ValidationError) -> str:
    """The message of one schema violation; identifiers get the identifier rule's own words."""
    p = list(e.absolute_path)
    if e.validator == "pattern" and p and p[-1] in ("subject_id", "view_id"):
        return f"{p[-1].replace('_', ' ')} {e.instance!r} {id_problem(e.instance)} (identifier rule: docs/conventions.md)"
    return f"schema violation: {e.message}"


def manifest_path_problems(d: dict[str, Any]) -> list[tuple[str | None, str, str, str]]:
    """``(view id or None, field, path, why)`` for every path in a schema-valid manifest dict that
    is not a plain relative path inside the subject directory (text only; links are checked when
    the files are opened, :meth:`SubjectManifest.path`)."""
    out = []
    if d.get("points3d") is not None and (why := relative_path_problem(d["points3d"])):
        out.append((None, "points3d", d["points3d"], why))
    for v in d.get("views", []):
        for fld in VIEW_FILE_FIELDS:
            rel = v.get(fld)
            if rel is not None and (why := relative_path_problem(rel)):
                out.append((v.get("view_id"), fld, rel, why))
    return out


def check_manifest_json(d: Any, *, path: str | None = None, allow_external_paths: bool = False) -> None:
    """Validate a parsed ``subject.json`` against the JSON Schema and the path rule; raise
    :class:`InputError` naming the subject, the view (by ``view_id`` when readable) and the field.
    """
    schema = load_json_schema("subject_manifest.schema.json")
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(d), key=lambda e: [str(x) for x in e.absolute_path])
    if not errors:
        if not allow_external_paths:
            for view, fld, rel, why in manifest_path_problems(d):
                raise InputError(f"path {rel!r} {why} (pass --allow-external-paths to read it anyway)", subject=d["subject_id"],
                                 view=view, field=fld, path=path)
        return
    e = errors[0]
    subject = d.get("subject_id") if isinstance(d, dict) and id_problem(d.get("subject_id")) is None else None
    view = None
    fld = _json_path(e)
    p = list(e.absolute_path)
    if len(p) >= 2 and p[0] == "views" and isinstance(p[1], int):
        vd = d["views"][p[1]]
        view = vd.get("view_id") if isinstance(vd, dict) and id_problem(vd.get("view_id")) is None else f"#{p[1]}"
        fld = ".".join(str(x) for x in p[2:]) or "<view>"
    more = f" (+{len(errors) - 1} more schema errors)" if len(errors) > 1 else ""
    raise InputError(f"{schema_error_message(e)}{more}", subject=subject, view=view, field=fld, path=path)


def load_manifest(path: str | os.PathLike, *, allow_external_paths: bool = False) -> SubjectManifest:
    """Load and schema-check a manifest from a subject directory or a ``subject.json`` path
    (``allow_external_paths``: the user's opt-in to paths outside the subject directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise InputError(f"no {MANIFEST_NAME} found", path=str(p))
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", path=str(p)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the manifest: {e}", path=str(p)) from None
    check_manifest_json(d, path=str(p), allow_external_paths=allow_external_paths)
    return manifest_from_json(d, p.parent, allow_external_paths=allow_external_paths)


def manifest_from_json(d: dict[str, Any], root: Path | None, *, allow_external_paths: bool = False) -> SubjectManifest:
    """A :class:`SubjectManifest` from a parsed ``subject.json`` that passed :func:`check_manifest_json`
    (``root``: the subject directory its paths resolve against)."""
    return SubjectManifest(
        subject_id=d["subject_id"],
        label_set=d["label_set"],
        views=tuple(View.from_json(v) for v in d["views"]),
        world_from_head=None if d.get("world_from_head") is None else np.asarray(d["world_from_head"], dtype=np.float64),
        points3d=d.get("points3d"),
        source=d.get("source", {}),
        root=root,
        allow_external_paths=allow_external_paths,
    )


def manifest_bytes(m: SubjectManifest) -> bytes:
    """Canonical serialisation (stable key order, indent 1, trailing newline)."""
    return (json.dumps(m.to_json(), indent=1) + "\n").encode("utf-8")


def save_manifest(m: SubjectManifest, subject_dir: str | os.PathLike | None = None) -> Path:
    """Schema-check and write ``subject.json`` atomically into ``subject_dir`` (default ``m.root``)."""
    d = m.to_json()
    check_manifest_json(d, allow_external_paths=m.allow_external_paths)
    out_dir = Path(subject_dir) if subject_dir is not None else m.root
    if out_dir is None:
        raise ValueError("save_manifest needs a subject directory (manifest has no root)")
    out = out_dir / MANIFEST_NAME
    atomic_write_bytes(out, manifest_bytes(m))
    return out


def find_subject_dirs(root: str | os.PathLike) -> list[Path]:
    """Subject directories at or below ``root`` (each holding a ``subject.json``), sorted."""
    root = Path(root)
    if (root / MANIFEST_NAME).is_file():
        return [root]
    return sorted(p.parent for p in root.rglob(MANIFEST_NAME) if not p.parent.name.startswith("."))
