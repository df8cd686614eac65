"""One subject through the factory: initial labels -> joint fit -> head frame -> renders -> shards.

This module is the unit of work of ``ray_jobs/build_dataset.py`` and never imports Ray: a Ray
actor calls :func:`process_subject` once per subject, and so can a test or a notebook.

Dataset root layout (``facegs.shards`` owns ``shards/``, ``records/`` and ``manifest.parquet``)::

    root/shards/{subject_id}-{index:06d}.tar   # the subject's samples (one prefix per subject)
    root/records/{subject_id}-{index:06d}.json # per-shard commit markers
    root/subjects/{subject_id}.json            # the subject's done marker (written last)
    root/failures/{subject_id}.json            # why a subject failed for good (deleted on success)
    root/manifest.parquet                      # merged records of complete subjects only
    root/summary.json                          # the last factory run's summary

Commit protocol of one subject (every step is safe to crash in):
1. delete ``subjects/{id}.json`` (the subject is now incomplete, whatever was there before);
2. :func:`facegs.shards.commit_subject` rewrites its shards and records at deterministic names;
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
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import torch

import facegs
from facegs.errors import FitError, InputError
from facegs.fit import FitConfig, fit_config, fit_subject
from facegs.headframe import HeadFrameError, head_frame_from_cameras
from facegs.labels import CANONICAL, get_label_set
from facegs.manifest import SubjectManifest
from facegs.parsing.noise import derive_seed, parse_noise_spec
from facegs.refine import RefineConfig, head_frame_from_scene, novel_cameras, render_views
from facegs.shard_schema import sample_key
from facegs.shards import (DatasetRoot, Sample, canonical_json, cleanup_orphans, commit_subject, list_committed,
                           merge_manifest, put_bytes_atomic)
from facegs.validate import load_subject

SUBJECTS_DIR = "subjects"
FAILURES_DIR = "failures"
SUMMARY_NAME = "summary.json"
LABEL_SOURCES = ("existing", "parser", "noise")


@dataclass
class FactoryConfig:
    """Everything that decides a subject's samples (hashed into ``config_hash``).

    - ``labels``: where the initial labels come from: ``"existing"`` (the subject's own
      ``labels``, e.g. from ``facegs label``), ``"parser:CKPT"`` (a parser checkpoint path or
      fsspec URL, run with ``flip_tta``) or ``"noise:SPEC"`` (a noise model applied to
      ground-truth labels, for synthetic experiments; see ``facegs.parsing.noise``).
    - ``fit_preset`` + ``fit_overrides``: the :class:`facegs.fit.FitConfig`
      (:func:`facegs.fit.fit_config`); its ``seed`` is replaced per subject.
    - ``n_renders`` novel views per subject at poses sampled in the estimated head frame within
      ``yaw_range``/``pitch_range`` (degrees) with ``roll_jitter_deg``; ``res``: render size in px
      (None: the capture's width).
    - shard options: ``rgb_format`` (jpg|png), ``jpeg_quality``, ``maxcount`` samples per shard,
      ``store_alpha`` (an ``alpha.png`` member per render: the subject's coverage, so that trainers
      can put the premultiplied-over-black render over other backgrounds).
    - ``camera_head_frame_fallback``: when the fitted scene shows too few face parts to place the
      head frame (weak initial labels), use :func:`facegs.headframe.head_frame_from_cameras` (the
      rig prior) instead of failing; samples record ``fit_metrics.head_frame_source``.
    """

    labels: str = "existing"
    flip_tta: bool = True
    fit_preset: str = "cpu_demo"
    fit_overrides: dict[str, Any] = field(default_factory=dict)
    n_renders: int = 32
    yaw_range: tuple[float, float] = (-90.0, 90.0)
    pitch_range: tuple[float, float] = (-40.0, 40.0)
    roll_jitter_deg: float = 5.0
    distribution: str = "uniform"
    res: int | None = None
    rgb_format: str = "jpg"
    jpeg_quality: int = 95
    maxcount: int = 64
    store_alpha: bool = True
    min_views: int = 4
    seed: int = 0
    camera_head_frame_fallback: bool = True

    def __post_init__(self) -> None:
        kind = self.labels.split(":", 1)[0]
        if kind not in LABEL_SOURCES or (kind != "existing" and ":" not in self.labels):
            raise ValueError(f"labels must be 'existing', 'parser:CKPT' or 'noise:SPEC', got '{self.labels}'")
        if kind == "noise":
            parse_noise_spec(self.labels.split(":", 1)[1])
        if self.rgb_format not in ("jpg", "png"):
            raise ValueError(f"rgb_format must be 'jpg' or 'png', got '{self.rgb_format}'")
        if self.n_renders < 1 or self.maxcount < 1:
            raise ValueError("n_renders and maxcount must be >= 1")
        fit_config(self.fit_preset, **self.fit_overrides)  # unknown preset or field -> error now
        self.yaw_range = tuple(float(x) for x in self.yaw_range)  # type: ignore[assignment]
        self.pitch_range = tuple(float(x) for x in self.pitch_range)  # type: ignore[assignment]

    @property
    def label_source(self) -> str:
        return self.labels.split(":", 1)[0]

    @property
    def label_arg(self) -> str:
        return self.labels.split(":", 1)[1] if ":" in self.labels else ""

    def fit(self, subject_seed: int) -> FitConfig:
        return fit_config(self.fit_preset, **{**self.fit_overrides, "seed": subject_seed % (2**31)})

    def refine(self, subject_seed: int) -> RefineConfig:
        return RefineConfig(fit=self.fit(subject_seed), n_renders=self.n_renders, yaw_range=self.yaw_range,
                            pitch_range=self.pitch_range, roll_jitter_deg=self.roll_jitter_deg,
                            distribution=self.distribution, res=self.res, seed=subject_seed % (2**31))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FactoryConfig":
        return cls(**d)


def config_hash(cfg: FactoryConfig, parser_sha256: str | None = None) -> str:
    """16 hex digits over the config, its resolved fit/render settings (library defaults included)
    and the parser checkpoint's content hash when labels come from a parser (the same path with
    other weights is another config)."""
    d = cfg.to_dict()
    # the resolved fit and render settings, so that a changed library default is a new config
    d["resolved"] = asdict(cfg.refine(0))
    if cfg.label_source == "parser":
        d["labels"] = f"parser:sha256={parser_sha256 or 'unknown'}"
    d["label_set"] = [CANONICAL, get_label_set(CANONICAL).version]
    return hashlib.sha256(canonical_json(d)).hexdigest()[:16]


def file_sha256(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """sha256 of a local file or fsspec URL."""
    h = hashlib.sha256()
    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        while chunk := f.read(8 * 1024**2):
            h.update(chunk)
    return h.hexdigest()


def subject_seed(cfg: FactoryConfig, subject_id: str) -> int:
    """The per-subject seed every random choice of that subject derives from."""
    return derive_seed(cfg.seed, "factory", subject_id)


# ----------------------------------------------------------------------------------------------
# subject lists and staging
# ----------------------------------------------------------------------------------------------


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> Path:
    return Path(url[len("file://"):] if url.startswith("file://") else url)


def list_subject_urls(source: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Subject directories named by ``source``, sorted and de-duplicated.

    ``source`` is a directory (local or fsspec URL) whose sub-directories holding a
    ``subject.json`` are subjects (or that holds ``subject.json`` itself), or a text file with one
    subject directory (path or URL) per line; blank lines and ``#`` comments are ignored.
    """
    fs, path = fsspec.core.url_to_fs(source, **(storage_options or {}))
    proto = source.split("://", 1)[0] + "://" if "://" in source else ""
    if not fs.exists(path):
        raise InputError("subject list not found", path=source)
    if fs.isfile(path):
        with fs.open(path, "rt") as f:
            lines = [ln.split("#", 1)[0].strip() for ln in f]
        urls = [ln.rstrip("/") for ln in lines if ln]
        if not urls:
            raise InputError("subject list names no subjects", path=source)
        return list(dict.fromkeys(urls))
    if fs.exists(f"{path.rstrip('/')}/subject.json"):
        return [source.rstrip("/")]
    found = []
    for e in sorted(fs.ls(path, detail=True), key=lambda e: e["name"]):
        if e.get("type") == "directory" and fs.exists(f"{e['name'].rstrip('/')}/subject.json"):
            found.append(proto + e["name"].rstrip("/") if proto and not e["name"].startswith(proto) else e["name"])
    if not found:
        raise InputError("no subject directories (folders with a subject.json) found", path=source)
    return found


