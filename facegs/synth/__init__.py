"""Procedural 3D heads with exact per-pixel ground truth (celebamask19 labels, depth, masks).

In: a seed and a camera rig. Out: subject directories (``subject.json`` + images, ground-truth
labels, depth and masks), the same contract as ingested captures.

Modules (import them directly; this package imports nothing so that ``facegs --help`` stays fast):

- :mod:`facegs.synth.params`: :class:`~facegs.synth.params.HeadParams` and
  :func:`~facegs.synth.params.sample_head_params` (seeded, JSON round-trip, ``symmetric`` option).
- :mod:`facegs.synth.sdf`: signed-distance primitives and the labelled CSG scene (why SDFs).
- :mod:`facegs.synth.head`: parameters -> labelled scene (:func:`~facegs.synth.head.build_head`).
- :mod:`facegs.synth.texture`: solid procedural textures and the environment background.
- :mod:`facegs.synth.raytrace`: sphere tracing, :func:`~facegs.synth.raytrace.render_view`; :mod:`facegs.synth.shading`: shading, background.
- :mod:`facegs.synth.rigs`: ``facescape`` / ``nersemble`` / ``custom`` camera rigs, :func:`~facegs.synth.rigs.get_rig`.
- :mod:`facegs.synth.generate`: subject directories, :func:`~facegs.synth.generate.generate_subject`.
- :mod:`facegs.cli.synth`: ``facegs synth`` and ``facegs contact-sheet``.
"""
