"""Stage 1, labelling: initial label maps and confidences for every view of a subject.

In: a validated :class:`facegs.core.manifest.SubjectManifest` and a label source: a parser
(:class:`facegs.parser.checkpoint.ParserModel`, with optional flip test-time augmentation), a noise
model applied to the subject's ground truth (``facegs.label.noise``, for experiments), or the
labels the subject already has. Out: :class:`ViewLabels` per view id, in memory, in the canonical
label set (``celebamask19``), which the fit takes directly (:func:`facegs.fit.data.load_view_data`).

Confidence is quantised to 8 bits (``round(p * 255) / 255``, :func:`facegs.core.imageio.dequantize_unit`)
exactly as if it had been written to and read back from a confidence PNG, so a fit from in-memory
labels equals a fit from labels written to disk by ``facegs label`` bit for bit.

``facegs label`` writes the same labels into the subject directory (:func:`write_view_labels`):
``labels/<view_id>.png`` (palette PNG) and ``confidence/<view_id>.png`` (8-bit). The subject's
existing ``labels``/``confidence`` folders are replaced as a whole: files go to temporary folders
first, are swapped in, and only then is ``subject.json`` rewritten (atomically), so an interrupted
run leaves the previous labelling intact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from facegs.core.errors import InputError
from facegs.core.hashing import derive_seed
from facegs.core.imageio import dequantize_unit, quantize_unit, read_labels, read_rgb, write_confidence, write_labels
from facegs.core.labels import CANONICAL, remap
from facegs.core.manifest import SubjectManifest, load_manifest, save_manifest
from facegs.core.storage import swap_into_place
from facegs.label.noise import apply_noise, parse_noise_spec
from facegs.parser.predict import predict_images

LABEL_SOURCES = ("existing", "parser", "noise")
PARSER_BATCH = 8  # views per parser call (the batch shape is part of the numerics: keep it fixed)


@dataclass(frozen=True)
class ViewLabels:
    """Initial labels of one view: ``labels`` [H, W] uint8 canonical class indices (255 = ignore),
    ``confidence`` [H, W] float32 in [0, 1], 8-bit quantised (``k / 255``)."""

    labels: np.ndarray
    confidence: np.ndarray


def _quantised(conf: np.ndarray) -> np.ndarray:
    return dequantize_unit(quantize_unit(conf))


def _check_size(m: SubjectManifest, view_id: str, lab: np.ndarray) -> None:
    v = m.view(view_id)
    if lab.shape != (v.height, v.width):
        raise InputError(f"produced label map is {lab.shape[1]}x{lab.shape[0]}, expected {v.width}x{v.height}",
                         subject=m.subject_id, view=v.view_id, field="labels")


def parser_labels(m: SubjectManifest, parser: Any, *, flip_tta: bool = False, batch_size: int = PARSER_BATCH,
                  progress: bool = True) -> dict[str, ViewLabels]:
    """Labels = argmax and confidence = max probability of ``parser`` on every view (in view order,
    ``batch_size`` views per call)."""
    out: dict[str, ViewLabels] = {}
    views = list(m.views)
    bar = tqdm(total=len(views), desc=f"label {m.subject_id}", disable=not progress, dynamic_ncols=True)
    for start in range(0, len(views), batch_size):
        batch = views[start:start + batch_size]
        for v, probs in zip(batch, predict_images(parser, [read_rgb(m.path(v.image)) for v in batch], flip_tta)):
            conf, lab = probs.max(dim=0)
            lab_u8 = lab.numpy().astype(np.uint8)
            _check_size(m, v.view_id, lab_u8)
            out[v.view_id] = ViewLabels(lab_u8, _quantised(conf.numpy().astype(np.float32)))
        bar.update(len(batch))
    bar.close()
    return out


def noise_labels(m: SubjectManifest, spec: str, seed: int, *, progress: bool = True) -> dict[str, ViewLabels]:
    """Labels from the views' ground truth (``gt_labels``) through a seeded noise model
    (:mod:`facegs.label.noise`); each view draws from ``derive_seed(seed, subject_id, view_id)``."""
    noise = parse_noise_spec(spec)
    out: dict[str, ViewLabels] = {}
    for v in tqdm(m.views, desc=f"label {m.subject_id}", disable=not progress, dynamic_ncols=True):
        if v.gt_labels is None:
            raise InputError("noise labelling needs ground-truth labels", subject=m.subject_id, view=v.view_id,
                             field="gt_labels")
        gt = remap(read_labels(m.path(v.gt_labels)), m.label_set, CANONICAL)
        yaw = 0.0 if v.pose is None else float(v.pose["yaw"])
        rng = np.random.default_rng(derive_seed(seed, m.subject_id, v.view_id))
        lab, conf = apply_noise(gt, noise, rng, yaw=yaw, label_set=CANONICAL)
        _check_size(m, v.view_id, lab)
        out[v.view_id] = ViewLabels(lab, _quantised(conf))
    return out


def check_existing_labels(m: SubjectManifest) -> None:
    """Raise :class:`InputError` unless every view has labels in the canonical label set."""
    missing = [v.view_id for v in m.views if not v.labels]
    if missing:
        raise InputError(f"{len(missing)} of {len(m.views)} views have no labels (first: {missing[0]}); "
                         "label them first (facegs label) or pass labels='parser:CKPT'",
                         subject=m.subject_id, view=missing[0], field="labels")
    if m.label_set != CANONICAL:
        raise InputError(f"labels are in '{m.label_set}'; relabel into '{CANONICAL}' (facegs label)",
                         subject=m.subject_id, field="label_set")


def initial_labels(m: SubjectManifest, source: str, *, parser: Any = None, flip_tta: bool = True, seed: int = 0,
                   progress: bool = False) -> dict[str, ViewLabels] | None:
    """Labels of every view as ``source`` says: ``"existing"`` (checked, then read by the fit from
    the subject's own files: returns None), ``"parser:CKPT"`` (``parser`` is the loaded checkpoint)
    or ``"noise:SPEC"`` (seeded by ``seed``)."""
    kind, _, arg = source.partition(":")
    if kind == "existing":
        check_existing_labels(m)
        return None
    if kind == "parser":
        if parser is None:
            raise ValueError("labels='parser:...' needs a loaded parser")
        return parser_labels(m, parser, flip_tta=flip_tta, progress=progress)
    if kind == "noise":
        return noise_labels(m, arg, seed, progress=progress)
    raise ValueError(f"labels must be 'existing', 'parser:CKPT' or 'noise:SPEC', got '{source}'")


def write_view_labels(m: SubjectManifest, labels: Mapping[str, ViewLabels],
                      source: dict[str, Any] | None = None) -> SubjectManifest:
    """Write ``labels`` into the subject directory, swap them in and update ``subject.json``
    (see the module docstring). Returns the new manifest."""
    root = m.root
    assert root is not None
    if m.label_set != CANONICAL:
        # One manifest holds one label set: labels are written in the canonical set.
        raise InputError(f"subjects with label set '{m.label_set}' must be converted to '{CANONICAL}' before "
                         "labelling", subject=m.subject_id, field="label_set")
    tmp_l = root / f".labels.tmp-{uuid.uuid4().hex[:8]}"
    tmp_c = root / f".confidence.tmp-{uuid.uuid4().hex[:8]}"
    tmp_l.mkdir()
    tmp_c.mkdir()
    new_views = []
    try:
        for v in m.views:
            vl = labels[v.view_id]
            write_labels(tmp_l / f"{v.view_id}.png", vl.labels, CANONICAL)
            write_confidence(tmp_c / f"{v.view_id}.png", vl.confidence)
            new_views.append(replace(v, labels=f"labels/{v.view_id}.png", confidence=f"confidence/{v.view_id}.png"))
    except BaseException:
        shutil.rmtree(tmp_l, ignore_errors=True)
        shutil.rmtree(tmp_c, ignore_errors=True)
        raise
    swap_into_place(tmp_l, root / "labels")
    swap_into_place(tmp_c, root / "confidence")
    src = dict(m.source)
    if source is not None:
        src["labelling"] = source
    out = replace(m, views=tuple(new_views), source=src)
    save_manifest(out)
    return out


def label_subject_with_parser(subject_dir: str | os.PathLike, parser: Any, *, batch_size: int = PARSER_BATCH,
                              flip_tta: bool = False, progress: bool = True,
                              parser_name: str = "parser") -> SubjectManifest:
    """``facegs label --parser``: predict and write labels and confidence for every view."""
    m = load_manifest(subject_dir)
    labels = parser_labels(m, parser, flip_tta=flip_tta, batch_size=batch_size, progress=progress)
    return write_view_labels(m, labels, source={"kind": "parser", "parser": parser_name, "flip_tta": flip_tta})


def label_subject_with_noise(subject_dir: str | os.PathLike, spec: str, seed: int, *,
                             progress: bool = True) -> SubjectManifest:
    """``facegs label --noise``: derive and write labels from ground truth through a noise model."""
    m = load_manifest(subject_dir)
    return write_view_labels(m, noise_labels(m, spec, seed, progress=progress),
                             source={"kind": "noise", "spec": spec, "seed": seed})
