"""One subject through the factory: initial labels -> joint fit -> head frame -> renders -> shards.

This module is the unit of work of ``ray_jobs/build_dataset.py`` and never imports Ray: a Ray
actor calls :func:`process_subject` once per subject, and so can a test or a notebook.

Dataset root layout (``facegs.shards.writer`` owns ``shards/``, ``records/`` and ``manifest.parquet``)::

    root/shards/{subject_id}-{index:06d}.tar   # the subject's samples (one prefix per subject)
    root/records/{subject_id}-{index:06d}.json # per-shard commit markers
    root/subjects/{subject_id}.json            # the subject's done marker (written last)
    root/failures/{subject_id}.json            # why a subject failed for good (deleted on success)
    root/manifest.parquet                      # merged records of complete subjects only
    root/summary.json                          # the last factory run's summary

Commit protocol of one subject (every step is safe to crash in):
1. delete ``subjects/{id}.json`` (the subject is now incomplete, whatever was there before);
2. :func:`facegs.shards.writer.commit_subject` rewrites its shards and records at deterministic names;
3. write ``subjects/{id}.json`` listing the shards (name, sha256, sample count) and the config hash.
A subject is *complete* when its done marker exists and every shard it lists has a valid record
with the same sha256 (:func:`complete_subjects`). A rerun skips complete subjects with the same
config hash and redoes the rest; :func:`finalize` removes the leftovers of incomplete subjects
and merges the manifest from complete subjects only, so a reader never sees half a subject.

Determinism: every random choice is seeded from ``(config.seed, subject_id)`` (the fit, the pose
sampling and noise labelling), the fit runs with deterministic algorithms, and the shard writer is
byte-reproducible, so equal inputs and config on the same device type and thread count give
byte-identical shards (tested on the CPU). Sample metadata holds no timings.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import facegs
from facegs.core.errors import FitError, InputError
from facegs.core.hashing import canonical_json
from facegs.core.labels import CANONICAL, get_label_set
from facegs.core.manifest import SubjectManifest
from facegs.core.storage import put_bytes_atomic
from facegs.factory.config import FactoryConfig, subject_seed
from facegs.factory.markers import FAILURES_DIR, SUBJECTS_DIR
from facegs.factory.sources import stage_subject
from facegs.fit.loop import fit_subject
from facegs.headframe.frame import HeadFrameError
from facegs.headframe.priors import head_frame_from_cameras
from facegs.headframe.scene import head_frame_from_scene
from facegs.ingest.validate import load_subject
from facegs.render.views import RefineConfig, novel_cameras, render_novel_views
from facegs.shards.encode import Sample
from facegs.shards.root import DatasetRoot
from facegs.shards.schema import sample_key
from facegs.shards.writer import commit_subject


@dataclass
class CrashInjection:
    """Test hook: ``os._exit(exit_code)`` (an abrupt process death, as when a node is lost) after
    ``after_samples`` samples of subject ``subject_id`` were handed to the shard writer, on
    attempt ``attempt`` only. Never set in production configs."""

    subject_id: str
    after_samples: int = 1
    attempt: int = 1
    exit_code: int = 137


def initial_labels(subject_dir: Path, m: SubjectManifest, cfg: FactoryConfig, parser: Any, seed: int,
                   progress: bool) -> SubjectManifest:
    """Label every view of the (staged) subject as ``cfg.labels`` says; returns the new manifest."""
    from facegs.label.views import label_subject_with_noise, label_subject_with_parser

    if cfg.label_source == "existing":
        missing = [v.view_id for v in m.views if not v.labels]
        if missing:
            raise InputError(f"{len(missing)} of {len(m.views)} views have no labels (first: {missing[0]}); "
                             "label them first (facegs label) or pass labels='parser:CKPT'",
                             subject=m.subject_id, view=missing[0], field="labels")
        if m.label_set != CANONICAL:
            raise InputError(f"labels are in '{m.label_set}'; relabel into '{CANONICAL}' (facegs label)",
                             subject=m.subject_id, field="label_set")
        return m
    if cfg.label_source == "parser":
        if parser is None:
            raise ValueError("labels='parser:...' needs a loaded parser")
        return label_subject_with_parser(subject_dir, parser, flip_tta=cfg.flip_tta, progress=progress,
                                         parser_name=cfg.label_arg)
    return label_subject_with_noise(subject_dir, cfg.label_arg, seed=seed, progress=progress)


def _fit_metrics(summary: dict[str, Any]) -> dict[str, float | str | None]:
    """Deterministic fit numbers for the sample metadata (no timings)."""
    out: dict[str, float | str | None] = {k: summary.get(k) for k in ("steps", "n_gaussians", "n_views")}
    for k, v in (summary.get("eval") or {}).items():
        out[k] = None if v is None or not np.isfinite(v) else round(float(v), 6)
    return out


@dataclass
class SubjectResult:
    """What :func:`process_subject` reports (JSON-able via :meth:`as_dict`)."""

    subject_id: str
    url: str
    n_samples: int
    shards: list[dict[str, Any]]
    fit_metrics: dict[str, Any]
    seconds: dict[str, float]
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def subject_samples(fit_params: dict[str, torch.Tensor], hf_world_from_head: np.ndarray, m: SubjectManifest,
                    rcfg: RefineConfig, chash: str, fit_metrics: dict[str, Any], rgb_format: str,
                    backend: str = "auto", store_alpha: bool = True) -> Iterator[Sample]:
    """Render the subject's novel views and yield them as shard samples (in view order)."""
    from facegs.headframe.frame import HeadFrame

    hf = HeadFrame(world_from_head=hf_world_from_head, diagnostics={})
    cams, width, height = novel_cameras(m, hf, rcfg)
    ls = get_label_set(CANONICAL)
    for i, rv in enumerate(render_novel_views(fit_params, cams, width, height, hf_world_from_head, rcfg, backend,
                                        progress=False)):
        meta = {"schema_version": 1, "key": sample_key(m.subject_id, i), "subject_id": m.subject_id,
                "view_index": i, "source": "render", "width": width, "height": height,
                "yaw": round(float(rv.pose["yaw"]), 6), "pitch": round(float(rv.pose["pitch"]), 6),
                "roll": round(float(rv.pose["roll"]), 6), "K": rv.K.tolist(), "world_to_camera": rv.w2c.tolist(),
                "world_from_head": np.asarray(hf_world_from_head, np.float64).tolist(), "label_set": ls.name,
                "label_set_version": ls.version, "rgb_format": rgb_format, "fit_metrics": fit_metrics,
                "config_hash": chash, "facegs_version": facegs.__version__}
        yield Sample(rgb=rv.rgb, seg=rv.labels, conf=rv.confidence, ignore=rv.ignore, meta=meta,
                     alpha=rv.alpha if store_alpha else None)


