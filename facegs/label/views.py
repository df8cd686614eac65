"""Initial labelling of capture views: a parser (or a noise model on ground truth) writes a label
map and a per-pixel confidence for every view of a subject, and records them in the manifest.

Outputs per view: ``labels/<view_id>.png`` (palette PNG, canonical classes) and
``confidence/<view_id>.png`` (8-bit, max softmax probability). The subject's existing
``labels``/``confidence`` folders are replaced as a whole: files are written to temporary folders
first, swapped in, and only then is ``subject.json`` rewritten (atomically), so an interrupted run
leaves the previous labelling intact.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from facegs.core.errors import InputError
from facegs.core.imageio import read_labels, read_rgb, write_confidence, write_labels
from facegs.core.labels import CANONICAL, remap
from facegs.core.manifest import SubjectManifest, load_manifest, save_manifest
from facegs.core.storage import swap_into_place
from facegs.parser.predict import predict_images


def write_view_labels(
    manifest: SubjectManifest,
    produce: Callable[[list[int]], list[tuple[np.ndarray, np.ndarray]]],
    batch_size: int = 8,
    progress: bool = True,
    source: dict | None = None,
) -> SubjectManifest:
    """Run ``produce(view_indices) -> [(labels [H,W] uint8, confidence [H,W] float32)]`` over all
    views in batches, write the maps, swap them in and update ``subject.json``."""
    root = manifest.root
    assert root is not None
    if manifest.label_set != CANONICAL:
        # One manifest holds one label set: labels are written in the canonical set.
        raise InputError(f"subjects with label set '{manifest.label_set}' must be converted to "
                         f"'{CANONICAL}' before labelling", subject=manifest.subject_id, field="label_set")
    tmp_l = root / f".labels.tmp-{uuid.uuid4().hex[:8]}"
    tmp_c = root / f".confidence.tmp-{uuid.uuid4().hex[:8]}"
    tmp_l.mkdir()
    tmp_c.mkdir()
    views = list(manifest.views)
    new_views = []
    try:
        bar = tqdm(total=len(views), desc=f"label {manifest.subject_id}", disable=not progress, dynamic_ncols=True)
        for start in range(0, len(views), batch_size):
            idx = list(range(start, min(start + batch_size, len(views))))
            for i, (lab, conf) in zip(idx, produce(idx)):
                v = views[i]
                if lab.shape != (v.height, v.width):
                    raise InputError(f"produced label map is {lab.shape[1]}x{lab.shape[0]}, expected "
                                     f"{v.width}x{v.height}", subject=manifest.subject_id, view=v.view_id,
                                     field="labels")
                write_labels(tmp_l / f"{v.view_id}.png", lab, CANONICAL)
                write_confidence(tmp_c / f"{v.view_id}.png", conf)
                new_views.append(replace(v, labels=f"labels/{v.view_id}.png",
                                         confidence=f"confidence/{v.view_id}.png"))
            bar.update(len(idx))
        bar.close()
    except BaseException:
        shutil.rmtree(tmp_l, ignore_errors=True)
        shutil.rmtree(tmp_c, ignore_errors=True)
        raise
    swap_into_place(tmp_l, root / "labels")
    swap_into_place(tmp_c, root / "confidence")
    src = dict(manifest.source)
    if source is not None:
        src["labelling"] = source
    out = replace(manifest, views=tuple(new_views), source=src)
    save_manifest(out)
    return out


def label_subject_with_parser(subject_dir: str | os.PathLike, parser, *, batch_size: int = 8,
                              flip_tta: bool = False, progress: bool = True,
                              parser_name: str = "parser") -> SubjectManifest:
    """Predict labels and confidence (max probability) for every view with ``parser``."""
    m = load_manifest(subject_dir)

    def produce(idx: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for probs in predict_images(parser, [read_rgb(m.path(m.views[i].image)) for i in idx], flip_tta):
            conf, lab = probs.max(dim=0)
            out.append((lab.numpy().astype(np.uint8), conf.numpy().astype(np.float32)))
        return out

    return write_view_labels(m, produce, batch_size, progress,
                             source={"kind": "parser", "parser": parser_name, "flip_tta": flip_tta})


def label_subject_with_noise(subject_dir: str | os.PathLike, spec: str, seed: int, *,
                             progress: bool = True) -> SubjectManifest:
    """Derive labels from ground truth through a noise model (``facegs.label.noise``)."""
    from facegs.core.hashing import derive_seed
    from facegs.label.noise import apply_noise, parse_noise_spec

    m = load_manifest(subject_dir)
    noise = parse_noise_spec(spec)

    def produce(idx: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for i in idx:
            v = m.views[i]
            if v.gt_labels is None:
                raise InputError("noise labelling needs ground-truth labels", subject=m.subject_id,
                                 view=v.view_id, field="gt_labels")
            gt = remap(read_labels(m.path(v.gt_labels)), m.label_set, CANONICAL)
            yaw = 0.0 if v.pose is None else float(v.pose["yaw"])
            rng = np.random.default_rng(derive_seed(seed, m.subject_id, v.view_id))
            lab, conf = apply_noise(gt, noise, rng, yaw=yaw, label_set=CANONICAL)
            out.append((lab, conf))
        return out

    return write_view_labels(m, produce, batch_size=16, progress=progress,
                             source={"kind": "noise", "spec": spec, "seed": seed})
