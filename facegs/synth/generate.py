"""Write synthetic subjects to disk in the facegs subject-manifest format.

A subject directory (``OUT_DIR/SUBJECT_ID``) holds::

    subject.json               manifest (label_set "celebamask19", world_from_head, source.params)
    images/cam_000.png         RGB
    gt_labels/cam_000.png      exact labels, palette PNG (pixel value = celebamask19 index)
    gt_depth/cam_000.png       camera-z depth, 16-bit PNG in 0.1 mm units, 0 = background
    masks/cam_000.png          foreground mask (alpha > 0.5), 0/255

It is written atomically (:func:`facegs.core.storage.atomic_directory`): after a failure nothing is left.
Everything is deterministic in ``seed``; :func:`subject_seed` derives per-subject seeds from a
master seed and an index (stable across platforms and versions: SHA-256, not Python's ``hash``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from facegs.core.cameras import w2c_to_head_pose
from facegs.core.imageio import write_depth, write_labels, write_mask, write_rgb
from facegs.core.manifest import SubjectManifest, View, save_manifest
from facegs.core.storage import atomic_directory
from facegs.synth.head import build_head
from facegs.synth.params import HeadParams, sample_head_params
from facegs.synth.raytrace import TraceSettings, render_views
from facegs.synth.rigs import RigView, get_rig
from facegs.synth.shading import BACKGROUNDS

GENERATOR_VERSION = 1
LABEL_SET = "celebamask19"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def subject_seed(master_seed: int, index: int) -> int:
    """Seed of subject ``index`` of a run with ``master_seed`` (31-bit, stable forever)."""
    digest = hashlib.sha256(f"facegs.synth:{int(master_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def subject_id_for(index: int, prefix: str = "synth") -> str:
    """``synth_0000``-style subject id of subject ``index``."""
    return f"{prefix}_{int(index):04d}"


def generate_subject(
    out_dir: str | os.PathLike,
    subject_id: str,
    seed: int,
    rig: str | Sequence[RigView] = "facescape",
    res: int = 256,
    background: str = "world",
    symmetric: bool = False,
    *,
    overwrite: bool = False,
    write_masks: bool = True,
    params: HeadParams | None = None,
    settings: TraceSettings = TraceSettings(),  # noqa: B008 (frozen dataclass: one shared instance is fine)
    views_per_batch: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> SubjectManifest:
    """Render one synthetic subject into ``out_dir / subject_id`` and return its manifest.

    ``rig``: a rig name (``facescape``, ``nersemble``; images ``res`` x ``res``) or an explicit list
    of ``(view_id, K, world_to_camera)`` (e.g. from :func:`facegs.synth.rigs.custom`; each view is
    ``res`` x ``res``, so build K for that size). ``params`` overrides the parameters sampled from
    ``seed`` (``seed`` is still recorded). Views are rendered in batches of ``views_per_batch``
    (default: as many as fit in ``settings.chunk_rays`` rays); ``progress(n)`` is called after each
    batch of ``n`` views.
    Raises ``FileExistsError`` when the directory exists and ``overwrite`` is false.
    The returned manifest's ``root`` is the subject directory.
    """
    if not _ID_RE.match(subject_id):
        raise ValueError(f"subject_id must match [A-Za-z0-9_-]+ (no dots), got '{subject_id}'")
    if not 16 <= int(res) <= 4096:
        raise ValueError(f"res must be within 16..4096 pixels, got {res}")
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS}, got '{background}'")
    if isinstance(rig, str):
        rig_name, views = rig, get_rig(rig, res, res)
    else:
        rig_name, views = "custom", list(rig)
    if not views:
        raise ValueError("the rig has no views")
    ids = [v[0] for v in views]
    if len(set(ids)) != len(ids) or not all(_ID_RE.match(i) for i in ids):
        raise ValueError(f"view ids must be unique and match [A-Za-z0-9_-]+, got {ids}")

    P = params if params is not None else sample_head_params(seed, symmetric=symmetric)
    head = build_head(P)
    T = P.world_from_head_matrix
    final = Path(out_dir) / subject_id
    manifest_views: list[View] = []
    with atomic_directory(final, overwrite=overwrite) as tmp:
        for sub in ("images", "gt_labels", "gt_depth") + (("masks",) if write_masks else ()):
            (tmp / sub).mkdir()
        per = views_per_batch or max(1, settings.chunk_rays // (int(res) * int(res)))
        for b in range(0, len(views), per):
            chunk = views[b : b + per]
            seeds = [P.background_seed * 1000 + b + i for i in range(len(chunk))]
            outs = render_views(head, [(K, w2c, res, res) for _, K, w2c in chunk], T, background, seeds, settings)
            for (vid, K, w2c), out in zip(chunk, outs, strict=True):
                write_rgb(tmp / "images" / f"{vid}.png", out["rgb"])
                write_labels(tmp / "gt_labels" / f"{vid}.png", out["labels"], LABEL_SET)
                write_depth(tmp / "gt_depth" / f"{vid}.png", out["depth"])
                if write_masks:
                    write_mask(tmp / "masks" / f"{vid}.png", out["alpha"] > 0.5)
                yaw, pitch, roll = w2c_to_head_pose(w2c, T)
                manifest_views.append(View(
                    view_id=vid, image=f"images/{vid}.png", width=int(res), height=int(res),
                    K=np.asarray(K, dtype=np.float64), world_to_camera=np.asarray(w2c, dtype=np.float64),
                    mask=f"masks/{vid}.png" if write_masks else None,
                    gt_labels=f"gt_labels/{vid}.png", gt_depth=f"gt_depth/{vid}.png",
                    pose={"yaw": yaw, "pitch": pitch, "roll": roll},
                ))
            if progress is not None:
                progress(len(chunk))
        manifest = SubjectManifest(
            subject_id=subject_id,
            label_set=LABEL_SET,
            views=tuple(manifest_views),
            world_from_head=T,
            source={
                "format": "synth",
                "generator": "facegs.synth",
                "generator_version": GENERATOR_VERSION,
                "seed": int(seed),
                "rig": rig_name,
                "res": int(res),
                "background": background,
                "symmetric": bool(P.symmetric),
                "params": P.to_dict(),
            },
            root=final,
        )
        save_manifest(manifest, tmp)
    return manifest


def generate_dataset(
    out_dir: str | os.PathLike,
    n_subjects: int,
    master_seed: int = 0,
    start: int = 0,
    skip_existing: bool = False,
    **kw,
) -> list[Path]:
    """Generate subjects ``start .. start + n_subjects - 1`` as ``out_dir/synth_XXXX``; returns their dirs.

    ``kw`` goes to :func:`generate_subject`. With ``skip_existing`` a subject whose directory
    already has a ``subject.json`` is left alone (resume an interrupted run).
    """
    dirs = []
    for i in range(start, start + n_subjects):
        sid = subject_id_for(i)
        d = Path(out_dir) / sid
        if not (skip_existing and (d / "subject.json").is_file()):
            generate_subject(out_dir, sid, subject_seed(master_seed, i), **kw)
        dirs.append(d)
    return dirs