def subject_id_of(url: str, storage_options: dict[str, Any] | None = None) -> str:
    """The ``subject_id`` in ``url/subject.json``; the directory name if it cannot be read."""
    try:
        with fsspec.open(url.rstrip("/") + "/subject.json", "rt", **(storage_options or {})) as f:
            sid = json.load(f).get("subject_id")
        if isinstance(sid, str) and sid:
            return sid
    except (OSError, ValueError):
        pass
    return url.rstrip("/").rsplit("/", 1)[-1]


def stage_subject(url: str, scratch: Path, copy: bool, storage_options: dict[str, Any] | None = None) -> Path:
    """A local directory with the subject: the original (local, ``copy`` False), a copy (local,
    ``copy`` True: labelling writes into it, the user's capture stays untouched) or a download."""
    if _is_local(url):
        src = _local_path(url)
        if not copy:
            return src
        if not src.is_dir():
            raise InputError("subject directory not found", path=str(src))
        dst = scratch / "subject"
        shutil.copytree(src, dst)
        return dst
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    dst = scratch / "subject"
    dst.mkdir()
    if not fs.exists(path.rstrip("/") + "/subject.json"):
        raise InputError("subject directory has no subject.json", path=url)
    fs.get(path.rstrip("/") + "/", str(dst) + "/", recursive=True)
    return dst


