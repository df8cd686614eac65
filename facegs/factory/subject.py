"""TODO docstring."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegs.core.errors import InputError
from facegs.core.imageio import write_confidence, write_labels, write_mask, write_rgb
from facegs.core.labels import CANONICAL
from facegs.core.manifest import SubjectManifest, View, save_manifest
from facegs.core.storage import atomic_directory
from facegs.fit.loop import FitResult, fit_subject
from facegs.headframe.frame import HeadFrameError
from facegs.headframe.scene import head_frame_from_scene
from facegs.ingest.validate import load_subject
from facegs.render.views import RefineConfig, novel_cameras, render_novel_views
from facegs.splat.scene import save_ply, save_tensors


def refine_subject(subject_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: RefineConfig | None = None,
                   *, device: str = "cpu", backend: str = "auto", progress: bool = True, overwrite: bool = False,
                   poses: np.ndarray | None = None, min_views: int = 4) -> dict[str, Any]:
    """Fit the subject's scene and write refined novel views to ``out_dir`` (see module docstring).

    Returns the summary written to ``refine.json``.
    """
    cfg = cfg or RefineConfig()
    t0 = time.perf_counter()
    m = load_subject(subject_dir, min_views=min_views)
    fit: FitResult = fit_subject(m, cfg.fit, device=device, backend=backend, progress=progress)
    t_fit = time.perf_counter() - t0
    params = {k: v.to(device) for k, v in fit.params.items()}
    try:
        hf = head_frame_from_scene(params, cfg.max_headframe_points)
    except HeadFrameError as e:
        raise InputError(f"cannot place the head frame after fitting: {e}. The fitted scene shows too few "
                         "face parts; check the initial labels (facegs contact-sheet --labels labels) or fit "
                         "more steps", subject=m.subject_id, field="labels") from None
    cams, width, height = novel_cameras(m, hf, cfg, poses)
    views: list[View] = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for sub in ("images", "labels", "confidence", "ignore", "masks"):
            (tmp / sub).mkdir()
        for rv in render_novel_views(params, cams, width, height, hf.world_from_head, cfg, backend, progress):
            vid = rv.view_id
            write_rgb(tmp / "images" / f"{vid}.png", rv.rgb)
            write_labels(tmp / "labels" / f"{vid}.png", rv.labels, CANONICAL)
            write_confidence(tmp / "confidence" / f"{vid}.png", rv.confidence)
            write_mask(tmp / "ignore" / f"{vid}.png", rv.ignore)
            write_mask(tmp / "masks" / f"{vid}.png", rv.alpha >= 0.5)
            views.append(View(view_id=vid, image=f"images/{vid}.png", width=width, height=height, K=rv.K,
                              world_to_camera=rv.w2c, labels=f"labels/{vid}.png",
                              confidence=f"confidence/{vid}.png", ignore=f"ignore/{vid}.png",
                              mask=f"masks/{vid}.png", pose=rv.pose))
        save_ply(tmp / "scene.ply", fit.params, label_set=CANONICAL)
        save_tensors(tmp / "scene.pt", fit.params, label_set=CANONICAL)
        summary = {
            "subject_id": m.subject_id,
            "source_dir": str(Path(subject_dir).resolve()),
            "fit": _jsonable(fit.summary),
            "head_frame": {"world_from_head": hf.world_from_head.tolist(), "diagnostics": _jsonable(hf.diagnostics)},
            "n_renders": len(views),
            "seconds_fit": round(t_fit, 2),
            "seconds_total": round(time.perf_counter() - t0, 2),
            "config": _jsonable(asdict(cfg)),
        }
        save_manifest(SubjectManifest(subject_id=m.subject_id, label_set=CANONICAL, views=tuple(views),
                                      world_from_head=hf.world_from_head,
                                      source={"format": "facegs.refine", "subject_dir": str(subject_dir)},
                                      root=Path(out_dir)), tmp)
        (tmp / "refine.json").write_text(json.dumps(summary, indent=1))
    return summary


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        return x.item()
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x
