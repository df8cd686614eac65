"""Contracts every stage shares: errors, label sets, subject manifests, cameras, image I/O, storage.

In: nothing from other stages (every stage imports core, core imports no stage). Out: the types and
conventions the data flow is written in (OpenCV cameras, world-to-camera 4x4, pixel centres at +0.5,
label maps as uint8 class indices with 255 = ignore).

- :mod:`.errors`: :class:`~.errors.InputError` (names subject, view, field, file) and :class:`~.errors.FitError`.
- :mod:`.labels`: label sets (``schemas/labels``), mappings between them, left/right conventions.
- :mod:`.manifest`: ``subject.json`` (:class:`~.manifest.SubjectManifest`, :class:`~.manifest.View`).
- :mod:`.cameras`: OpenCV camera geometry and head-relative pose angles.
- :mod:`.imageio`: RGB, label, confidence, mask and depth files; 8-bit unit-map quantisation.
- :mod:`.storage`: atomic files and directories, atomic fsspec put/open (local, S3, memory), staging.
- :mod:`.hashing`: canonical JSON, sha256 of files and URLs, derived seeds.
- :mod:`.options`: each job's options written once, as dataclass fields the CLIs derive from.
- :mod:`.schemas`: where the versioned JSON schemas live. :mod:`.viz`: label overlays, contact sheets.
"""
