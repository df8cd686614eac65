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
3. write ``subjects/{id}.json`` listing the shards (name, sha256, sample and byte count), their
   manifest rows, the config hash and the quality score (:func:`facegs.factory.markers.write_marker`).
A subject is *complete* when its done marker is valid and every shard it lists exists with the size
its row says (:func:`facegs.factory.markers.iter_complete`). A rerun skips complete subjects with the same
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
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import facegs
from facegs.core.errors import FitError
from facegs.factory.config import FactoryConfig, subject_seed
from facegs.factory.markers import FAILURES_DIR, marker_path, write_marker
from facegs.factory.sources import stage_subject, subject_dir_name, user_paths
from facegs.factory.subject import refine
from facegs.ingest.validate import WARNING, Problem, load_subject
from facegs.label.views import initial_labels
from facegs.shards.encode import Sample
from facegs.shards.root import DatasetRoot
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
    warnings: list[str] = field(default_factory=list)  # e.g. images converted to 8-bit RGB (once per subject)
    quality: float | None = None  # the subject's quality score (facegs.factory.quality)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    clear_marker: bool = True,
    clear_failure: bool = True,
) -> SubjectResult:
    """Labels -> fit -> head frame -> renders -> shards -> done marker, for the subject at ``url``.

    Raises :class:`InputError` for bad subjects and :class:`FitError` for an unusable fit (both
    deterministic: never worth a retry); other exceptions may be transient. The subject is complete only once this returns (see the module docstring).

    ``clear_marker`` / ``clear_failure`` False: the caller knows that the subject has no done marker /
    failure record (the driver's start-up listing, first attempt), so the deletes are not sent (one
    request each on S3).
    """
    t0 = time.perf_counter()
    secs: dict[str, float] = {}

    def lap(name: str) -> None:
        secs[name] = round(time.perf_counter() - t0 - sum(secs.values()), 3)

    root = DatasetRoot.open(root_url, storage_options)
    warns: list[Problem] = []
    with tempfile.TemporaryDirectory(prefix="facegs-subject-") as tmp:
        local = stage_subject(url, Path(tmp), storage_options=storage_options)
        with user_paths(local, url):  # messages name the user's files, not the staged copy
            m = load_subject(local, min_views=cfg.min_views, check_images=True, name=subject_dir_name(url),
                             allow_external_paths=cfg.allow_external_paths, warnings=warns)
            sid = m.subject_id
            notes = [str(p.to_error().with_path_prefix(str(local), url)) for p in warns if p.severity == WARNING]
            for note in notes:
                print(f"[facegs] warning: {note}", file=sys.stderr, flush=True)
            seed = subject_seed(cfg, sid)
            lap("stage")
            labels = initial_labels(m, cfg.labels, parser=parser, flip_tta=cfg.flip_tta, seed=seed, progress=progress)
            lap("label")
            refined = refine(m, cfg.refine(seed), labels=labels, device=device, backend=backend, progress=progress)
            lap("fit")
            metrics = refined.metrics
            q = refined.quality
            if q["quality"] < cfg.min_quality:
                terms = ", ".join(f"{k} {q[k]}" for k in ("input_miou", "consensus_margin", "face_parts",
                                                           "head_frame_reliability", "ignore_fraction", "psnr"))
                reasons = "; ".join(refined.head_frame.diagnostics.get("reasons", [])[:3])
                raise FitError(f"quality {q['quality']:.3f} is below --min-quality {cfg.min_quality:g} ({terms}"
                               + (f"; head frame: {reasons}" if reasons else "") + ")", subject=sid)
            samples = refined.samples(chash, cfg.rgb_format, cfg.store_alpha)
            if crash is not None and crash.subject_id == sid and crash.attempt == attempt:
                samples = _crash_after(samples, crash)
            if clear_marker:
                with contextlib.suppress(FileNotFoundError):
                    root.fs.rm_file(marker_path(root, sid))
            records = commit_subject(samples, root, sid, maxcount=cfg.maxcount, rgb_format=cfg.rgb_format,
                                     jpeg_quality=cfg.jpeg_quality)
        hd = refined.head_frame.diagnostics
        marker = write_marker(root, {
            "subject_id": sid, "url": url, "config_hash": chash, "fit_metrics": metrics, "quality": q,
            "head_frame": {"source": refined.head_frame_source, "world_from_head": refined.head_frame.world_from_head,
                           "reliability": hd.get("reliability"), "checks": hd.get("checks"),
                           "reasons": hd.get("reasons"), "landmarks_found": hd.get("landmarks_found"),
                           "fallback_checks": hd.get("fallback_checks"),
                           # the label-free profile's up against the frame used (a cross-check; degrees)
                           "profile_vs_frame_deg": (hd.get("profile") or {}).get("vs_frame_deg")},
            "facegs_version": facegs.__version__}, records)
        shards = [{k: s[k] for k in ("shard", "sha256", "num_samples")} for s in marker["shards"]]
        if clear_failure:
            with contextlib.suppress(FileNotFoundError):
                root.fs.rm_file(root.join(FAILURES_DIR, f"{sid}.json"))
        lap("render_and_write")
    return SubjectResult(subject_id=sid, url=url, n_samples=marker["num_samples"], shards=shards,
                         fit_metrics=metrics, seconds=secs, device=str(device), warnings=notes,
                         quality=q.get("quality"))


def _crash_after(samples: Iterator[Sample], crash: CrashInjection) -> Iterator[Sample]:
    for n, s in enumerate(samples):
        if n == crash.after_samples:
            os._exit(crash.exit_code)
        yield s
