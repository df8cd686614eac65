"""One subject end to end: initial labels -> joint fit -> head frame -> novel views -> clean-up -> samples.

This is the one pipeline both the factory (:func:`facegs.factory.process.process_subject`, shards)
and ``facegs refine`` (:func:`refine_subject`, a subject directory of novel views) run:

- in: a validated :class:`facegs.core.manifest.SubjectManifest` and its initial labels (in memory,
  :func:`facegs.label.views.initial_labels`, or the subject's own label files);
- :func:`refine`: fit (:mod:`facegs.fit`) -> head frame from the fitted scene, or the rig prior
  (:func:`facegs.headframe.place.place_head_frame`, checked, with a reliability) -> left/right parts
  moved to their own side of it (:func:`facegs.headframe.sides.enforce_sides`) -> cameras at sampled head poses
  (:mod:`facegs.render.views`); returns a :class:`RefinedSubject`;
- out: :meth:`RefinedSubject.views` (rendered, cleaned :class:`facegs.render.views.RenderedView`)
  and :meth:`RefinedSubject.samples` (the same as shard :class:`facegs.shards.encode.Sample` objects,
  metadata from :func:`facegs.shards.schema.sample_meta`).

An unusable fit (no head frame) raises :class:`facegs.core.errors.FitError` in both callers.

``facegs refine`` output directory (a subject directory in the manifest format, so every facegs
tool reads it), built under a temporary name and renamed into place (nothing half-written)::

    OUT/
      subject.json            # views = rendered novel views, pose in the ESTIMATED head frame
      images/render_000.png   # RGB rendered from the fitted scene
      labels/render_000.png   # cleaned labels (canonical classes; palette PNG)
      confidence/...png       # probability of the final label
      ignore/...png           # 255 where a trainer should not trust the label
      masks/...png            # rendered alpha >= 0.5 (for background compositing)
      scene.ply               # standard 3DGS fields + class_logit_* fields
      scene.pt                # compact tensors (torch.load(weights_only=True))
      refine.json             # fit summary, head frame and its diagnostics, timings, config
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from facegs.core.hashing import to_builtin
from facegs.core.imageio import write_confidence, write_labels, write_mask, write_rgb
from facegs.core.labels import CANONICAL
from facegs.core.manifest import SubjectManifest, View, save_manifest
from facegs.core.options import opt
from facegs.core.storage import atomic_directory
from facegs.factory.quality import PROBE_VIEWS, combine, face_parts, ignore_fraction, input_agreement, unobserved_share
from facegs.fit.config import FitConfig
from facegs.fit.data import ViewData, load_view_data
from facegs.fit.loop import FitResult, fit_subject
from facegs.fit.support import SupportConfig, label_votes, relabel_unsupported
from facegs.headframe.frame import HeadFrame
from facegs.headframe.place import PlacementConfig, capture_views, place_head_frame
from facegs.headframe.sides import SIDED_SOURCES, SideConfig, enforce_sides
from facegs.headframe.visible import ViewRender, render_capture_views
from facegs.ingest.validate import load_subject
from facegs.label.views import ViewLabels
from facegs.render.cleanup import CleanupConfig
from facegs.render.views import Cameras, NovelViewConfig, RenderedView, novel_cameras, render_novel_views
from facegs.shards.encode import Sample
from facegs.shards.schema import sample_meta
from facegs.splat.scene import save_ply, save_tensors


@dataclass
class RefineConfig(NovelViewConfig):
    """Everything after the labels that decides a subject's refined views: the fit, the head frame,
    the novel views (:class:`NovelViewConfig`) and the clean-up. ``seed`` draws the poses."""

    fit: FitConfig = field(default_factory=FitConfig)
    cleanup: bool = field(default=True, metadata=opt("clean the rendered labels (off: plain argmax, an ablation)"))
    cleanup_cfg: CleanupConfig = field(default_factory=CleanupConfig)
    seed: int = field(default=0, metadata=opt("seed of the fit and of the pose sampling"))
    head_frame: PlacementConfig = field(default_factory=PlacementConfig)
    sides: SideConfig = field(default_factory=SideConfig)
    support: SupportConfig = field(default_factory=SupportConfig)


def fit_metrics(summary: Mapping[str, Any]) -> dict[str, float | str | None]:
    """Deterministic fit numbers for the sample metadata and the done marker (no timings)."""
    out: dict[str, float | str | None] = {k: summary.get(k) for k in ("steps", "n_gaussians", "n_views")}
    for k, v in (summary.get("eval") or {}).items():
        out[k] = None if v is None or not np.isfinite(v) else round(float(v), 6)
    return out


@dataclass
class RefinedSubject:
    """A fitted subject with its head frame and novel cameras; renders on demand."""

    manifest: SubjectManifest
    cfg: RefineConfig
    fit: FitResult
    params: dict[str, torch.Tensor]  # on the fit device; left/right logits made consistent with the head frame
    head_frame: HeadFrame
    head_frame_source: str  # "labels+symmetry" | "labels" | "profile+symmetry" | "cameras+symmetry" | "cameras"
    cameras: Cameras
    width: int
    height: int
    backend: str = "auto"
    quality: dict[str, Any] = field(default_factory=dict)  # facegs.factory.quality terms + "quality"
    probe: list[RenderedView] = field(default_factory=list)  # the first novel views, rendered for the quality
    captures: list[ViewRender] | None = None  # the capture views' renders: what each novel pixel's surface was seen by

    @property
    def cleanup(self) -> CleanupConfig | None:
        """The renders' clean-up (None: off). Its 2D left/right view check is off where the 3D side
        rule (:func:`facegs.headframe.sides.enforce_sides`) ran: with every part on its own side of
        the placed frame, a pair-order test on a few pixels can only undo that (docs/benchmarks.md:
        68 of 69 benchmark fits unchanged without it, one fixed, 4.7% -> 0% wrong-side pixels)."""
        if not self.cfg.cleanup:
            return None
        c = self.cfg.cleanup_cfg
        sided = self.head_frame_source in SIDED_SOURCES and self.cfg.sides.enabled
        return replace(c, lr_check=False) if sided and c.lr_check else c

    @property
    def metrics(self) -> dict[str, Any]:
        """What every sample and the done marker record about the fit (deterministic scalars)."""
        q = {k: v for k, v in self.quality.items() if not isinstance(v, dict)}
        return {**fit_metrics(self.fit.summary), "head_frame_source": self.head_frame_source, **q}

    def views(self, progress: bool = False) -> Iterator[RenderedView]:
        """The rendered, cleaned novel views, in camera order (the probe views are not rendered twice)."""
        yield from self.probe
        rest = render_novel_views(self.params, self.cameras[len(self.probe):], self.width, self.height,
                                  self.head_frame.world_from_head, self.cfg.fit, self.cleanup, self.backend, progress,
                                  self.captures)
        for k, rv in enumerate(rest, start=len(self.probe)):
            rv.view_id = f"render_{k:03d}"
            yield rv

    def samples(self, config_hash: str, rgb_format: str = "jpg", store_alpha: bool = True) -> Iterator[Sample]:
        """The novel views as shard samples (``source`` "render"), in view order."""
        metrics = self.metrics
        T = self.head_frame.world_from_head
        for i, rv in enumerate(self.views()):
            meta = sample_meta(self.manifest.subject_id, i, source="render", width=self.width, height=self.height,
                               pose=(rv.pose["yaw"], rv.pose["pitch"], rv.pose["roll"]), K=rv.K,
                               world_to_camera=rv.w2c, world_from_head=T, rgb_format=rgb_format,
                               config_hash=config_hash, fit_metrics=metrics,
                               unobserved_fraction=rv.unobserved_fraction)
            yield Sample(rgb=rv.rgb, seg=rv.labels, conf=rv.confidence, ignore=rv.ignore, meta=meta,
                         alpha=rv.alpha if store_alpha else None)


def refine(m: SubjectManifest, cfg: RefineConfig, *, labels: Mapping[str, ViewLabels] | None = None,
           device: str | torch.device = "cpu", backend: str = "auto", progress: bool = False,
           poses: np.ndarray | None = None) -> RefinedSubject:
    """Fit the subject (``labels``: in-memory initial labels; None: the manifest's label files),
    place its head frame and its novel cameras (sampled with ``cfg.seed``, or the given ``poses``
    [P, 3] yaw/pitch/roll). Raises :class:`facegs.core.errors.FitError` when no head frame can be
    placed (``cfg.head_frame.policy``: "fallback" fails only when the label-free estimate fails too)."""
    fit = fit_subject(m, cfg.fit, device=device, backend=backend, progress=progress, labels=labels)
    return place(m, cfg, fit, labels=labels, device=device, backend=backend, poses=poses)


def place(m: SubjectManifest, cfg: RefineConfig, fit: FitResult, *, labels: Mapping[str, ViewLabels] | None = None,
          device: str | torch.device = "cpu", backend: str = "auto", poses: np.ndarray | None = None) -> RefinedSubject:
    """Everything of :func:`refine` after the fit: the label-support rule (:mod:`facegs.fit.support`),
    the head frame of the fitted scene, the left/right side rule, the novel cameras, the probe
    renders and the quality (``labels``: the initial labels the fit used, for the support and the
    input agreement; None: the manifest's label files)."""
    params = {k: v.to(device) for k, v in fit.params.items()}
    support_stats = None
    if cfg.support.enabled:
        votes = label_votes(params, support_views(m, cfg.support, labels, device), backend,
                            cfg.fit.matte_over_background and cfg.fit.label_background)
        params, support_stats = relabel_unsupported(params, votes, cfg.support)
    views = capture_views(m)
    renders = render_capture_views(params, views, max_side=cfg.head_frame.max_side, backend=backend)
    hf, source = place_head_frame(params, views, cfg.head_frame, subject=m.subject_id, backend=backend,
                                  renders=renders)
    side_stats = None
    if source in SIDED_SOURCES:  # left parts on the subject's left (facegs.headframe.sides)
        params, side_stats = enforce_sides(params, hf.world_from_head, cfg.sides)
        hf.diagnostics["sides"] = side_stats
    cams, width, height = novel_cameras(m, hf.world_from_head, cfg, cfg.seed, poses)
    r = RefinedSubject(m, cfg, fit, params, hf, source, cams, width, height, backend, captures=renders)
    r.probe = list(render_novel_views(params, cams[:PROBE_VIEWS], width, height, hf.world_from_head, cfg.fit, r.cleanup,
                                      backend, progress=False, captures=renders))
    psnr = (fit.summary.get("eval") or {}).get("psnr")
    r.quality = {**input_agreement(m, renders, labels), "ignore_fraction": ignore_fraction(r.probe),
                 "unobserved_fraction": unobserved_share(r.probe),
                 "head_frame_reliability": hf.diagnostics.get("reliability"),
                 "face_parts": face_parts(hf.diagnostics.get("landmarks_found")),
                 "psnr": None if psnr is None else round(float(psnr), 4),
                 "lr_side_swapped_fraction": None if side_stats is None else side_stats["swapped_fraction"],
                 "unsupported_relabelled_fraction": None if support_stats is None
                 else support_stats["relabelled_fraction"]}
    r.quality["quality"] = combine(r.quality)
    if support_stats is not None:
        hf.diagnostics["support"] = support_stats
    return r


def support_views(m: SubjectManifest, cfg: SupportConfig, labels: Mapping[str, ViewLabels] | None,
                   device: str | torch.device) -> ViewData:
    """The capture views with their initial labels for :func:`label_votes`, scaled so that the
    first view's longer side is at most ``cfg.max_side``."""
    v0 = m.views[0]
    return load_view_data(m, downscale=max(1.0, max(v0.width, v0.height) / cfg.max_side), device=device,
                          labels=labels)


def refine_subject(subject_dir: str | os.PathLike, out_dir: str | os.PathLike, cfg: RefineConfig | None = None,
                   *, device: str = "cpu", backend: str = "auto", progress: bool = True, overwrite: bool = False,
                   poses: np.ndarray | None = None, min_views: int = 4) -> dict[str, Any]:
    """``facegs refine``: :func:`refine` the subject's own labels and write the novel views to
    ``out_dir`` (see the module docstring). Returns the summary written to ``refine.json``."""
    cfg = cfg or RefineConfig()
    t0 = time.perf_counter()
    m = load_subject(subject_dir, min_views=min_views)
    r = refine(m, cfg, device=device, backend=backend, progress=progress, poses=poses)
    t_fit = time.perf_counter() - t0
    views: list[View] = []
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        for sub in ("images", "labels", "confidence", "ignore", "masks"):
            (tmp / sub).mkdir()
        for rv in r.views(progress):
            vid = rv.view_id
            write_rgb(tmp / "images" / f"{vid}.png", rv.rgb)
            write_labels(tmp / "labels" / f"{vid}.png", rv.labels, CANONICAL)
            write_confidence(tmp / "confidence" / f"{vid}.png", rv.confidence)
            write_mask(tmp / "ignore" / f"{vid}.png", rv.ignore)
            write_mask(tmp / "masks" / f"{vid}.png", rv.alpha >= 0.5)
            views.append(View(view_id=vid, image=f"images/{vid}.png", width=r.width, height=r.height, K=rv.K,
                              world_to_camera=rv.w2c, labels=f"labels/{vid}.png",
                              confidence=f"confidence/{vid}.png", ignore=f"ignore/{vid}.png",
                              mask=f"masks/{vid}.png", pose=rv.pose))
        scene = {k: v.detach().cpu() for k, v in r.params.items()}  # the logits the renders used
        save_ply(tmp / "scene.ply", scene, label_set=CANONICAL)
        save_tensors(tmp / "scene.pt", scene, label_set=CANONICAL)
        T = r.head_frame.world_from_head
        summary = {
            "subject_id": m.subject_id,
            "source_dir": str(Path(subject_dir).resolve()),
            "fit": to_builtin(r.fit.summary),
            "head_frame": {"world_from_head": T.tolist(), "source": r.head_frame_source,
                           "diagnostics": to_builtin(r.head_frame.diagnostics)},
            "quality": to_builtin(r.quality),
            "n_renders": len(views),
            "seconds_fit": round(t_fit, 2),
            "seconds_total": round(time.perf_counter() - t0, 2),
            "config": to_builtin(asdict(cfg)),
        }
        save_manifest(SubjectManifest(subject_id=m.subject_id, label_set=CANONICAL, views=tuple(views),
                                      world_from_head=T, source={"format": "facegs.refine",
                                                                 "subject_dir": str(subject_dir)},
                                      root=Path(out_dir)), tmp)
        (tmp / "refine.json").write_text(json.dumps(summary, indent=1))
    return summary