def fetch_local(url: str, scratch: Path, storage_options: dict[str, Any] | None = None) -> Path:
    """A local path for a file given as a path or fsspec URL (downloaded into ``scratch``)."""
    if _is_local(url):
        p = _local_path(url)
        if not p.is_file():
            raise InputError("file not found", path=str(p))
        return p
    dst = scratch / url.rstrip("/").rsplit("/", 1)[-1]
    with fsspec.open(url, "rb", **(storage_options or {})) as f:
        dst.write_bytes(f.read())
    return dst


# ----------------------------------------------------------------------------------------------
# one subject
# ----------------------------------------------------------------------------------------------


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
    from facegs.parsing.label_views import label_subject_with_noise, label_subject_with_parser

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
    from facegs.headframe import HeadFrame

    hf = HeadFrame(world_from_head=hf_world_from_head, diagnostics={})
    cams, width, height = novel_cameras(m, hf, rcfg)
    ls = get_label_set(CANONICAL)
    for i, rv in enumerate(render_views(fit_params, cams, width, height, hf_world_from_head, rcfg, backend,
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


def capture_samples(m: SubjectManifest, chash: str, world_from_head: np.ndarray | None = None,
                    label_field: str = "labels", rgb_format: str = "jpg") -> Iterator[Sample]:
    """The subject's own capture views as shard samples (``source`` "capture") with the label
    maps named by ``label_field`` (``labels``: the initial, noisy labels; ``gt_labels``: ground
    truth), their confidence (1 where absent) and no ignore mask. Pose angles come from the views'
    ``pose`` (head-relative) or, when missing, from ``world_from_head``; views without either are
    skipped. The baseline "fine-tune on the raw capture views" of the experiments uses this."""
    from facegs.cameras import w2c_to_head_pose
    from facegs.imageio import read_confidence, read_labels, read_rgb
    from facegs.labels import remap

    ls = get_label_set(CANONICAL)
    T = world_from_head if world_from_head is not None else m.world_from_head
    for i, v in enumerate(m.views):
        rel = getattr(v, label_field)
        if rel is None:
            raise InputError(f"view has no {label_field}", subject=m.subject_id, view=v.view_id, field=label_field)
        if v.pose is not None:
            yaw, pitch, roll = (float(v.pose[k]) for k in ("yaw", "pitch", "roll"))
        elif T is not None:
            yaw, pitch, roll = w2c_to_head_pose(v.world_to_camera, T)
        else:
            continue
        seg = remap(read_labels(m.path(rel)), m.label_set, CANONICAL)
        conf = (read_confidence(m.path(v.confidence)) if v.confidence and label_field == "labels"
                else np.ones(seg.shape, np.float32))
        meta = {"schema_version": 1, "key": sample_key(m.subject_id, i), "subject_id": m.subject_id,
                "view_index": i, "source": "capture", "width": v.width, "height": v.height,
                "yaw": round(float(yaw), 6), "pitch": round(float(pitch), 6), "roll": round(float(roll), 6),
                "K": np.asarray(v.K).tolist(), "world_to_camera": np.asarray(v.world_to_camera).tolist(),
                "world_from_head": None if T is None else np.asarray(T, np.float64).tolist(),
                "label_set": ls.name, "label_set_version": ls.version, "rgb_format": rgb_format,
                "config_hash": chash, "facegs_version": facegs.__version__}
        yield Sample(rgb=read_rgb(m.path(v.image)), seg=seg, conf=conf, ignore=np.zeros(seg.shape, bool), meta=meta)


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


# ----------------------------------------------------------------------------------------------
# dataset-level bookkeeping
# ----------------------------------------------------------------------------------------------


def read_json_dir(root: DatasetRoot, sub: str) -> dict[str, dict[str, Any]]:
    """``{stem: parsed JSON}`` of the ``*.json`` files in ``root/sub`` (unreadable files skipped)."""
    paths = [e["name"] for e in root.list_dir(sub) if e["name"].endswith(".json")
             and not e["name"].rsplit("/", 1)[-1].startswith(".")]
    out = {}
    for p, data in (root.fs.cat(paths, on_error="return") if paths else {}).items():
        if isinstance(data, BaseException):
            continue
        with contextlib.suppress(ValueError):
            out[p.rsplit("/", 1)[-1][:-5]] = json.loads(data)
    return out


def complete_subjects(root_url: "str | DatasetRoot", storage_options: dict[str, Any] | None = None,
                      config_hash: str | None = None) -> dict[str, dict[str, Any]]:
    """Done markers of complete subjects (every listed shard has a valid record with the same
    sha256), optionally only those written with ``config_hash``."""
    root = DatasetRoot.open(root_url, storage_options)
    valid = {r.shard: r.sha256 for r in list_committed(root)}
    out = {}
    for sid, marker in read_json_dir(root, SUBJECTS_DIR).items():
        shards = marker.get("shards") or []
        if marker.get("subject_id") != sid or not shards:
            continue
        if all(valid.get(s.get("shard")) == s.get("sha256") for s in shards):
            if config_hash is None or marker.get("config_hash") == config_hash:
                out[sid] = marker
    return out


def record_failure(root_url: "str | DatasetRoot", failure: dict[str, Any],
                   storage_options: dict[str, Any] | None = None) -> None:
    """Write ``failures/{subject_id}.json`` (error type, message, attempts, ...)."""
    root = DatasetRoot.open(root_url, storage_options)
    put_bytes_atomic(root.fs, root.join(FAILURES_DIR, f"{failure['subject_id']}.json"), canonical_json(failure))


def finalize(root_url: "str | DatasetRoot", storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """After a run (no writer active): delete leftovers, merge the manifest of complete subjects.

    Leftovers are shards without a valid record, temporary files, invalid records, and the shards,
    records and markers of incomplete subjects (a crash or failure mid-commit). Returns counts.
    """
    root = DatasetRoot.open(root_url, storage_options)
    orphans = cleanup_orphans(root)
    complete = complete_subjects(root)
    keep = {s["shard"] for m in complete.values() for s in m["shards"]}
    removed = []
    for r in list_committed(root, verify="none"):
        if r.shard not in keep:
            for path in (root.record_path(r.name), root.shard_path(r.name)):
                with contextlib.suppress(FileNotFoundError):
                    root.fs.rm_file(path)
            removed.append(r.shard)
    for sid in set(read_json_dir(root, SUBJECTS_DIR)) - set(complete):
        with contextlib.suppress(FileNotFoundError):
            root.fs.rm_file(root.join(SUBJECTS_DIR, f"{sid}.json"))
    table = merge_manifest(root)
    return {"orphan_shards_removed": len(orphans.shards), "temp_files_removed": len(orphans.temp_files),
            "invalid_records_removed": len(orphans.invalid_records),
            "incomplete_subject_shards_removed": len(removed), "complete_subjects": len(complete),
            "manifest_shards": table.num_rows, "manifest_samples": int(sum(table.column("num_samples").to_pylist()))}


__all__ = [
    "CrashInjection", "FactoryConfig", "SubjectResult", "capture_samples", "complete_subjects", "config_hash", "fetch_local",
    "file_sha256", "finalize", "initial_labels", "list_subject_urls", "process_subject", "read_json_dir",
    "record_failure", "stage_subject", "subject_id_of", "subject_samples", "subject_seed",
]
