"""Capture ingestion: multi-view captures -> facegs subject directories (``subject.json`` + images).

In: a capture in one of the formats below. Out: a subject directory (calibrated views, undistorted
images) that :mod:`.validate` checks and every later stage reads.

One entry point, :func:`ingest`, dispatches on the capture format:

=============  ===========================================================  ======================
format         input                                                        module
=============  ===========================================================  ======================
facescape      FaceScape tuple folder: ``{i}.jpg`` + ``params.json``          :mod:`.facescape`
nersemble      NeRSemble v2: ``camera_params.json`` (+ colour calibration)    :mod:`.nersemble`
colmap         COLMAP sparse model (``.bin`` / ``.txt``) + images             :mod:`.colmap`
nerfstudio     ``transforms.json`` (OpenGL camera-to-world) + images          :mod:`.nerfstudio`
images         uncalibrated image folder -> pycolmap structure-from-motion    :mod:`.sfm`
=============  ===========================================================  ======================

Every format writes the subject atomically (nothing at ``out`` after a failure), undistorts images
to the calibrated pinhole ``K`` (manifest ``distortion`` is null), converts cameras to OpenCV
world-to-camera 4x4 matrices and ``K`` to pixel centres at +0.5, and raises
:class:`facegs.core.errors.InputError` naming the subject, view, field and file of bad input.

:mod:`.compare` aligns two camera sets of one capture by a similarity and measures their
disagreement; :func:`.compare.sfm_cross_check` re-estimates a calibrated subject's cameras by
structure-from-motion (an outside check of a calibration, or of a synthetic subject's realism).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from facegs.core.manifest import SubjectManifest

# format -> (module, function). Modules are imported on use (pycolmap and OpenCV load lazily).
FORMATS: dict[str, tuple[str, str]] = {
    "facescape": ("facegs.ingest.facescape", "ingest_facescape"),
    "nersemble": ("facegs.ingest.nersemble", "ingest_nersemble"),
    "colmap": ("facegs.ingest.colmap", "ingest_colmap"),
    "nerfstudio": ("facegs.ingest.nerfstudio", "ingest_nerfstudio"),
    "images": ("facegs.ingest.sfm", "ingest_images"),
}


def available_formats() -> list[str]:
    """Names accepted by :func:`ingest` (and ``facegs ingest --format``)."""
    return list(FORMATS)


def format_layout(fmt: str) -> str:
    """The expected input layout of a format, as shown by ``facegs ingest --help``."""
    return importlib.import_module(FORMATS[fmt][0]).LAYOUT


def ingest(fmt: str, src: str | os.PathLike, out: str | os.PathLike, **opts: Any) -> SubjectManifest:
    """Ingest capture ``src`` of format ``fmt`` into the subject directory ``out``; return its manifest.

    ``opts`` are the format function's keyword options; all accept ``subject_id`` (default: the name
    of ``out``), ``overwrite`` (replace an existing ``out``), ``scale`` (multiplies translations and
    points) and ``label_set``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown capture format {fmt!r}; available: {available_formats()}")
    module, func = FORMATS[fmt]
    return getattr(importlib.import_module(module), func)(src, out, **opts)