def process_subject(
    url: str,
    root_url: str,
    cfg: FactoryConfig,
    *,
    chash: str,
    parser: Any = None,
    device: str = "cpu",
    backend: str = "auto",
    storage_options: dict[str, Any] | None = None,
    attempt: int = 1,
    crash: CrashInjection | None = None,
    progress: bool = False,
) -> SubjectResult:
    """Labels -> fit -> head frame -> renders -> shards -> done marker, for the subject at ``url``.

    Raises :class:`InputError` for bad subjects and :class:`FitError` for an unusable fit (both
    deterministic: never worth a retry); other exceptions may be transient. The subject is complete only once this returns (see the module docstring).
    """
    t0 = time.perf_counter()
    secs: dict[str, float] = {}

    def lap(name: str) -> None:
        secs[name] = round(time.perf_counter() - t0 - sum(secs.values()), 3)

    root = DatasetRoot.open(root_url, storage_options)
    with tempfile.TemporaryDirectory(prefix="facegs-subject-") as tmp:
        local = stage_subject(url, Path(tmp), copy=cfg.label_source != "existing", storage_options=storage_options)
        m = load_subject(local, min_views=cfg.min_views, check_images=True)
        sid = m.subject_id
        seed = subject_seed(cfg, sid)
        lap("stage")
        m = initial_labels(local, m, cfg, parser, seed, progress)
        lap("label")
        rcfg = cfg.refine(seed)
        fit = fit_subject(m, rcfg.fit, device=device, backend=backend, progress=progress)
        lap("fit")
        params = {k: v.to(device) for k, v in fit.params.items()}
        metrics = _fit_metrics(fit.summary)
        try:
            hf = head_frame_from_scene(params, rcfg.max_headframe_points)
            metrics["head_frame_source"] = "scene"
        except HeadFrameError as e:
            if not cfg.camera_head_frame_fallback:
                raise FitError(f"cannot place the head frame after fitting: {e}. The fitted scene shows too few "
                               "face parts; check the initial labels or fit more steps", subject=sid) from None
            try:  # weak labels: fall back to the rig prior (poses become rig-relative; recorded per sample)
                hf = head_frame_from_cameras(np.stack([v.world_to_camera for v in m.views]))
            except HeadFrameError as e2:
                raise FitError(f"cannot place the head frame: {e}; camera fallback: {e2}", subject=sid) from None
            metrics["head_frame_source"] = "cameras"
        samples = subject_samples(params, hf.world_from_head, m, rcfg, chash, metrics, cfg.rgb_format, backend,
                                  cfg.store_alpha)
        if crash is not None and crash.subject_id == sid and crash.attempt == attempt:
            samples = _crash_after(samples, crash)
        with contextlib.suppress(FileNotFoundError):
            root.fs.rm_file(root.join(SUBJECTS_DIR, f"{sid}.json"))
        records = commit_subject(samples, root, sid, maxcount=cfg.maxcount, rgb_format=cfg.rgb_format,
                                 jpeg_quality=cfg.jpeg_quality)
        shards = [{"shard": r.shard, "sha256": r.sha256, "num_samples": r.num_samples} for r in records]
        marker = {"subject_id": sid, "url": url, "config_hash": chash, "shards": shards,
                  "num_samples": sum(r.num_samples for r in records), "fit_metrics": metrics,
                  "facegs_version": facegs.__version__}
        put_bytes_atomic(root.fs, root.join(SUBJECTS_DIR, f"{sid}.json"), canonical_json(marker))
        with contextlib.suppress(FileNotFoundError):
            root.fs.rm_file(root.join(FAILURES_DIR, f"{sid}.json"))
        lap("render_and_write")
    return SubjectResult(subject_id=sid, url=url, n_samples=marker["num_samples"], shards=shards,
                         fit_metrics=metrics, seconds=secs, device=str(device))


def _crash_after(samples: Iterator[Sample], crash: CrashInjection) -> Iterator[Sample]:
    for n, s in enumerate(samples):
        if n == crash.after_samples:
            os._exit(crash.exit_code)
        yield s
